"""The numbers `gamsa report` shows besides the timeline, each from named records.

- Coverage: `predicate.collectors[].status` of every manifest, per collector and day.
- Drift: `files` `file_change` records; `predicate.agent.config_sha256` changing
  between two bundles of a host; `accounts` `user` records compared with the host's
  previous bundle in which the accounts collector ran `ok` (added, removed, sudo
  granted).
- AI egress: `ai_egress` `ai_egress_observed` records (connections seen over time)
  and `network` `ai_egress` records (sockets open at collection time).
- Access: `logs` `access` records by month of the event (`data.time`, else the
  record's `observed_at`), counted per action group; a month is an anomaly when its
  count is above the mean + 3 standard deviations of the host's other months (at
  least 3 of them; the deviation taken as at least √mean, counting noise).

Values from records are evidence, so untrusted: they are kept as plain text here
and escaped where the page is written (agent/report_html.py).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from signing.predicate import ManifestPredicate

# Action groups of `logs` `access` records (docs/COLLECTORS.md, logs `access`).
ACCESS_GROUPS: dict[str, tuple[str, ...]] = {
    "logins": ("ssh_login",),
    "failed logins": ("ssh_login_failed", "ssh_invalid_user"),
    "sudo": ("sudo",),
    "sudo failures": ("sudo_failed", "sudo_denied"),
    "su": ("su",),
    "su failures": ("su_failed",),
}
_GROUP_OF = {action: group for group, actions in ACCESS_GROUPS.items() for action in actions}
ANOMALY_SD = 3
ANOMALY_MIN_OTHER_MONTHS = 3
STATUS_ORDER = ("ok", "unsupported", "partial", "error")  # worst last
PATHS_SHOWN = 20
_MONTH = re.compile(r"^\d{4}-\d{2}")
# The records this module reads, by (collector, type); coverage_gap of any collector.
WANTED = frozenset({("files", "file_change"), ("accounts", "user"),
                    ("ai_egress", "ai_egress_observed"), ("network", "ai_egress"),
                    ("logs", "access")})
_COLLECTOR_AT = len(b'{"collector":"')


def wanted_line(line: bytes) -> bool:
    """Whether a record's canonical line (docs/FORMAT.md: keys sorted, so it starts
    with `collector` and ends with `type` then `v`) is one `add_record` reads; the
    rest are counted without being parsed."""
    kind_at = line.rfind(b',"type":"')
    if kind_at < 0 or not line.startswith(b'{"collector":"'):
        return True  # not the canonical shape: parse it and let add_record judge
    kind = line[kind_at + 9:line.find(b'"', kind_at + 9)]
    if kind == b"coverage_gap":
        return True
    collector = line[_COLLECTOR_AT:line.find(b'"', _COLLECTOR_AT)]
    return (collector.decode("utf-8", "replace"), kind.decode("utf-8", "replace")) in WANTED


def text(value: Any) -> str:
    """A record value as text: strings as they are, `{"b64": …}` marked, null empty."""
    if value is None:
        return ""
    if isinstance(value, dict) and set(value) == {"b64"}:
        return f"b64:{value['b64']}"
    return value if isinstance(value, str) else str(value)


@dataclass
class HostDrift:
    """What changed on one host over the report's bundles."""

    file_changes: Counter[str] = field(default_factory=Counter)  # created/modified/removed
    paths: list[str] = field(default_factory=list)  # first PATHS_SHOWN distinct paths
    paths_total: int = 0
    config_changes: list[tuple[int, str]] = field(default_factory=list)  # (seq, date)
    accounts_added: list[str] = field(default_factory=list)
    accounts_removed: list[str] = field(default_factory=list)
    sudo_granted: list[str] = field(default_factory=list)

    def any(self) -> bool:
        return bool(self.file_changes or self.config_changes or self.accounts_added
                    or self.accounts_removed or self.sudo_granted)


@dataclass
class EgressRow:
    """Connections of one process of one host to one AI endpoint."""

    connections: int = 0
    snapshots: int = 0  # times seen open at collection (network `ai_egress`)
    first_seen: str = ""
    last_seen: str = ""
    users: set[str] = field(default_factory=set)
    exes: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Anomaly:
    host: str  # "" for the whole fleet
    group: str
    month: str
    count: int
    mean: float
    sd: float


@dataclass
class Facts:
    """Accumulated over every bundle the report reads."""

    # (collector, day) -> status -> bundles
    coverage: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)
    # (host, collector) -> days not ok, with the reasons
    not_ok: dict[tuple[str, str], dict[str, set[str]]] = field(default_factory=dict)
    drift: dict[str, HostDrift] = field(default_factory=dict)
    egress: dict[tuple[str, str, str], EgressRow] = field(default_factory=dict)
    # (host, month, group) -> count
    access: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    coverage_gap_records: Counter[str] = field(default_factory=Counter)  # host -> count
    _config: dict[str, str] = field(default_factory=dict)
    _users: dict[str, dict[str, bool]] = field(default_factory=dict)

    def add_manifest(self, host: str, seq: int, day: str, predicate: ManifestPredicate) -> None:
        drift = self.drift.setdefault(host, HostDrift())
        for entry in predicate.collectors:
            name, status = entry.name, entry.status
            self.coverage.setdefault((name, day), Counter())[status] += 1
            if status in ("partial", "error"):
                reasons = {gap.reason for gap in entry.gap_list}
                if entry.error:
                    reasons.add(entry.error)
                days = self.not_ok.setdefault((host, name), {})
                days.setdefault(day, set()).update(reasons or {status})
        if predicate.agent is not None:
            config = predicate.agent.config_sha256
            before = self._config.get(host)
            if before is not None and before != config:
                drift.config_changes.append((seq, day))
            self._config[host] = config

    def add_record(self, host: str, record: Mapping[str, Any],
                   users: dict[str, bool] | None) -> None:
        """One record; `users` collects the accounts of this bundle (None: not asked)."""
        collector, kind = record.get("collector"), record.get("type")
        data = record.get("data")
        if not isinstance(data, dict):
            return
        if kind == "coverage_gap":
            count = data.get("count")
            self.coverage_gap_records[host] += count if isinstance(count, int) else 1
        elif collector == "files" and kind == "file_change":
            drift = self.drift.setdefault(host, HostDrift())
            drift.file_changes[text(data.get("change"))] += 1
            path = text(data.get("path"))
            drift.paths_total += 1
            if path not in drift.paths and len(drift.paths) < PATHS_SHOWN:
                drift.paths.append(path)
        elif collector == "accounts" and kind == "user" and users is not None:
            users[text(record.get("key"))] = data.get("sudo") is True
        elif collector == "ai_egress" and kind == "ai_egress_observed":
            self._egress(host, data, data.get("count"), 0)
        elif collector == "network" and kind == "ai_egress":
            self._egress(host, data, 0, 1)
        elif collector == "logs" and kind == "access":
            group = _GROUP_OF.get(text(data.get("action")))
            if group is not None:
                when = text(data.get("time"))
                if not _MONTH.match(when):  # no time in the line: when it was read
                    when = text(record.get("observed_at"))
                self.access[(host, when[:7], group)] += 1

    def _egress(self, host: str, data: Mapping[str, Any], connections: Any,
                snapshots: int) -> None:
        matched = data.get("matched")
        endpoint = text(data.get("endpoint")) or (
            text(matched[0]) if isinstance(matched, list) and matched else
            f"{text(data.get('remote_address'))}:{text(data.get('remote_port'))}")
        process = text(data.get("process_name")) or (
            f"unknown ({text(data.get('process_unknown_reason')) or 'not told'})")
        row = self.egress.setdefault((host, process, endpoint), EgressRow())
        row.connections += connections if isinstance(connections, int) else 0
        row.snapshots += snapshots
        first = text(data.get("first_seen"))
        last = text(data.get("last_seen"))
        if first and (not row.first_seen or first < row.first_seen):
            row.first_seen = first
        if last and last > row.last_seen:
            row.last_seen = last
        if data.get("user") is not None:
            row.users.add(text(data.get("user")))
        if data.get("exe") is not None:
            row.exes.add(text(data.get("exe")))

    def end_accounts(self, host: str, users: dict[str, bool]) -> None:
        """The accounts of a bundle in which the accounts collector ran `ok`."""
        before = self._users.get(host)
        if before is not None:
            drift = self.drift.setdefault(host, HostDrift())
            drift.accounts_added += sorted(set(users) - set(before))
            drift.accounts_removed += sorted(set(before) - set(users))
            drift.sudo_granted += sorted(u for u, sudo in users.items()
                                         if sudo and u in before and not before[u])
        self._users[host] = users

    def months(self) -> list[str]:
        return sorted({month for _, month, _ in self.access})

    def anomalies(self) -> list[Anomaly]:
        """Months above the mean + 3 sd of the other months (per host, and fleet-wide)."""
        months = self.months()
        series: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
        for (host, month, group), count in self.access.items():
            series[(host, group)][month] = count
            fleet = series[("", group)]
            fleet[month] = fleet.get(month, 0) + count
        found: list[Anomaly] = []
        for (host, group), by_month in sorted(series.items()):
            hosts_months = months if host == "" else sorted(
                {m for (h, m, _) in self.access if h == host})
            values = {m: by_month.get(m, 0) for m in hosts_months}
            for month, count in values.items():
                others = [v for m, v in values.items() if m != month]
                if len(others) < ANOMALY_MIN_OTHER_MONTHS:
                    continue
                mean = sum(others) / len(others)
                sd = math.sqrt(sum((v - mean) ** 2 for v in others) / len(others))
                # Counts vary by chance about √mean even when nothing changes: a flat
                # history (sd 0) must not flag a month that is one login higher.
                sd = max(sd, math.sqrt(mean))
                if count > mean + ANOMALY_SD * sd:
                    found.append(Anomaly(host, group, month, count, mean, sd))
        return found
