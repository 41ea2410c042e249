"""The `firewall` collector: the packet-filter rulesets, and the allow rules that reach AI.

Live, it runs `nft list ruleset`, `nft -j list ruleset`, `iptables-save` and
`ip6tables-save` (found on PATH plus /usr/sbin and /sbin; a tool that is absent
becomes an `unsupported` record, one that fails, e.g. without root, a
`coverage_gap` that makes the run `partial`). It reads
firewalld zones and policies and the saved-rules files under the root. In a fixture
tree the command outputs are captured files under `/cmd` (`_run_or_fixture`), so
tests run the very parsers the live run uses.

Each ruleset is kept as evidence (SHA-256 of the bytes, the text up to 256 KiB, secrets
scrubbed); accept rules and accept policies on the output and forward paths are
parsed, and those that could let traffic reach a configured AI endpoint (or any
destination) become `allow_rule` records.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import json
import os
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from collector._endpoints import (
    AI_ENDPOINTS,
    INVALID_RECORD_TYPE,
    Endpoint,
    IPNetwork,
    Matcher,
    build_matcher,
    hosts_names,
    parse_endpoints,
    parse_hosts,
)
from collector._linux import (
    decode,
    key_text,
    lines,
    malformed_record,
    read_source,
    record_text,
    unreadable_record,
)
from collector._tools import run_tool, which
from collector.record import Record
from collector.registry import (
    CollectContext,
    Collector,
    Field,
    RecordType,
    coverage_gap,
    unsupported,
)
from collector.scrub import scrub_text

NAME = "firewall"

FIXTURE_CMD_DIR = "/cmd"  # captured command outputs in a fixture tree
TEXT_CAP = 256 * 1024
MAX_OUTPUT = 64 * 1024 * 1024
COMMAND_TIMEOUT_SECONDS = 30

FIREWALLD_DIRS = (  # /etc overrides /usr/lib for the same name, as firewalld does
    ("firewalld", ("/etc/firewalld/zones", "/usr/lib/firewalld/zones")),
    ("firewalld-policy", ("/etc/firewalld/policies", "/usr/lib/firewalld/policies")),
)
_FIREWALLD_RULE_TAGS = frozenset({"service", "port", "protocol", "source-port", "forward-port",
                                  "icmp-block", "rule"})
# Saved rules, restored at boot: (path, iptables-save format?)
RULE_FILES = (("/etc/nftables.conf", False), ("/etc/sysconfig/nftables.conf", False),
              ("/etc/iptables/rules.v4", True), ("/etc/iptables/rules.v6", True),
              ("/etc/sysconfig/iptables", True), ("/etc/sysconfig/ip6tables", True))
HOSTS = "/etc/hosts"

_EGRESS_HOOKS = ("output", "forward")
_NFT_FAMILIES = frozenset({"ip", "ip6", "inet"})


# --- running tools (or reading their captured output) ----------------------------

@dataclass
class _Output:
    """A command's stdout, or the reason there is none (`installed` false: absent)."""

    source: str
    raw: bytes | None
    reason: str | None = None
    installed: bool = True


def _first_line(raw: bytes) -> str:
    for line in decode(raw).splitlines():
        if line.strip():
            return key_text(scrub_text(line.strip())[0])[:300]
    return ""


def _run(argv: list[str]) -> _Output:
    source = " ".join(argv)
    executable = which(argv[0])
    if executable is None:
        return _Output(source, None, f"{argv[0]} is not installed", installed=False)
    run = run_tool([executable, *argv[1:]], COMMAND_TIMEOUT_SECONDS, MAX_OUTPUT)
    if run.error is not None:
        return _Output(source, None, run.error)
    if run.returncode != 0:
        return _Output(source, None, _first_line(run.stderr) or f"exit status {run.returncode}")
    return _Output(source, run.stdout)


def _run_or_fixture(ctx: CollectContext, argv: list[str], fixture_name: str) -> _Output:
    """Live: run `argv`. Fixture tree: `/cmd/<fixture_name>` is the captured stdout;
    `/cmd/<fixture_name>.stderr` stands for a failed run (its first line the
    reason); neither: the tool is not installed there."""
    if ctx.is_live:
        return _run(argv)
    source = " ".join(argv)
    captured = ctx.path(f"{FIXTURE_CMD_DIR}/{fixture_name}")
    try:
        return _Output(source, captured.read_bytes())
    except FileNotFoundError:
        pass
    except OSError as exc:
        return _Output(source, None, f"{type(exc).__name__}: {exc.strerror or exc}")
    try:
        error = captured.with_name(f"{fixture_name}.stderr").read_bytes()
    except OSError:
        return _Output(source, None, f"{argv[0]} is not installed", installed=False)
    return _Output(source, None, _first_line(error) or "failed")


# --- ruleset records -------------------------------------------------------------

def _ruleset(key: str, source: str, raw: bytes, rule_count: int | None) -> Record:
    truncated = len(raw) > TEXT_CAP
    text = None if truncated else record_text(scrub_text(decode(raw))[0])
    return Record(NAME, "ruleset", key, {
        "source": source, "sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw),
        "text": text, "truncated": truncated, "rule_count": rule_count,
    })


# --- allow rules: the common model ----------------------------------------------

@dataclass
class _Dest:
    """One destination-address condition. `networks` None: contents not known."""

    text: str
    networks: list[IPNetwork] | None
    negated: bool = False

    def allows(self, targets: list[IPNetwork]) -> bool:
        """Could traffic to some of `targets` satisfy this condition?"""
        if self.networks is None:
            return False
        if self.negated:
            return any(not any(t.version == n.version and t.subnet_of(n)  # type: ignore[arg-type]
                               for n in self.networks) for t in targets)
        return any(t.version == n.version and t.overlaps(n)
                   for t in targets for n in self.networks)


@dataclass
class _Ports:
    """One destination-port condition. `ranges` None: contents not known."""

    text: str
    ranges: list[tuple[int, int]] | None
    negated: bool = False

    def allows(self, port: int | None) -> bool:
        if self.ranges is None or port is None:
            return True
        inside = any(low <= port <= high for low, high in self.ranges)
        return not inside if self.negated else inside


@dataclass
class _Allow:
    key: str
    source: str
    family: str
    table: str
    chain: str
    hooks: list[str]
    kind: str  # rule | policy
    text: str
    dests: list[_Dest] = field(default_factory=list)
    ports: list[_Ports] = field(default_factory=list)


def _reach(rule: _Allow, matcher: Matcher) -> tuple[str, list[Endpoint]] | None:
    """How the rule reaches AI endpoints, or None when it cannot."""
    fitting = [e for e in matcher.endpoints if all(p.allows(e.port) for p in rule.ports)]
    if not rule.dests:
        return "any_destination", fitting
    matched = [e for e in fitting
               if all(d.allows(matcher.networks(e)) for d in rule.dests)]
    if matched:
        return "endpoint", matched
    if any(d.networks is None for d in rule.dests):
        return "unknown_destination", []
    return None


def _allow_records(rules: list[_Allow], matcher: Matcher) -> list[Record]:
    records = []
    for rule in rules:
        reach = _reach(rule, matcher)
        if reach is None:
            continue
        records.append(Record(NAME, "allow_rule", key_text(rule.key), {
            "source": rule.source, "family": rule.family,
            "table": record_text(rule.table), "chain": record_text(rule.chain),
            "hooks": rule.hooks, "kind": rule.kind,
            "rule": record_text(scrub_text(rule.text)[0]),
            "destinations": [record_text(d.text) for d in rule.dests],
            "ports": [record_text(p.text) for p in rule.ports],
            "reach": reach[0], "matched_endpoints": [e.entry for e in reach[1]],
        }))
    return records


def _reachable(edges: Mapping[str, set[str]], starts: Mapping[str, str]) -> dict[str, list[str]]:
    """chain -> the egress hooks (`starts`: base chain -> hook) from which jumps reach it."""
    hooks: dict[str, set[str]] = {}
    for start, hook in starts.items():
        todo = [start]
        while todo:
            chain = todo.pop()
            if hook in hooks.setdefault(chain, set()):
                continue
            hooks[chain].add(hook)
            todo += sorted(edges.get(chain, ()))
    return {chain: sorted(found) for chain, found in hooks.items()}


def _network(text: str) -> IPNetwork:
    return ipaddress.ip_network(text, strict=False)


def _port_range(text: str, separator: str) -> tuple[int, int]:
    low, _, high = text.partition(separator)
    first = int(low)
    return first, int(high) if high else first


# --- nftables (JSON) -------------------------------------------------------------

def _nft_text(value: Any) -> str:
    """An nft JSON expression value as nft writes it (JSON for what is not known)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, list):
        return ",".join(_nft_text(v) for v in value)
    if isinstance(value, dict) and len(value) == 1:
        (name, arg), = value.items()
        if name == "prefix" and isinstance(arg, dict):
            return f"{_nft_text(arg.get('addr'))}/{_nft_text(arg.get('len'))}"
        if name == "range" and isinstance(arg, list) and len(arg) == 2:
            return f"{_nft_text(arg[0])}-{_nft_text(arg[1])}"
        if name == "set" and isinstance(arg, list):
            return "{ " + ", ".join(_nft_text(v) for v in arg) + " }"
        if name == "set":
            return _nft_text(arg)
        if name == "elem" and isinstance(arg, dict):
            return _nft_text(arg.get("val"))
        if name == "payload" and isinstance(arg, dict) and "protocol" in arg:
            return f"{arg['protocol']} {arg.get('field')}"
        if name in ("meta", "ct") and isinstance(arg, dict) and "key" in arg:
            return f"{name} {arg['key']}"
        if name == "concat" and isinstance(arg, list):
            return " . ".join(_nft_text(v) for v in arg)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


_NFT_VERDICTS = frozenset({"accept", "drop", "reject", "return", "continue", "counter",
                           "notrack"})


def _nft_statement(statement: Any) -> str:
    if isinstance(statement, dict) and len(statement) == 1:
        (name, arg), = statement.items()
        if name == "match" and isinstance(arg, dict):
            op = arg.get("op", "==")
            middle = "" if op in ("==", "in") else f" {op}"
            return f"{_nft_text(arg.get('left'))}{middle} {_nft_text(arg.get('right'))}"
        if name in _NFT_VERDICTS:
            return str(name)
        if name in ("jump", "goto") and isinstance(arg, dict):
            return f"{name} {arg.get('target')}"
        if name == "log" and isinstance(arg, dict) and "prefix" in arg:
            return f'log prefix "{arg["prefix"]}"'
        if name == "log":
            return "log"
    return json.dumps(statement, sort_keys=True, separators=(",", ":"))


class _NftSets:
    """Named sets by (family, table, name)."""

    def __init__(self, sets: list[dict[str, Any]]) -> None:
        self.elements = {(s.get("family"), s.get("table"), s.get("name")): s.get("elem", [])
                         for s in sets}

    def lookup(self, family: str, table: str, value: Any) -> Any:
        """`@name` as the list of its elements; anything else unchanged."""
        if isinstance(value, str) and value.startswith("@"):
            return {"set": self.elements.get((family, table, value[1:]))}
        return value


def _nft_networks(value: Any) -> list[IPNetwork] | None:
    """The networks an nft address value stands for; None if it cannot be told."""
    try:
        if isinstance(value, str):
            return [_network(value)]
        if isinstance(value, dict) and len(value) == 1:
            (name, arg), = value.items()
            if name == "prefix":
                return [_network(f"{arg['addr']}/{arg['len']}")]
            if name == "range":
                first, last = (ipaddress.ip_address(a) for a in arg)
                return list(ipaddress.summarize_address_range(first, last))
            if name == "elem":
                return _nft_networks(arg.get("val"))
            if name == "set" and isinstance(arg, list):
                found: list[IPNetwork] = []
                for item in arg:
                    part = _nft_networks(item)
                    if part is None:
                        return None
                    found += part
                return found
    except (ValueError, TypeError, KeyError):
        return None
    return None


def _nft_ports(value: Any) -> list[tuple[int, int]] | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return [(value, value)]
    if isinstance(value, str) and value.isdigit():
        return [(int(value), int(value))]
    if isinstance(value, dict) and len(value) == 1:
        (name, arg), = value.items()
        if name == "range" and isinstance(arg, list) and len(arg) == 2 \
                and all(isinstance(a, int) and not isinstance(a, bool) for a in arg):
            return [(arg[0], arg[1])]
        if name == "elem" and isinstance(arg, dict):
            return _nft_ports(arg.get("val"))
        if name == "set" and isinstance(arg, list):
            found: list[tuple[int, int]] = []
            for item in arg:
                part = _nft_ports(item)
                if part is None:
                    return None
                found += part
            return found
    return None


def _nft_conditions(rule: _Allow, expressions: list[Any], sets: _NftSets) -> None:
    for statement in expressions:
        match = statement.get("match") if isinstance(statement, dict) else None
        if not isinstance(match, dict) or not isinstance(match.get("left"), dict):
            continue
        payload = match["left"].get("payload")
        if not isinstance(payload, dict):
            continue
        op = match.get("op", "==")
        right = sets.lookup(rule.family, rule.table, match.get("right"))
        text = ("!= " if op == "!=" else "") + _nft_text(match.get("right"))
        known = op in ("==", "in", "!=")
        if payload.get("protocol") in ("ip", "ip6") and payload.get("field") == "daddr":
            rule.dests.append(_Dest(text, _nft_networks(right) if known else None, op == "!="))
        elif payload.get("field") == "dport":
            rule.ports.append(_Ports(text, _nft_ports(right) if known else None, op == "!="))


def _nft_jumps(expressions: Any) -> Iterator[str]:
    """Targets of jump/goto anywhere in a rule (verdict maps too)."""
    if isinstance(expressions, dict):
        for name, arg in expressions.items():
            if name in ("jump", "goto") and isinstance(arg, dict) and "target" in arg:
                yield str(arg["target"])
            else:
                yield from _nft_jumps(arg)
    elif isinstance(expressions, list):
        for item in expressions:
            yield from _nft_jumps(item)


def _nft_objects(doc: Any, kind: str) -> list[dict[str, Any]]:
    items = doc.get("nftables") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ValueError("no `nftables` list")
    return [item[kind] for item in items
            if isinstance(item, dict) and isinstance(item.get(kind), dict)]


def _nft_allows(doc: Any) -> list[_Allow]:
    chains = _nft_objects(doc, "chain")
    rules = _nft_objects(doc, "rule")
    sets = _NftSets(_nft_objects(doc, "set"))
    result: list[_Allow] = []
    tables = sorted({(str(c.get("family")), str(c.get("table"))) for c in chains}
                    | {(str(r.get("family")), str(r.get("table"))) for r in rules})
    for family, table in tables:
        if family not in _NFT_FAMILIES:
            continue
        mine = [c for c in chains if (c.get("family"), c.get("table")) == (family, table)]
        my_rules = [r for r in rules if (r.get("family"), r.get("table")) == (family, table)]
        edges: dict[str, set[str]] = {}
        for rule in my_rules:
            edges.setdefault(str(rule.get("chain")), set()).update(_nft_jumps(rule.get("expr")))
        starts = {str(c.get("name")): str(c["hook"]) for c in mine
                  if c.get("type") == "filter" and c.get("hook") in _EGRESS_HOOKS}
        hooks = _reachable(edges, starts)
        prefix = f"nftables {family} {table}"
        for chain in mine:
            name = str(chain.get("name"))
            if name in starts and chain.get("policy", "accept") == "accept":
                result.append(_Allow(f"{prefix} {name} policy", "nftables", family, table,
                                     name, hooks[name], "policy", "policy accept"))
        for rule in my_rules:
            chain_name = str(rule.get("chain"))
            expressions = rule.get("expr")
            if chain_name not in hooks or not isinstance(expressions, list) \
                    or not any(isinstance(e, dict) and "accept" in e for e in expressions):
                continue
            text = " ".join(_nft_statement(e) for e in expressions)
            if isinstance(rule.get("comment"), str):
                text += f' comment "{rule["comment"]}"'
            allow = _Allow(f"{prefix} {chain_name} handle {rule.get('handle')}", "nftables",
                           family, table, chain_name, hooks[chain_name], "rule", text)
            _nft_conditions(allow, expressions, sets)
            result.append(allow)
    return result


# --- iptables-save ---------------------------------------------------------------

_IPT_DEST = frozenset({"-d", "--destination", "--dst"})
_IPT_DPORT = frozenset({"--dport", "--destination-port"})
_IPT_DPORTS = frozenset({"--dports", "--destination-ports"})


def _ipt_rule(allow: _Allow, words: list[str]) -> None:
    """Fill destination and port conditions from the words of an `-A` line."""
    negated = False
    for index, word in enumerate(words):
        value = words[index + 1] if index + 1 < len(words) else ""
        if word == "!":
            negated = True
            continue
        if word in _IPT_DEST:
            try:
                networks: list[IPNetwork] | None = [_network(v) for v in value.split(",")]
            except ValueError:
                networks = None
            allow.dests.append(_Dest(("! " if negated else "") + value, networks, negated))
        elif word in _IPT_DPORT | _IPT_DPORTS:
            try:
                ranges: list[tuple[int, int]] | None = [_port_range(v, ":")
                                                        for v in value.split(",")]
            except ValueError:
                ranges = None
            allow.ports.append(_Ports(("! " if negated else "") + value, ranges, negated))
        elif word == "--match-set" and index + 2 < len(words) \
                and words[index + 2].split(",")[0] == "dst":
            allow.dests.append(_Dest(("! " if negated else "") + f"ipset {value}", None,
                                     negated))
        negated = False


@dataclass
class _IptChain:
    policy: str | None
    rules: list[tuple[str, list[str]]] = field(default_factory=list)  # (line, words)


def _iptables_allows(raw: bytes, source: str, family: str,
                     problems: list[Record]) -> tuple[list[_Allow], int]:
    """Accept rules and policies of the filter table's egress paths, and the count of
    all `-A` rules (every table)."""
    table = None
    count = 0
    chains: dict[str, _IptChain] = {}
    for lineno, line in lines(raw):
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":") and table == "filter":
            words = line[1:].split()
            if words:
                chains[words[0]] = _IptChain(words[1] if len(words) > 1 else None)
        elif line.startswith("-A "):
            count += 1
            if table != "filter":
                continue
            try:
                words = shlex.split(line)
            except ValueError:
                problems.append(malformed_record(NAME, f"{source}-save", lineno,
                                                 "unbalanced quotes"))
                continue
            if len(words) >= 2:
                chains.setdefault(words[1], _IptChain(None)).rules.append((line, words))
    edges: dict[str, set[str]] = {}
    for name, chain in chains.items():
        for _line, words in chain.rules:
            for flag, target in itertools.pairwise(words):
                if flag in ("-j", "--jump", "-g", "--goto") and target in chains:
                    edges.setdefault(name, set()).add(target)
    starts: dict[str, str] = {c: c.lower() for c in ("OUTPUT", "FORWARD") if c in chains}
    hooks = _reachable(edges, starts)
    result = []
    for name, chain in chains.items():
        if name not in hooks:
            continue
        if name in starts and chain.policy == "ACCEPT":
            result.append(_Allow(f"{source} filter {name} policy", source, family, "filter",
                                 name, hooks[name], "policy", f":{name} ACCEPT"))
        for number, (line, words) in enumerate(chain.rules, start=1):
            targets = [t for f, t in itertools.pairwise(words) if f in ("-j", "--jump")]
            if targets[-1:] != ["ACCEPT"]:
                continue
            allow = _Allow(f"{source} filter {name} {number}", source, family, "filter", name,
                           hooks[name], "rule", line)
            _ipt_rule(allow, words[2:])
            result.append(allow)
    return result, count


# --- firewalld -------------------------------------------------------------------

def _firewalld_count(path: str, raw: bytes, problems: list[Record]) -> int | None:
    """Rule elements (service, port, rich rule, ...) of a zone or policy file. A file
    declaring a DTD or entities is refused unparsed (no entity expansion, ever)."""
    upper = raw.upper()
    for marker in (b"<!DOCTYPE", b"<!ENTITY"):
        at = upper.find(marker)
        if at >= 0:
            problems.append(malformed_record(NAME, path, raw.count(b"\n", 0, at) + 1,
                                             "DOCTYPE or ENTITY declaration refused"))
            return None
    try:
        root = ET.fromstring(raw)  # noqa: S314 - no DTD (checked above)
    except ET.ParseError as exc:
        problems.append(malformed_record(NAME, path, exc.position[0],
                                         "not well-formed XML"))
        return None
    return sum(1 for child in root if child.tag in _FIREWALLD_RULE_TAGS)


def _firewalld(ctx: CollectContext, problems: list[Record]) -> list[Record]:
    records = []
    for prefix, directories in FIREWALLD_DIRS:
        chosen: dict[str, str] = {}
        for directory in directories:
            try:
                names = sorted(os.listdir(ctx.path(directory)))
            except FileNotFoundError:
                continue
            except OSError as exc:
                problems.append(unreadable_record(NAME, directory, exc))
                continue
            for name in names:
                if name.endswith(".xml") and os.path.isfile(ctx.path(f"{directory}/{name}")):
                    chosen.setdefault(name[:-4], f"{directory}/{name}")
        for zone, path in sorted(chosen.items()):
            source = read_source(ctx, NAME, path)
            if source.raw is None:
                problems += [source.problem] if source.problem is not None else []
                continue
            count = _firewalld_count(path, source.raw, problems)
            records.append(_ruleset(f"{prefix}:{key_text(zone)}", path, source.raw, count))
    return records


def _rule_files(ctx: CollectContext, problems: list[Record]) -> list[Record]:
    records = []
    for path, iptables_format in RULE_FILES:
        source = read_source(ctx, NAME, path, report_missing=False)
        if source.problem is not None:
            problems.append(source.problem)
        if source.raw is None:
            continue
        count = sum(1 for _n, line in lines(source.raw) if line.startswith("-A ")) \
            if iptables_format else None
        records.append(_ruleset(f"file:{path}", path, source.raw, count))
    return records


# --- the collector ---------------------------------------------------------------

def _tool_problem(tool: str, output: _Output) -> Record:
    """A tool that is not installed has nothing to show (unsupported); one that is
    installed but failed (no root: "Permission denied") hides rules: a gap."""
    if not output.installed:
        return unsupported(NAME, tool, str(output.reason))
    return coverage_gap(NAME, tool, str(output.reason))


def _nftables(ctx: CollectContext, problems: list[Record],
              allows: list[_Allow]) -> list[Record]:
    text = _run_or_fixture(ctx, ["nft", "list", "ruleset"], "nft-list-ruleset.txt")
    if text.raw is None:  # absent, or failing (no root, no kernel support): JSON would too
        problems.append(_tool_problem("nft", text))
        return []
    as_json = _run_or_fixture(ctx, ["nft", "-j", "list", "ruleset"], "nft-j-list-ruleset.json")
    count: int | None = None
    if as_json.raw is None:
        problems.append(_tool_problem("nft-json", as_json))
    else:
        try:
            doc = json.loads(as_json.raw)
            count = len(_nft_objects(doc, "rule"))
            allows += _nft_allows(doc)
        except (ValueError, RecursionError) as exc:
            problems.append(unsupported(NAME, "nft-json", f"output is not an nft ruleset: "
                                                          f"{type(exc).__name__}"))
    return [_ruleset("nftables", text.source, text.raw, count)]


def _iptables(ctx: CollectContext, problems: list[Record],
              allows: list[_Allow]) -> list[Record]:
    records = []
    for tool, family in (("iptables", "ip"), ("ip6tables", "ip6")):
        output = _run_or_fixture(ctx, [f"{tool}-save"], f"{tool}-save.txt")
        if output.raw is None:
            problems.append(_tool_problem(f"{tool}-save", output))
            continue
        found, count = _iptables_allows(output.raw, tool, family, problems)
        allows += found
        records.append(_ruleset(tool, output.source, output.raw, count))
    return records


def collect(ctx: CollectContext) -> Iterator[Record]:
    endpoints, invalid = parse_endpoints(ctx.value(AI_ENDPOINTS))
    problems: list[Record] = [entry.record(NAME) for entry in invalid]
    hosts = read_source(ctx, NAME, HOSTS, report_missing=False)
    matcher, _resolutions = build_matcher(
        endpoints, hosts_names(parse_hosts(lines(hosts.raw or b""))), ctx.is_live)
    allows: list[_Allow] = []
    records = _nftables(ctx, problems, allows)
    records += _iptables(ctx, problems, allows)
    records += _firewalld(ctx, problems)
    records += _rule_files(ctx, problems)
    yield from problems
    yield from records
    yield from _allow_records(allows, matcher)


_NONE = type(None)
_TEXT = (str, dict)  # dict: {"b64": ...} for bytes that are not UTF-8

COLLECTOR = Collector(
    name=NAME,
    version="2",
    description="Packet-filter evidence: the nftables ruleset (`nft list ruleset`, "
                "`nft -j list ruleset`), `iptables-save` and `ip6tables-save`, firewalld "
                "zones and policies, saved-rules files; each with its SHA-256 and text. "
                "Accept rules and policies on the output and forward paths that could "
                "reach a configured AI endpoint (`[collectors.network] ai_endpoints`) or "
                "any destination are listed as `allow_rule`.",
    platforms=("linux",),
    record_types={
        "ruleset": RecordType(
            doc="A ruleset as the tool prints it or as a file holds it. The hash and size "
                "are of the bytes as produced; the text is scrubbed of secrets.",
            key="`nftables`, `iptables`, `ip6tables` (live or captured command output), "
                "`firewalld:<zone>`, `firewalld-policy:<policy>` (the /etc/firewalld file, "
                "else the /usr/lib/firewalld default), or `file:<path>` for /etc/nftables.conf, "
                "/etc/sysconfig/nftables.conf, /etc/iptables/rules.v4 and rules.v6, "
                "/etc/sysconfig/iptables and ip6tables (not followed into includes)",
            fields={
                "source": Field((str,), "the command (e.g. `nft list ruleset`) or the file's "
                                        "absolute path"),
                "sha256": Field((str,), "hex SHA-256 of the output or file bytes"),
                "size": Field((int,), "size in bytes"),
                "text": Field((str, dict, _NONE), "the text, secrets scrubbed; null when "
                                                  "larger than 256 KiB"),
                "truncated": Field((bool,), "true when the text is left out for size"),
                "rule_count": Field((int, _NONE),
                                    "nftables: `rule` objects of the JSON listing (null if "
                                    "it failed); iptables formats: `-A` lines; firewalld: "
                                    "service, port, protocol, source-port, forward-port, "
                                    "icmp-block and rich rule elements (null if the XML was "
                                    "refused or malformed); null for nftables.conf files"),
            },
        ),
        "allow_rule": RecordType(
            doc="An accept rule, or a base chain's accept policy, on an egress path: an "
                "nftables filter chain hooked at output or forward (families ip, ip6, inet) "
                "or an iptables filter OUTPUT/FORWARD chain, or a chain they jump or go to. "
                "Listed when it could let traffic reach a configured AI endpoint: its "
                "destination conditions (`ip daddr`/`ip6 daddr`, anonymous or named sets; "
                "`-d`, `--match-set ... dst`) overlap the endpoint's addresses (CIDR "
                "overlap; a negated condition when it leaves part of them) and its "
                "destination ports (`dport`, `--dport`, `--dports`) admit the endpoint's "
                "port; or when it has no destination condition at all. Host-name endpoints "
                "use their addresses as resolved (live only) and from /etc/hosts. Other "
                "conditions (state, interface, source) are shown in `rule`, not judged.",
            key="`nftables <family> <table> <chain> handle <n>` or `... policy`; "
                "`iptables|ip6tables filter <chain> <n>` (n: position in the chain, as "
                "`iptables -L --line-numbers`) or `... policy`",
            fields={
                "source": Field((str,), "nftables | iptables | ip6tables"),
                "family": Field((str,), "ip | ip6 | inet"),
                "table": Field(_TEXT, "table name"),
                "chain": Field(_TEXT, "chain holding the rule"),
                "hooks": Field((list,), "egress hooks it is reached from: output, forward"),
                "kind": Field((str,), "rule | policy (the base chain's default verdict)"),
                "rule": Field(_TEXT, "the rule: the iptables-save line, or the nft rule "
                                     "rendered from its JSON (unknown expressions as JSON)"),
                "destinations": Field((list,), "destination-address conditions as written "
                                               "(`!= `/`! ` when negated); empty: any"),
                "ports": Field((list,), "destination-port conditions as written; empty: any"),
                "reach": Field((str,), "endpoint (destination overlaps a configured "
                                       "endpoint) | any_destination (no destination "
                                       "condition) | unknown_destination (an ipset or a "
                                       "condition that cannot be evaluated)"),
                "matched_endpoints": Field((list,), "configured entries (as written) it "
                                                    "could reach, port permitting"),
            },
        ),
        "ai_endpoint_invalid": INVALID_RECORD_TYPE,
    },
    collect=collect,
)
