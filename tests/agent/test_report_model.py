"""agent.report*: what the HTML report counts and marks, on data built in the test
(the real-mirror and browser tests are in test_report_e2e.py)."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

from agent.mirror import BundleFilter
from agent.report import Report, default_as_of
from agent.report_facts import Facts
from agent.report_html import CSP, render
from agent.report_timeline import BundlePoint, build_timeline
from signing.bundle import BundleName
from signing.predicate import (
    AgentInfo,
    Chain,
    Collection,
    CollectorEntry,
    Gap,
    Host,
    ManifestPredicate,
    RecordsSummary,
)
from signing.verify import BundleSummary
from tests.conftest import GamsaEnv

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)


def _bundle(host: str, seq: int, minute: int, chain: str = "c1", genesis: str | None = None,
            not_ok: tuple[str, ...] = ()) -> tuple[BundlePoint, BundleSummary]:
    started = T0 + minute * MINUTE
    stamp = started.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    name = BundleName(host, started.strftime("%Y-%m-%d"), seq, f"id{seq}{chain}")
    summary = BundleSummary(name, name.manifest_key, f"{seq:064x}", chain, seq,
                            None if seq == 1 else f"{seq - 1:064x}", stamp, stamp, 1, "k" * 64,
                            genesis if seq == 1 else None, True)
    point = BundlePoint(host, seq, chain, started, started, "schedule", 1, name.manifest_key,
                        not_ok)
    return point, summary


def _predicate(*collectors: CollectorEntry, config: str | None = None) -> ManifestPredicate:
    """A manifest's predicate as the report reads it: its collectors and agent config."""
    stamp = T0.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return ManifestPredicate(
        Host("h"), Collection("run", "schedule", stamp, stamp), RecordsSummary(0, "0" * 64),
        Chain("c1", 1, None), collectors,
        None if config is None else AgentInfo("gamsa", "1", config, "k" * 64))


def _entry(name: str, status: str, error: str | None = None,
           gaps: tuple[Gap, ...] | None = ()) -> CollectorEntry:
    return CollectorEntry(name, "1", status, 0, error, 0, gaps)


def _timeline(bundles: list[tuple[BundlePoint, BundleSummary]], as_of_minute: int = 60,
              silence_minutes: int = 20) -> dict[str, list[tuple[str, str]]]:
    timeline = build_timeline([p for p, _ in bundles], [s for _, s in bundles],
                              T0 + as_of_minute * MINUTE, silence_minutes * MINUTE)
    return {host: [(m.kind, m.label) for m in marks] for host, marks in timeline.marks.items()}


def test_gaps_are_marked_on_the_host_and_seqs_the_chain_check_names() -> None:
    marks = _timeline([_bundle("host-a", 1, 0, genesis="first collection"),
                       _bundle("host-a", 2, 5), _bundle("host-a", 3, 10),
                       _bundle("host-b", 1, 0, genesis="first collection"),
                       _bundle("host-b", 2, 5), _bundle("host-b", 5, 10)], as_of_minute=20)
    assert marks["host-a"] == []
    assert marks["host-b"] == [("gap", "3-4")]


def test_silences_between_bundles_and_at_the_end_use_the_max_silence() -> None:
    marks = _timeline([_bundle("h", 1, 0, genesis="first collection"), _bundle("h", 2, 19),
                       _bundle("h", 3, 50)], as_of_minute=60)
    assert marks["h"] == [("silence", "")]  # 19 -> 50 is 31 min; 50 -> 60 only 10
    marks = _timeline([_bundle("h", 1, 0, genesis="first collection")], as_of_minute=21)
    assert marks["h"] == [("silence", "")]  # the completeness rule: 21 min > 20 min
    marks = _timeline([_bundle("h", 1, 0, genesis="first collection")], as_of_minute=20)
    assert marks["h"] == []


def test_a_new_chain_is_a_break_but_a_hosts_first_chain_is_not() -> None:
    marks = _timeline([_bundle("h", 1, 0, genesis="first collection"), _bundle("h", 2, 5),
                       _bundle("h", 1, 10, chain="c2", genesis="chain state missing")],
                      as_of_minute=20)
    assert marks["h"] == [("break", "1")]


def test_a_bundle_with_a_partial_collector_is_marked() -> None:
    marks = _timeline([_bundle("h", 1, 0, genesis="first", not_ok=("processes",))],
                      as_of_minute=1)
    assert marks["h"] == [("coverage", "1")]


def _access(facts: Facts, host: str, month: str, action: str, n: int) -> None:
    for _i in range(n):
        facts.add_record(host, {"collector": "logs", "type": "access",
                                "observed_at": "2026-12-01T00:00:00.000000Z",
                                "data": {"action": action, "time": f"{month}-02T00:00:00Z"}},
                         None)


def test_a_month_far_above_the_others_is_an_anomaly_and_a_flat_one_is_not() -> None:
    facts = Facts()
    for month, n in (("2026-06", 10), ("2026-07", 11), ("2026-08", 10), ("2026-09", 40),
                     ("2026-10", 11)):
        _access(facts, "h", month, "ssh_login", n)
        _access(facts, "h", month, "sudo", 5)
    _access(facts, "h", "2026-10", "sudo", 1)  # 6 against 5, 5, 5, 5: chance, not a spike
    found = [(a.host, a.group, a.month, a.count) for a in facts.anomalies()]
    assert found == [("", "logins", "2026-09", 40), ("h", "logins", "2026-09", 40)]
    few = Facts()
    for month, n in (("2026-06", 1), ("2026-07", 1), ("2026-08", 90)):
        _access(few, "h", month, "ssh_login_failed", n)
    assert few.anomalies() == []  # two other months say nothing


def test_drift_counts_file_changes_config_changes_and_accounts() -> None:
    facts = Facts()
    for seq, config in ((1, "a" * 64), (2, "a" * 64), (3, "b" * 64)):
        facts.add_manifest("h", seq, "2026-11-01", _predicate(config=config))
    facts.add_manifest("h", 4, "2026-11-01", _predicate())  # no agent field: no change
    facts.end_accounts("h", {"root": True, "kim": False})
    facts.end_accounts("h", {"root": True, "kim": True, "lee": False})
    facts.add_record("h", {"collector": "files", "type": "file_change",
                           "data": {"path": "/etc/sudoers", "change": "modified"}}, None)
    drift = facts.drift["h"]
    assert drift.config_changes == [(3, "2026-11-01")]
    assert (drift.accounts_added, drift.sudo_granted) == (["lee"], ["kim"])
    assert drift.file_changes == {"modified": 1} and drift.paths == ["/etc/sudoers"]


def test_evidence_is_escaped_and_the_page_fetches_nothing() -> None:
    planted = "<script>alert(1)</script>"
    facts = Facts()
    facts.add_record("h", {"collector": "ai_egress", "type": "ai_egress_observed",
                           "data": {"endpoint": "api.example\"><img src=x>",
                                    "process_name": planted, "count": 3,
                                    "exe": {"b64": "/w=="}, "user": None}}, None)
    facts.add_manifest("h", 1, "2026-11-01", _predicate(_entry(
        "x<svg onload=alert(1)>", "partial", gaps=(Gap("</table><script>", 1),))))
    bundles = [_bundle("h", 1, 0, genesis="first")]
    timeline = build_timeline([p for p, _ in bundles], [s for _, s in bundles],
                              T0 + 5 * MINUTE, 20 * MINUTE)
    report = Report("/m<i>", T0, 20 * MINUTE, BundleFilter(), timeline, facts, 1, 1)
    page = render(report)
    assert "<script" not in page and "<img" not in page and "<svg onload" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "b64:/w==" in page
    assert f'content="{CSP}"' in page
    tags = re.findall(r"<[A-Za-z][^>]*>", page)
    assert not [t for t in tags if re.search(r"\s(src|href|xlink:href|action)=", t)]
    assert "url(" not in page and "@import" not in page
    assert not [t for t in tags if "http:" in t.replace('xmlns="http://www.w3.org/2000/svg"', "")]


def test_usage_errors_are_one_line(gamsa_env: GamsaEnv, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    result = gamsa_env.run("report", "--mirror", str(tmp_path), "--html", str(out))
    assert result.returncode == 2 and "not a gamsa mirror" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()
    mirror = tmp_path / "empty"
    mirror.mkdir()
    (mirror / ".gamsa-mirror.json").write_text("{}")
    result = gamsa_env.run("report", "--mirror", str(mirror), "--html", str(out), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["bundles"] == 0 and "No bundles" in out.read_text()
    result = gamsa_env.run("report", "--mirror", str(mirror), "--html", str(out))
    assert result.returncode == 2 and "exists" in result.stderr
    result = gamsa_env.run("report", "--mirror", str(mirror), "--html", str(out),
                           "--since", "2026-13-01")
    assert result.returncode == 2 and "--since" in result.stderr


def test_a_chain_begun_before_since_is_not_a_gap_but_a_gap_after_is() -> None:
    bundles = [_bundle("h", 4, 0), _bundle("h", 5, 5), _bundle("h", 7, 10)]
    timeline = build_timeline([p for p, _ in bundles], [s for _, s in bundles],
                              T0 + 20 * MINUTE, 20 * MINUTE, {bundles[0][1].manifest_key})
    assert [(m.kind, m.label) for m in timeline.marks["h"]] == [("gap", "6")]
    timeline = build_timeline([p for p, _ in bundles], [s for _, s in bundles],
                              T0 + 20 * MINUTE, 20 * MINUTE)
    assert [(m.kind, m.label) for m in timeline.marks["h"]] == [("gap", "1-3"), ("gap", "6")]


def test_silence_is_judged_at_the_end_of_until_unless_that_is_later_than_now() -> None:
    assert default_as_of(dt.date(2026, 11, 30)) == dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    far = default_as_of(dt.date(2999, 1, 1))
    assert abs((far - dt.datetime.now(dt.UTC)).total_seconds()) < 60


def test_an_access_record_without_a_usable_time_counts_in_the_month_it_was_read() -> None:
    facts = Facts()
    for when in (None, "yesterday", "2026-10-31T23:59:59Z"):
        facts.add_record("h", {"collector": "logs", "type": "access",
                               "observed_at": "2026-11-01T00:00:00.000000Z",
                               "data": {"action": "su_failed", "time": when}}, None)
    assert facts.access == {("h", "2026-11", "su failures"): 2,
                            ("h", "2026-10", "su failures"): 1}


def test_coverage_counts_every_status_and_names_why_a_collector_fell_short() -> None:
    facts = Facts()
    facts.add_manifest("h", 1, "2026-11-01", _predicate(
        _entry("host", "ok"),
        _entry("files", "partial", gaps=None),  # written before gaps existed
        _entry("logs", "error", "permission denied", (Gap("unreadable", 2),)),
        _entry("ebpf", "skipped")))  # a status this reader does not know
    assert facts.coverage == {(name, "2026-11-01"): {status: 1} for name, status in (
        ("host", "ok"), ("files", "partial"), ("logs", "error"), ("ebpf", "skipped"))}
    assert facts.not_ok == {("h", "files"): {"2026-11-01": {"partial"}},
                            ("h", "logs"): {"2026-11-01": {"unreadable", "permission denied"}}}


def test_only_the_records_the_report_reads_are_parsed() -> None:
    from agent.report_facts import wanted_line
    from signing.canonical import canonical_bytes

    def line(collector: str, kind: str, data: dict[str, object]) -> bytes:
        return canonical_bytes({"v": 1, "collector": collector, "type": kind, "key": "k",
                                "host": "h", "observed_at": "2026-11-01T00:00:00.000000Z",
                                "data": data})

    assert wanted_line(line("logs", "access", {"action": "su"}))
    assert wanted_line(line("processes", "coverage_gap", {"count": 1}))
    assert wanted_line(line("network", "ai_egress", {}))
    assert not wanted_line(line("network", "connection", {"type": "ai_egress"}))
    assert not wanted_line(line("processes", "process",
                                {"type": "coverage_gap", "collector": "logs"}))
    assert wanted_line(b'{"odd":1}')  # not canonical: parsed, and judged by its fields


def test_a_gap_says_which_of_its_seqs_are_held_in_quarantine() -> None:
    from agent.report import note_quarantine

    bundles = [_bundle("h", 1, 0, genesis="first"), _bundle("h", 5, 5)]
    timeline = build_timeline([p for p, _ in bundles], [s for _, s in bundles],
                              T0 + 5 * MINUTE, 20 * MINUTE)
    note_quarantine(timeline, {("h", 3), ("other", 2)})
    (gap,) = timeline.marks["h"]
    assert gap.label == "2-4" and gap.text.endswith("held in quarantine (failed "
                                                    "verification when pulled): seq 3")
