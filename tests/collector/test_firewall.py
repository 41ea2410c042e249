"""The `firewall` collector: captured nft/iptables outputs and firewalld/rules files in a
fixture tree (exact records), refused XML, size caps, the command runner, and a live run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from collector._tools import which as _which
from collector.firewall import COLLECTOR, TEXT_CAP, _run
from collector.registry import CollectContext, run_collector
from tests.collector.test_contract import expected_status

ROOT = Path(__file__).resolve().parents[1] / "assets" / "rootfs" / "firewall"
Triple = tuple[str, str, dict[str, Any]]

ENDPOINTS = ["api.anthropic.com:443", "*.anthropic.com", "10.20.0.0/16", "203.0.113.7:8443",
             "[2001:db8::1]:443", "198.51.100.10:22", "bad:port"]
ALL_VALID = ENDPOINTS[:-1]
SECRETS = ("Gw4yT0kenValue99", "sk-proj-Abcdefghijklmnopqrstuvwx0123")


def run(ctx: CollectContext) -> list[Triple]:
    result = run_collector(COLLECTOR, ctx)
    assert result.status == expected_status(result.records), result.error
    return [(r.type, r.key, r.data) for r in result.records]


def ruleset(key: str, source: str, fixture: str, rule_count: int | None,
            text: str | None = None) -> Triple:
    """Expected ruleset record: hash and size of the fixture bytes; the text as is
    (fixtures hold no secret) unless given."""
    raw = (ROOT / fixture).read_bytes()
    return ("ruleset", key, {
        "source": source, "sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw),
        "text": raw.decode("utf-8") if text is None else text, "truncated": False,
        "rule_count": rule_count})


def allow(key: str, source: str, family: str, table: str, chain: str, kind: str, rule: str,
          reach: str, matched: list[str], destinations: list[str] | None = None,
          ports: list[str] | None = None, hooks: list[str] | None = None) -> Triple:
    return ("allow_rule", key, {
        "source": source, "family": family, "table": table, "chain": chain,
        "hooks": hooks or ["output"], "kind": kind, "rule": rule,
        "destinations": destinations or [], "ports": ports or [], "reach": reach,
        "matched_endpoints": matched})


def malformed(file: str, line: int, reason: str) -> Triple:
    return ("malformed_line", f"{file}:{line}", {"file": file, "line": line, "reason": reason})


NFT_TEXT = (ROOT / "cmd" / "nft-list-ruleset.txt").read_text().replace(
    "token=Gw4yT0kenValue99", "token=[REDACTED:named_secret]")
NFTABLES_CONF_TEXT = (
    "#!/usr/sbin/nft -f\n"
    "# AI egress exception, approved CR-2026-117. Gateway api_key=[REDACTED:ai_api_key] "
    "(rotate!)\n"
    "flush ruleset\n"
    'include "/etc/nftables.d/*.nft"\n')
GATEWAY = ["api.anthropic.com:443", "*.anthropic.com", "10.20.0.0/16"]

RULESETS: list[Triple] = [
    ruleset("nftables", "nft list ruleset", "cmd/nft-list-ruleset.txt", 10, NFT_TEXT),
    ruleset("iptables", "iptables-save", "cmd/iptables-save.txt", 11),
    ruleset("firewalld:broken", "/etc/firewalld/zones/broken.xml",
            "etc/firewalld/zones/broken.xml", None),
    ruleset("firewalld:evil", "/etc/firewalld/zones/evil.xml", "etc/firewalld/zones/evil.xml",
            None),
    # /etc overrides the /usr/lib default of the same zone
    ruleset("firewalld:public", "/etc/firewalld/zones/public.xml",
            "etc/firewalld/zones/public.xml", 3),
    ruleset("firewalld:trusted", "/usr/lib/firewalld/zones/trusted.xml",
            "usr/lib/firewalld/zones/trusted.xml", 0),
    ruleset("firewalld-policy:ai-egress", "/etc/firewalld/policies/ai-egress.xml",
            "etc/firewalld/policies/ai-egress.xml", 1),
    ruleset("file:/etc/nftables.conf", "/etc/nftables.conf", "etc/nftables.conf", None,
            NFTABLES_CONF_TEXT),
    ruleset("file:/etc/iptables/rules.v4", "/etc/iptables/rules.v4", "etc/iptables/rules.v4", 2),
]

EXPECTED: list[Triple] = [
    ("ai_endpoint_invalid", "ai_endpoints[6]",
     {"index": 6, "entry": "bad:port", "reason": "port is not a number"}),
    # installed but failing (not root): a gap, not "unsupported"
    ("coverage_gap", "firewall:ip6tables-save", {
        "source": "ip6tables-save", "count": 1,
        "reason": "ip6tables-save v1.8.9 (nf_tables): Could not fetch rule set generation id: "
                  "Permission denied (you must be root)"}),
    malformed("/etc/firewalld/zones/broken.xml", 4, "not well-formed XML"),
    malformed("/etc/firewalld/zones/evil.xml", 2, "DOCTYPE or ENTITY declaration refused"),
    *RULESETS,
    # nft: output policy is drop (not listed); forward's accept policy is
    allow("nftables inet filter forward policy", "nftables", "inet", "filter", "forward",
          "policy", "policy accept", "any_destination", ALL_VALID, hooks=["forward"]),
    allow("nftables inet filter output handle 8", "nftables", "inet", "filter", "output",
          "rule", "ct state established,related accept", "any_destination", ALL_VALID),
    allow("nftables inet filter output handle 9", "nftables", "inet", "filter", "output",
          "rule", 'ip daddr 10.20.0.0/16 tcp dport 443 counter accept comment '
                  '"AI gateway, token=[REDACTED:named_secret]"',
          "endpoint", GATEWAY, ["10.20.0.0/16"], ["443"]),
    # handle 10 (192.168.50.0/24 udp 53) reaches no endpoint: not listed
    # ai_egress is reached through `jump ai_egress` from output
    allow("nftables inet filter ai_egress handle 12", "nftables", "inet", "filter",
          "ai_egress", "rule", "ip daddr @ai_vendors tcp dport { 443, 8443 } accept",
          "endpoint", ["203.0.113.7:8443"], ["@ai_vendors"], ["{ 443, 8443 }"]),
    allow("nftables inet filter ai_egress handle 13", "nftables", "inet", "filter",
          "ai_egress", "rule", "ip6 daddr 2001:db8::/32 accept", "endpoint",
          ["[2001:db8::1]:443"], ["2001:db8::/32"]),
    allow("iptables filter OUTPUT 1", "iptables", "ip", "filter", "OUTPUT", "rule",
          "-A OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
          "any_destination", ALL_VALID),
    allow("iptables filter OUTPUT 2", "iptables", "ip", "filter", "OUTPUT", "rule",
          '-A OUTPUT -d 10.20.0.0/16 -p tcp -m tcp --dport 443 -m comment --comment '
          '"AI gateway" -j ACCEPT', "endpoint", GATEWAY, ["10.20.0.0/16"], ["443"]),
    allow("iptables filter AI-EGRESS 1", "iptables", "ip", "filter", "AI-EGRESS", "rule",
          "-A AI-EGRESS -d 203.0.113.0/24 -p tcp -m multiport --dports 443,8000:8443 "
          "-j ACCEPT", "endpoint", ["203.0.113.7:8443"], ["203.0.113.0/24"],
          ["443,8000:8443"]),
    allow("iptables filter AI-EGRESS 2", "iptables", "ip", "filter", "AI-EGRESS", "rule",
          "-A AI-EGRESS -m set --match-set ai_vendors dst -j ACCEPT", "unknown_destination",
          [], ["ipset ai_vendors"]),
]


def test_fixture_exact() -> None:
    ctx = CollectContext(root=ROOT, options={"network": {"ai_endpoints": ENDPOINTS}})
    assert run(ctx) == EXPECTED


def test_no_secret_in_any_record() -> None:
    ctx = CollectContext(root=ROOT, options={"network": {"ai_endpoints": ENDPOINTS}})
    dumped = json.dumps(run(ctx))
    for secret in SECRETS:
        assert secret not in dumped


def test_without_endpoints_only_unrestricted_allows_are_listed() -> None:
    records = run(CollectContext(root=ROOT))
    assert [(k, d["reach"], d["matched_endpoints"]) for t, k, d in records
            if t == "allow_rule"] == [
        ("nftables inet filter forward policy", "any_destination", []),
        ("nftables inet filter output handle 8", "any_destination", []),
        ("iptables filter OUTPUT 1", "any_destination", []),
        ("iptables filter AI-EGRESS 2", "unknown_destination", []),
    ]


def _tree(tmp_path: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        path = tmp_path / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return tmp_path


def test_entity_declarations_are_refused_unexpanded(tmp_path: Path) -> None:
    laughs = (b'<?xml version="1.0"?>\n<!DOCTYPE z [\n<!ENTITY a "' + b"ha" * 50 + b'">\n'
              + b"".join(b'<!ENTITY a%d "' % i + (b"&a;" if i == 0 else b"&a%d;" % (i - 1)) * 10
                         + b'">\n' for i in range(9))
              + b']>\n<zone><short>&a8;</short></zone>\n')
    bare_entity = b'<?xml version="1.0"?>\n<zone>\n<!ENTITY x "y">\n</zone>\n'
    root = _tree(tmp_path, {"/etc/firewalld/zones/laugh.xml": laughs,
                            "/etc/firewalld/zones/bare.xml": bare_entity})
    records = run(CollectContext(root=root))
    assert [r for r in records if r[0] == "malformed_line"] == [
        malformed("/etc/firewalld/zones/bare.xml", 3, "DOCTYPE or ENTITY declaration refused"),
        malformed("/etc/firewalld/zones/laugh.xml", 2, "DOCTYPE or ENTITY declaration refused"),
    ]
    rulesets = {k: d for t, k, d in records if t == "ruleset"}
    assert rulesets["firewalld:laugh"]["rule_count"] is None
    assert rulesets["firewalld:laugh"]["size"] == len(laughs)  # the bytes, never expanded


def test_large_ruleset_keeps_hash_drops_text(tmp_path: Path) -> None:
    lines = [b"*filter", b":OUTPUT ACCEPT [0:0]"]
    lines += [b"-A OUTPUT -d 192.0.2.%d/32 -j DROP" % (i % 250) for i in range(12000)]
    lines += [b"COMMIT", b""]
    raw = b"\n".join(lines)
    assert len(raw) > TEXT_CAP
    root = _tree(tmp_path, {"/cmd/iptables-save.txt": raw})
    rulesets = {k: d for t, k, d in run(CollectContext(root=root)) if t == "ruleset"}
    assert rulesets["iptables"] == {
        "source": "iptables-save", "sha256": hashlib.sha256(raw).hexdigest(),
        "size": len(raw), "text": None, "truncated": True, "rule_count": 12000}


def test_bad_nft_json_is_unsupported_not_an_error(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"/cmd/nft-list-ruleset.txt": b"table inet filter {\n}\n",
                            "/cmd/nft-j-list-ruleset.json": b'{"nftables": 3}',
                            "/cmd/iptables-save.txt": b"*filter\n-A OUTPUT -m comment "
                                                      b"--comment \"unclosed -j ACCEPT\nCOMMIT\n"})
    records = run(CollectContext(root=root))
    assert ("unsupported", "firewall:nft-json", {
        "platform": "linux", "source": "nft-json",
        "reason": "output is not an nft ruleset: ValueError"}) in records
    assert malformed("iptables-save", 2, "unbalanced quotes") in records
    rulesets = {k: d["rule_count"] for t, k, d in records if t == "ruleset"}
    assert rulesets == {"nftables": None, "iptables": 1}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_rules_file_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    os.mkfifo(tmp_path / "etc" / "nftables.conf")  # reading it would block for ever
    records = run(CollectContext(root=tmp_path))
    assert ("source_unreadable", "/etc/nftables.conf", {
        "path": "/etc/nftables.conf", "reason": "OSError: not a regular file"}) in records
    assert not [r for r in records if r[0] == "ruleset"]


def test_run_reports_absent_and_failing_tools() -> None:
    absent = _run(["gamsa-no-such-tool-7f3a"])
    assert (absent.raw, absent.reason, absent.installed) == \
        (None, "gamsa-no-such-tool-7f3a is not installed", False)
    if shutil.which("sh") is None:
        pytest.skip("no sh")
    failing = _run(["sh", "-c", "echo; echo 'Error: no permission' >&2; echo more >&2; exit 3"])
    assert (failing.raw, failing.reason, failing.installed) == \
        (None, "Error: no permission", True)
    silent = _run(["sh", "-c", "exit 4"])
    assert silent.reason == "exit status 4"
    fine = _run(["sh", "-c", "printf 'table ip x {\\n}\\n'"])
    assert (fine.raw, fine.reason, fine.source) == (b"table ip x {\n}\n", None, "sh -c " +
                                                    "printf 'table ip x {\\n}\\n'")


def test_live_runs_without_error() -> None:
    result = run_collector(COLLECTOR, CollectContext())
    if result.status == "unsupported":
        pytest.skip("firewall collects on Linux only")
    assert result.status == expected_status(result.records), result.error
    records = [(r.type, r.key, r.data) for r in result.records]
    assert not [r for r in records if r[0] == "collector_error"]
    for tool, key in (("nft", "nftables"), ("iptables-save", "iptables"),
                      ("ip6tables-save", "ip6tables")):
        has_ruleset = any(t == "ruleset" and k == key for t, k, _d in records)
        reasons = [d["reason"] for t, k, d in records
                   if t in ("unsupported", "coverage_gap") and k == f"firewall:{tool}"]
        assert has_ruleset != bool(reasons), (tool, reasons)
        if _which(tool) is None:
            assert reasons == [f"{tool.split()[0]} is not installed"]
