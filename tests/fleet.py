"""A generated fleet with planted defects, for the auditor's commands end to end.

`make_fleet` seals N hosts x M bundles with the agent's real code
(`agent.seal.seal_collection`, each host its own state dir and Ed25519 key, enrolled
under one organisation root the real way: request, org-signed enrollment installed in
the state dir, published by the shipper) and ships them with the real shipper
(`agent.ship.ship_spool`, pipelined S3 puts) into a bucket of moto's S3 server over
HTTP. Hosts are sealed in worker processes, in parallel; nothing is cached across runs.

Time is the fleet's own: host h's bundle s starts at `start + (s - 1) * interval +
h * 7 s`, so bundles spread over days and the layout has several `date=` partitions.
The agent reads a bundle's time in `agent.seal` only; `sealing_clock` points that
module at a fixed instant while one bundle is sealed (in a worker process of ours,
never the agent), and each key file is dated its install time (`make_key`).

Planted, each at a known (host, seq), recorded in `Planted`:
- `deleted`: both objects of one bundle deleted in the bucket (delete markers): a gap;
- `flipped`: one byte of one records object flipped (a second version of the key);
- `foreign`: a bundle appended to a chain by a key the organisation never enrolled,
  sealed by the real code from a state dir holding a copy of the host's chain head;
- `silent`: a host whose schedule ends `silence` before everyone else's;
- `change`: on a healthy host, the state collector's output changes at one seq
  (one account changed, one removed, one added): what `gamsa diff` must show.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import multiprocessing
import os
import subprocess
import time
import types
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.agent.s3_fixtures import FAST_RETRIES, ISOLATED_AWS_ENV, REGION, TEST_CREDENTIALS
from tests.conftest import GAMSA

START = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
STATE = "fleet_state"  # collector whose output is stable but for the planted change
EVENTS = "fleet_events"  # collector of a few events per bundle (counts vary by seq)
STAGGER = dt.timedelta(seconds=7)  # host h starts h * 7 s after host 0
SHIP_EVERY = 25  # a real agent ships as it goes: the spool stays small
MANIFEST = ".manifest.dsse.json"
RECORDS = ".records.jsonl.gz"


@dataclass(frozen=True)
class FleetSpec:
    """The shape of a fleet; defects need at least 6 hosts and 6 bundles."""

    hosts: int
    bundles: int
    interval: dt.timedelta = dt.timedelta(minutes=30)
    silence: dt.timedelta = dt.timedelta(days=1)  # the silent host stops this much earlier
    workers: int = max(2, os.cpu_count() or 2)

    def __post_init__(self) -> None:
        if self.hosts < 6 or self.bundles < 6:
            raise ValueError("a fleet with planted defects needs >= 6 hosts and >= 6 bundles")

    def host(self, index: int) -> str:
        return f"host-{index:03d}"

    @property
    def silent_index(self) -> int:
        return 5

    def started_at(self, index: int, seq: int) -> dt.datetime:
        moment = START + (seq - 1) * self.interval + index * STAGGER
        return moment - self.silence if index == self.silent_index else moment

    @property
    def end(self) -> dt.datetime:
        """When the healthy hosts' last bundles have been sealed."""
        last = START + (self.bundles - 1) * self.interval + (self.hosts - 1) * STAGGER
        return last + dt.timedelta(seconds=1)

    @property
    def change_seq(self) -> int:
        return self.bundles // 2 + 1


@dataclass(frozen=True)
class BundleRef:
    host: str
    seq: int


@dataclass(frozen=True)
class Change:
    """What `gamsa diff` of `host` from bundle `before` to bundle `after` must show:
    keys of the STATE collector's `account` records, and the lines citing them."""

    host: str
    before: int  # seq
    after: int  # seq
    changed: str  # key whose data differs
    removed: str
    added: str
    lines_before: dict[str, int]  # key -> 1-based line in bundle `before`
    lines_after: dict[str, int]


@dataclass(frozen=True)
class Planted:
    deleted: BundleRef
    flipped: BundleRef
    foreign: BundleRef
    silent: BundleRef  # the silent host's newest bundle
    change: Change


@dataclass(frozen=True)
class Sealed:
    """One sealed bundle as the generator made it."""

    host: str
    seq: int
    records: int
    manifest_key: str  # relative to the store prefix
    started_at: str


@dataclass
class Fleet:
    spec: FleetSpec
    root: Path
    endpoint: str
    bucket: str
    prefix: str
    org_pub: Path
    planted: Planted
    bundles: list[Sealed]  # every bundle the hosts sealed (the foreign one excepted)
    # host -> its public key document (for `--trust` instead of the org root)
    key_docs: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # phase -> wall time

    @property
    def store_url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def as_of(self) -> str:
        """The audit's time: just after the healthy hosts' last bundles."""
        return (self.spec.end + dt.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

    @property
    def max_silence(self) -> str:
        """Silence allowed: a few intervals, far less than the silent host's."""
        return f"{int(self.spec.interval.total_seconds() * 4)}s"

    def host_names(self) -> list[str]:
        return [self.spec.host(i) for i in range(self.spec.hosts)]

    def by_host(self) -> dict[str, list[Sealed]]:
        hosts: dict[str, list[Sealed]] = {}
        for bundle in self.bundles:
            hosts.setdefault(bundle.host, []).append(bundle)
        return hosts

    def bundle(self, ref: BundleRef) -> Sealed:
        return next(b for b in self.bundles if (b.host, b.seq) == (ref.host, ref.seq))

    def auditor_config(self, path: Path) -> Path:
        """A config for the auditor's `gamsa` runs: the bucket, no agent of its own."""
        path.write_text(
            f'state_dir = "{self.root / "auditor-state"}"\n'
            f'host_id = "auditor"\n'
            f"[store]\n"
            f'url = "{self.store_url}"\n'
            f'endpoint_url = "{self.endpoint}"\n'
            f'region = "{REGION}"\n'
            f'addressing_style = "path"\n'
            f"connect_timeout = 2\n"
            f"read_timeout = 30\n")
        return path


def auditor_environment(config: Path) -> dict[str, str]:
    """The environment of an auditor's `gamsa` process against the moto bucket."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GAMSA_", "AWS_"))}
    env.update({"GAMSA_CONFIG": str(config), **ISOLATED_AWS_ENV, **TEST_CREDENTIALS,
                **FAST_RETRIES})
    return env


# --------------------------------------------------------------------------- records


def state_accounts(spec: FleetSpec, index: int, seq: int) -> list[tuple[str, dict[str, Any]]]:
    """The `account` records of the STATE collector, in the order they are sealed."""
    changed = index == 1 and seq >= spec.change_seq
    accounts: list[tuple[str, dict[str, Any]]] = [
        ("root", {"uid": 0, "shell": "/bin/bash", "sudo": True}),
        (f"svc{index:03d}", {"uid": 1000 + index, "shell": "/usr/sbin/nologin", "sudo": False}),
        ("ops", {"uid": 2000, "shell": "/bin/zsh" if changed else "/bin/bash", "sudo": True}),
    ]
    accounts.append(("contractor", {"uid": 4000, "shell": "/bin/bash", "sudo": False})
                    if changed else ("legacy", {"uid": 3000, "shell": "/bin/sh", "sudo": False}))
    return accounts


def state_settings(index: int) -> list[tuple[str, dict[str, Any]]]:
    names = ["PermitRootLogin", "PasswordAuthentication", "X11Forwarding", "MaxAuthTries"]
    return [(f"/etc/ssh/sshd_config:{name}", {"value": "no"}) for name in
            names[:1 + index % 4]]


def event_keys(seq: int) -> list[str]:
    return [f"{seq}-{i}" for i in range(seq % 3)]


def records_per_bundle(spec: FleetSpec, index: int, seq: int) -> int:
    return (len(state_accounts(spec, index, seq)) + len(state_settings(index))
            + len(event_keys(seq)))


def fleet_collectors(spec: FleetSpec, index: int, seq: int, observed_at: str) -> list[Any]:
    """The two deterministic collectors of host `index` at `seq`."""
    from collector.record import Record
    from collector.registry import Collector, Field, RecordType

    def state(_ctx: Any) -> list[Any]:
        return ([Record(STATE, "account", key, data, observed_at)
                 for key, data in state_accounts(spec, index, seq)]
                + [Record(STATE, "setting", key, data, observed_at)
                   for key, data in state_settings(index)])

    def events(_ctx: Any) -> list[Any]:
        return [Record(EVENTS, "login", key, {"seq": seq}, observed_at)
                for key in event_keys(seq)]

    account = RecordType("an account", "name", {
        "uid": Field((int,), "uid"), "shell": Field((str,), "shell"),
        "sudo": Field((bool,), "may sudo")})
    setting = RecordType("a setting", "file:name", {"value": Field((str,), "value")})
    login = RecordType("a login", "seq-n", {"seq": Field((int,), "bundle seq")})
    linux = ("linux", "darwin", "win32")
    return [Collector(STATE, "1", "fleet state (tests)", linux,
                      {"account": account, "setting": setting}, state),
            Collector(EVENTS, "1", "fleet events (tests)", linux, {"login": login}, events)]


# --------------------------------------------------------------------------- clock


@contextlib.contextmanager
def sealing_clock(moment: dt.datetime) -> Iterator[None]:
    """Make `seal_collection` see `moment` as now.

    The agent reads the time for a bundle through `dt.datetime.now` and `utc_now` in
    agent/seal.py (finished_at here reads half a second later); its key document is
    dated by the key file's mtime (`make_key`).
    """
    import agent.seal
    from collector.record import format_time

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> dt.datetime:  # type: ignore[override]
            return moment if tz is None else moment.astimezone(tz)

    later = format_time(moment + dt.timedelta(milliseconds=500))
    saved = (agent.seal.dt, agent.seal.utc_now)
    agent.seal.dt = types.SimpleNamespace(datetime=Frozen, UTC=dt.UTC,  # type: ignore[assignment]
                                          timedelta=dt.timedelta)
    agent.seal.utc_now = lambda: later
    try:
        yield
    finally:
        agent.seal.dt, agent.seal.utc_now = saved


def make_key(state: Any, moment: dt.datetime) -> None:
    """The agent key of `state`, made as the agent makes it, dated `moment`."""
    from signing.keys import load_or_create_signer

    state.ensure()
    load_or_create_signer(state.key_path)
    os.utime(state.key_path, (moment.timestamp(), moment.timestamp()))


# --------------------------------------------------------------------------- workers


@dataclass(frozen=True)
class _Job:
    spec: FleetSpec
    index: int
    root: Path
    endpoint: str
    bucket: str
    prefix: str
    org_key: Path
    foreign: bool  # also append a bundle signed by a key nobody enrolled
    agents: Path  # where the hosts' state dirs live


def _host_config(job: _Job, host: str, state_dir: Path) -> Path:
    path = state_dir.parent / "agent.toml"
    path.write_text(
        f'state_dir = "{state_dir}"\n'
        f'host_id = "{host}"\n'
        f"[store]\n"
        f'url = "s3://{job.bucket}/{job.prefix}"\n'
        f'endpoint_url = "{job.endpoint}"\n'
        f'region = "{REGION}"\n'
        f'addressing_style = "path"\n'
        f'object_lock_mode = "COMPLIANCE"\n'
        f"retention_days = 3\n"
        f"connect_timeout = 2\n"
        f"read_timeout = 30\n")
    return path


def _seal_host(job: _Job) -> tuple[list[Sealed], bytes]:
    """Worker: seal and ship one host's bundles; (what was sealed, its key document)."""
    from agent.config import load_config
    from agent.enroll import build_request, install_enrollment
    from agent.seal import seal_collection
    from agent.ship import ship_spool
    from agent.state import StateDir
    from agent.store import open_store
    from collector.record import format_time
    from signing.enrollment import sign_enrollment
    from signing.keys import FileSigner, load_private_key

    os.environ.update({**ISOLATED_AWS_ENV, **TEST_CREDENTIALS, **FAST_RETRIES})
    spec, index = job.spec, job.index
    host = spec.host(index)
    home = job.agents / "hosts" / host
    home.mkdir(parents=True)
    config = load_config(_host_config(job, host, home / "state"), {})
    store = open_store(config.store.url, config.store)
    state = StateDir(config.state_dir)
    org = FileSigner.from_key(load_private_key(job.org_key))
    sealed: list[Sealed] = []
    with state.locked():
        first = spec.started_at(index, 1)
        make_key(state, first - dt.timedelta(hours=1))  # at install, an hour before
        request = build_request(state, host)
        envelope = sign_enrollment(request, org, first - dt.timedelta(hours=1),
                                   START + dt.timedelta(days=3650), first)
        install_enrollment(state, envelope, "fleet", request.key.key_id, host, None)
        for seq in range(1, spec.bundles + 1):
            moment = spec.started_at(index, seq)
            with sealing_clock(moment):
                done = seal_collection(config, host,
                                       fleet_collectors(spec, index, seq, format_time(moment)),
                                       "schedule", state)
            sealed.append(Sealed(host, seq, done.record_count, done.entry.name.manifest_key,
                                 format_time(moment)))
            if seq % SHIP_EVERY == 0 or seq == spec.bundles:
                state.recover()
                ship_spool(state, store, done.head.key_id)
        head = state.read_head()
    if job.foreign and head is not None:
        _append_foreign(job, host, head, config)
    return sealed, state.key_document_bytes()


def _append_foreign(job: _Job, host: str, head: Any, host_config: Any) -> None:
    """Seal and ship the next bundle of `host`'s chain under a key of an intruder's own
    (the real sealing code, from a state dir given a copy of the chain head)."""
    import dataclasses

    from agent.seal import seal_collection
    from agent.ship import ship_spool
    from agent.state import ChainHead, StateDir
    from agent.store import open_store
    from collector.record import format_time

    spec = job.spec
    forger = StateDir(job.agents / "forger" / "state")
    config = dataclasses.replace(host_config, state_dir=forger.root)
    store = open_store(config.store.url, config.store)
    # just after the host's last bundle, so only the key betrays it
    moment = spec.started_at(job.index, spec.bundles) + dt.timedelta(seconds=10)
    with forger.locked():
        make_key(forger, moment - dt.timedelta(minutes=5))
        with sealing_clock(moment):
            signer, _ = forger.signer(host)
            forger.write_head(ChainHead(head.chain_id, head.seq, head.manifest_sha256,
                                        head.finished_at, signer.key_id))
            seal_collection(config, host, fleet_collectors(spec, job.index, spec.bundles + 1,
                                                           format_time(moment)),
                            "schedule", forger)
        forger.recover()
        ship_spool(forger, store, signer.key_id)


# --------------------------------------------------------------------------- tampering


def _tamper(client: Any, fleet: Fleet) -> None:
    """The planted store defects, done as someone with write access to the bucket."""
    deleted = fleet.bundle(fleet.planted.deleted).manifest_key
    stem = deleted.removesuffix(MANIFEST)
    for key in (stem + RECORDS, deleted):
        client.delete_object(Bucket=fleet.bucket, Key=f"{fleet.prefix}/{key}")
    flipped = fleet.bundle(fleet.planted.flipped).manifest_key.removesuffix(MANIFEST) + RECORDS
    full = f"{fleet.prefix}/{flipped}"
    data = bytearray(client.get_object(Bucket=fleet.bucket, Key=full)["Body"].read())
    data[len(data) // 2] ^= 0x01
    client.put_object(Bucket=fleet.bucket, Key=full, Body=bytes(data))


def planted_for(spec: FleetSpec) -> Planted:
    h = spec.host
    before, after = spec.change_seq - 1, spec.change_seq
    lines_before = {key: n for n, (key, _) in enumerate(state_accounts(spec, 1, before), 1)}
    lines_after = {key: n for n, (key, _) in enumerate(state_accounts(spec, 1, after), 1)}
    return Planted(
        deleted=BundleRef(h(2), spec.bundles // 2),
        flipped=BundleRef(h(3), spec.bundles // 3 + 1),
        foreign=BundleRef(h(4), spec.bundles + 1),
        silent=BundleRef(h(spec.silent_index), spec.bundles),
        change=Change(h(1), before, after, changed="ops", removed="legacy", added="contractor",
                      lines_before=lines_before, lines_after=lines_after))


def make_fleet(spec: FleetSpec, root: Path, endpoint: str, client: Any, bucket: str,
               prefix: str = "evidence", agents: Path | None = None) -> Fleet:
    """Seal, ship and tamper with a fleet in `bucket` (an Object Lock bucket on moto).

    `agents`: where the hosts' state dirs go (default `root`). The agents' disks are
    not what a fleet is for: on a tmpfs their fsyncs (8 a bundle) cost nothing, and
    generation is bound by sealing and shipping alone (twice as fast on the CI VM).
    """
    from agent.org import init_org

    began = time.perf_counter()
    org = init_org(root / "org")
    planted = planted_for(spec)
    foreign_index = int(planted.foreign.host.rsplit("-", 1)[1])
    jobs = [_Job(spec, i, root, endpoint, bucket, prefix, org.private_path, i == foreign_index,
                 agents or root) for i in range(spec.hosts)]
    bundles: list[Sealed] = []
    key_docs: dict[str, Path] = {}
    (root / "keys").mkdir()
    context = multiprocessing.get_context("spawn")  # no threads or sockets of ours inherited
    with ProcessPoolExecutor(max_workers=spec.workers, mp_context=context) as pool:
        for job, (sealed, key_doc) in zip(jobs, pool.map(_seal_host, jobs), strict=True):
            bundles.extend(sealed)
            path = key_docs[spec.host(job.index)] = root / "keys" / f"{spec.host(job.index)}.json"
            path.write_bytes(key_doc)
    sealed_at = time.perf_counter()
    fleet = Fleet(spec, root, endpoint, bucket, prefix, org.public_path, planted, bundles,
                  key_docs)
    _tamper(client, fleet)
    fleet.seconds = {"seal_and_ship": sealed_at - began,
                     "tamper": time.perf_counter() - sealed_at}
    (root / "fleet.json").write_text(json.dumps(
        {"hosts": spec.hosts, "bundles": spec.bundles, "seconds": fleet.seconds}))
    return fleet


@dataclass
class Auditor:
    """The auditor's side: real `gamsa` processes against the fleet's bucket."""

    fleet: Fleet
    config: Path

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([GAMSA, *args], env=auditor_environment(self.config),
                                capture_output=True, text=True, timeout=timeout, check=False)
        assert "Traceback" not in result.stderr, result.stderr
        return result

    def trust(self) -> list[str]:
        return ["--trust-org", str(self.fleet.org_pub)]

    def verify(self, store: str, *extra: str) -> dict[str, Any]:
        """`gamsa verify --json` as of the fleet's audit time; findings expected: exit 1."""
        result = self.run("verify", "--store", store, *self.trust(), "--json",
                          "--as-of", self.fleet.as_of, "--max-silence",
                          self.fleet.max_silence, *extra)
        assert result.returncode == 1, result.stdout[-2000:] + result.stderr
        report: dict[str, Any] = json.loads(result.stdout)
        return report

    def supports(self, command: str, option: str | None = None) -> bool:
        """Does this build's `gamsa COMMAND --help` exist (and name OPTION)?"""
        result = subprocess.run([GAMSA, command, "--help"], env=auditor_environment(self.config),
                                capture_output=True, text=True, timeout=60, check=False)
        return result.returncode == 0 and (option is None or option in result.stdout)


# --------------------------------------------------------------------------- expectations
# What the auditor's commands must report about a fleet (`--json` reports); shared by
# tests/agent/test_fleet.py and bench/bench_fleet.py.


def stem(fleet: Fleet, host: str, seq: int) -> str:
    bundle = next(b for b in fleet.bundles if (b.host, b.seq) == (host, seq))
    return bundle.manifest_key.removesuffix(MANIFEST)


def errors(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["severity"] == "error"]


def one(report: dict[str, Any], code: str) -> dict[str, Any]:
    """The single error finding of `code` (a planted defect is reported exactly once)."""
    found = [f for f in errors(report) if f["code"] == code]
    assert len(found) == 1, (code, found)
    return found[0]


def assert_gap(report: dict[str, Any], fleet: Fleet, host: str, seq: int) -> None:
    """Exactly one chain_gap for `host`, on the bundle after `seq`, naming `seq`."""
    gaps = [f for f in errors(report) if f["code"] == "chain_gap"
            and f"/host={host}/" in f["key"]]
    assert len(gaps) == 1, gaps
    assert gaps[0]["key"] == stem(fleet, host, seq + 1) + MANIFEST
    assert f"seq {seq} missing before seq {seq + 1}" in gaps[0]["message"]


def assert_silent(report: dict[str, Any], fleet: Fleet) -> None:
    silent = one(report, "host_silent")
    ref = fleet.planted.silent
    assert silent["key"] == f"v1/host={ref.host}/"
    assert stem(fleet, ref.host, ref.seq) + MANIFEST in silent["message"]
    assert report["fleet"]["silent_hosts"] == [ref.host]
    assert report["fleet"]["expected_hosts"] == fleet.spec.hosts


# What a flipped byte in a records object may bring along, on that object only: the
# verifier reads on after the digest differs (bounded reading that stops there is the
# verifyscale branch's). Each at most once; the defect itself is `digest_mismatch`.
FLIP_CASCADE = {"records_unreadable", "count_mismatch", "merkle_root_mismatch"}


def assert_store_defects(report: dict[str, Any], fleet: Fleet) -> None:
    """`gamsa verify` of the bucket: every planted defect once, nothing else."""
    planted = fleet.planted
    assert_gap(report, fleet, planted.deleted.host, planted.deleted.seq)
    deleted = stem(fleet, planted.deleted.host, planted.deleted.seq)
    assert sorted(f["key"] for f in errors(report) if f["code"] == "object_deleted") == sorted([
        deleted + RECORDS, deleted + MANIFEST])
    flipped = stem(fleet, planted.flipped.host, planted.flipped.seq) + RECORDS
    assert one(report, "digest_mismatch")["key"] == flipped
    assert one(report, "object_overwritten")["key"] == flipped
    foreign = one(report, "untrusted_key")["key"]
    assert foreign.startswith(f"v1/host={planted.foreign.host}/")
    assert foreign.endswith(MANIFEST) and f"/{planted.foreign.seq:010d}-" in foreign
    assert_silent(report, fleet)
    assert report["fleet"]["versions"]["checked"], "the bucket's versions were read"
    cascade = Counter(f["code"] for f in errors(report) if f["code"] in FLIP_CASCADE)
    assert all(f["key"] == flipped for f in errors(report) if f["code"] in FLIP_CASCADE)
    assert max(cascade.values(), default=0) <= 1, cascade
    expected = {"chain_gap": 1, "object_deleted": 2, "digest_mismatch": 1,
                "object_overwritten": 1, "untrusted_key": 1, "host_silent": 1, **cascade}
    assert Counter(f["code"] for f in errors(report)) == expected, errors(report)


def assert_mirror_defects(report: dict[str, Any], fleet: Fleet) -> None:
    """`gamsa verify` of the mirror: the deleted and the quarantined (flipped) bundles
    are gaps, the foreign one never arrived, the silent host is still silent."""
    planted = fleet.planted
    assert_gap(report, fleet, planted.deleted.host, planted.deleted.seq)
    assert_gap(report, fleet, planted.flipped.host, planted.flipped.seq)
    assert_silent(report, fleet)
    assert Counter(f["code"] for f in errors(report)) == {"chain_gap": 2, "host_silent": 1}
    healthy = len(fleet.bundles) - 2
    assert report["bundles"] == healthy
    sealed = sum(b.records for b in fleet.bundles if (b.host, b.seq) not in {
        (planted.deleted.host, planted.deleted.seq), (planted.flipped.host, planted.flipped.seq)})
    assert report["records"] == sealed


def assert_pull_defects(report: dict[str, Any], mirror: Path, fleet: Fleet) -> None:
    """`gamsa pull` of the bucket: the flipped and the foreign bundle quarantined, with
    their findings; every other bundle there is mirrored."""
    planted = fleet.planted
    flipped = stem(fleet, planted.flipped.host, planted.flipped.seq)
    assert (report["pulled"], report["quarantined"]) == (len(fleet.bundles) - 2, 2), report
    by_code = Counter((f["code"], f["key"]) for f in errors(report))
    assert by_code[("digest_mismatch", flipped + RECORDS)] == 1
    (foreign,) = [k for c, k in by_code if c == "untrusted_key"]
    assert foreign.startswith(f"v1/host={planted.foreign.host}/")
    assert f"/{planted.foreign.seq:010d}-" in foreign
    held = sorted(p.parent.relative_to(mirror / "quarantine").as_posix()
                  for p in (mirror / "quarantine").rglob("findings.json"))
    assert held == sorted([flipped, foreign.removesuffix(MANIFEST)])
    assert not (mirror / (flipped + MANIFEST)).exists()
    assert not (mirror / foreign).exists()
