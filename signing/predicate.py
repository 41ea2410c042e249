"""The bundle manifest's predicate (docs/FORMAT.md §3) as one typed model.

The agent builds a `ManifestPredicate` and signs `to_json()`; every reader (the
verifier, inclusion proofs, the chain guard, the spool, pull, the mirror and the
auditor's commands on it) gets one from `parse_predicate`, which checks the shape
and raises `FormatError` naming the first bad field by its path
(`predicate.chain.seq is not an integer`). Nothing else in gamsa reads the
predicate's JSON by hand.

Rules of the model, for a format kept for years:

- Required are the fields FORMAT.md's table says a verifier reads (`chain.genesis_reason`
  excepted: the verifier has always accepted a genesis without one). The
  informational ones (`host.hostname`…, `agent`, the clock fields, `privacy`) may be
  absent (None); present, they must have their documented type, like every field.
- Vocabularies are not closed: `collection.trigger` and `collectors[].status` are
  any string, so a newer agent's trigger does not make an older verifier reject the
  bundle. Readers compare against the values they know.
- Unknown fields are kept, not dropped or rejected: each object's `extra` holds the
  members the model does not name, and `to_json()` writes them back, so a manifest
  from a newer writer re-encodes to the same bytes (nothing signed is lost) while the
  checks of the fields known here still apply. `chain.follows` is the exception: its
  shape is exact (§3), any other member makes it invalid.
- A field that is absent stays absent on re-encoding and one that is null stays null:
  `to_json(parse_predicate(x)) == x` for every valid `x`. The one field gamsa writes
  as null yet may be missing (`host.machine_id_sha256`) uses `ABSENT` for "missing".

Only the standard library and `signing.errors`/`signing.dsse`: a regulator's copy of
`signing/` reads manifests with it alone.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Final, Literal

from signing.dsse import make_statement, parse_statement
from signing.errors import FormatError

_HEX64 = re.compile(r"[0-9a-f]{64}")


class Absent(enum.Enum):
    """A member missing from its object, as opposed to one that is JSON null."""

    ABSENT = "absent"


ABSENT: Final = Absent.ABSENT
Missing = Literal[Absent.ABSENT]


# -- reading, one object at a time ----------------------------------------------------

class _Reader:
    """One JSON object of the predicate, read member by member.

    Fast on the path every verified bundle takes (a type check per member); its
    path in the predicate is only spelled out for an error message.
    """

    __slots__ = ("_index", "_name", "_parent", "data")

    def __init__(self, value: Any, parent: _Reader | str, name: str = "",
                 index: int | None = None) -> None:
        self.data: dict[str, Any] = value
        self._parent = parent
        self._name = name
        self._index = index
        if type(value) is not dict:
            raise FormatError(f"{self.path} is " + (
                "missing" if value is ABSENT else "not an object"))

    @property
    def path(self) -> str:
        if isinstance(self._parent, str):
            return self._parent
        where = f"{self._parent.path}.{self._name}"
        return where if self._index is None else f"{where}[{self._index}]"

    def _fail(self, name: str, what: str) -> FormatError:
        if name not in self.data:
            return FormatError(f"{self.path}.{name} is missing")
        return FormatError(f"{self.path}.{name} is not {what}")

    def text(self, name: str) -> str:
        value = self.data.get(name)
        if type(value) is not str:
            raise self._fail(name, "a string")
        return value

    def optional_text(self, name: str) -> str | None:
        value = self.data.get(name, ABSENT)
        if type(value) is str:
            return value
        if value is ABSENT:
            return None
        raise self._fail(name, "a string")

    def nullable_text(self, name: str, required: bool = True) -> str | Missing | None:
        value = self.data.get(name, ABSENT)
        if type(value) is str or value is None or (value is ABSENT and not required):
            return value
        raise self._fail(name, "a string or null")

    def integer(self, name: str, minimum: int | None = None) -> int:
        value = self.data.get(name)
        if type(value) is not int:  # not bool, not float
            raise self._fail(name, "an integer")
        if minimum is not None and value < minimum:
            raise FormatError(f"{self.path}.{name} is less than {minimum}")
        return value

    def optional_raw(self, name: str) -> Any:
        """The member's JSON value as it is (`ABSENT` when missing), for a caller
        that checks its shape itself."""
        return self.data.get(name, ABSENT)

    def child(self, name: str) -> _Reader:
        return _Reader(self.data.get(name, ABSENT), self, name)

    def optional_child(self, name: str) -> _Reader | None:
        value = self.data.get(name, ABSENT)
        return None if value is ABSENT else _Reader(value, self, name)

    def items(self, name: str, required: bool = True) -> list[Any] | None:
        """The list at `name`; None when absent and optional. Read an item with `item`."""
        value = self.data.get(name, ABSENT)
        if type(value) is list:
            return value
        if value is ABSENT and not required:
            return None
        raise self._fail(name, "a list")

    def item(self, name: str, index: int, value: Any) -> _Reader:
        return _Reader(value, self, name, index)

    def unknown(self, known: frozenset[str]) -> dict[str, Any]:
        """The members this model does not name (`known`), kept as they were."""
        if self.data.keys() <= known:
            return {}
        return {k: v for k, v in self.data.items() if k not in known}


def _names(cls: type) -> frozenset[str]:
    """The JSON members a model class names: its fields but `extra`."""
    return frozenset(f.name for f in fields(cls)) - {"extra"}


def _json(extra: dict[str, Any], known: dict[str, Any]) -> dict[str, Any]:
    """An object's JSON: unknown members kept, known ones as the model holds them,
    None-valued optional ones left out (`ABSENT` ones too)."""
    out = dict(extra)
    out.update((k, v) for k, v in known.items() if v is not None and v is not ABSENT)
    return out


# -- the model --------------------------------------------------------------------------

@dataclass(frozen=True)
class Host:
    """`predicate.host`: the host id (object keys, records) and what the agent saw of it."""

    id: str
    hostname: str | None = None
    machine_id_sha256: str | Missing | None = ABSENT  # gamsa writes null without a machine-id
    os: str | None = None
    os_release: str | None = None
    arch: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    NAMES: ClassVar[frozenset[str]] = frozenset()  # set below: the members named here

    def to_json(self) -> dict[str, Any]:
        out = _json(self.extra, {"id": self.id, "hostname": self.hostname,
                                 "os": self.os, "os_release": self.os_release,
                                 "arch": self.arch})
        if self.machine_id_sha256 is not ABSENT:
            out["machine_id_sha256"] = self.machine_id_sha256
        return out

    @classmethod
    def read(cls, r: _Reader) -> Host:
        return cls(r.text("id"), r.optional_text("hostname"), r.nullable_text(
            "machine_id_sha256", required=False), r.optional_text("os"),
            r.optional_text("os_release"), r.optional_text("arch"), r.unknown(cls.NAMES))


@dataclass(frozen=True)
class ClockSteppedBack:
    """`collection.clock_stepped_back`: the previous bundle claimed a time far ahead of
    this clock, so this bundle kept its own clock (docs/FORMAT.md §4 step 15)."""

    previous_finished_at: str
    clock: str
    extra: dict[str, Any] = field(default_factory=dict)
    NAMES: ClassVar[frozenset[str]] = frozenset()  # set below: the members named here

    def to_json(self) -> dict[str, Any]:
        return _json(self.extra, {"previous_finished_at": self.previous_finished_at,
                                  "clock": self.clock})

    @classmethod
    def read(cls, r: _Reader) -> ClockSteppedBack:
        return cls(r.text("previous_finished_at"), r.text("clock"), r.unknown(cls.NAMES))


@dataclass(frozen=True)
class ClockCheck:
    """`collection.clock_check`: this clock against the store's `Date` header."""

    source: str
    local_time: str
    store_date: str
    ahead_seconds: int
    tolerance_seconds: int
    extra: dict[str, Any] = field(default_factory=dict)
    NAMES: ClassVar[frozenset[str]] = frozenset()  # set below: the members named here

    def to_json(self) -> dict[str, Any]:
        return _json(self.extra, {"source": self.source, "local_time": self.local_time,
                                  "store_date": self.store_date,
                                  "ahead_seconds": self.ahead_seconds,
                                  "tolerance_seconds": self.tolerance_seconds})

    @classmethod
    def read(cls, r: _Reader) -> ClockCheck:
        return cls(r.text("source"), r.text("local_time"), r.text("store_date"),
                   r.integer("ahead_seconds"), r.integer("tolerance_seconds"),
                   r.unknown(cls.NAMES))


@dataclass(frozen=True)
class Collection:
    """`predicate.collection`: which run this was and when, as its clock saw it."""

    id: str
    trigger: str  # schedule | on-demand | file-change | heartbeat (not closed: see above)
    started_at: str
    finished_at: str
    clock_started_at: str | None = None
    clock_stepped_back: ClockSteppedBack | None = None
    clock_check: ClockCheck | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    NAMES: ClassVar[frozenset[str]] = frozenset()  # set below: the members named here

    def to_json(self) -> dict[str, Any]:
        return _json(self.extra, {
            "id": self.id, "trigger": self.trigger, "started_at": self.started_at,
            "finished_at": self.finished_at, "clock_started_at": self.clock_started_at,
            "clock_stepped_back": (None if self.clock_stepped_back is None
                                   else self.clock_stepped_back.to_json()),
            "clock_check": None if self.clock_check is None else self.clock_check.to_json()})

    @classmethod
    def read(cls, r: _Reader) -> Collection:
        stepped = r.optional_child("clock_stepped_back")
        check = r.optional_child("clock_check")
        return cls(r.text("id"), r.text("trigger"), r.text("started_at"),
                   r.text("finished_at"), r.optional_text("clock_started_at"),
                   None if stepped is None else ClockSteppedBack.read(stepped),
                   None if check is None else ClockCheck.read(check), r.unknown(cls.NAMES))


@dataclass(frozen=True)
class RecordsSummary:
    """`predicate.records`: what the records object must hold."""

    count: int
    merkle_root: str  # hex; compared, not parsed: a bad one is a merkle_root_mismatch
    extra: dict[str, Any] = field(default_factory=dict)
    NAMES: ClassVar[frozenset[str]] = frozenset()  # set below: the members named here

    def to_json(self) -> dict[str, Any]:
        return _json(self.extra, {"count": self.count, "merkle_root": self.merkle_root})

    @classmethod
    def read(cls, r: _Reader) -> RecordsSummary:
        return cls(r.integer("count", 0), r.text("merkle_root"), r.unknown(cls.NAMES))


@dataclass(frozen=True)
class ChainFollows:
    """`chain.follows`: the store's bundle a new chain follows instead of forking it."""

    chain_id: str
    seq: int
    manifest_sha256: str

    FIELDS: ClassVar[tuple[str, ...]] = ("chain_id", "seq", "manifest_sha256")

    def to_json(self) -> dict[str, Any]:
        return {"chain_id": self.chain_id, "seq": self.seq,
                "manifest_sha256": self.manifest_sha256}

    @classmethod
    def read(cls, value: Any, path: str) -> ChainFollows:
        if (not isinstance(value, dict) or sorted(value) != sorted(cls.FIELDS)
                or not isinstance(value["chain_id"], str)
                or not isinstance(value["seq"], int) or isinstance(value["seq"], bool)
                or value["seq"] < 1
                or not isinstance(value["manifest_sha256"], str)
                or not _HEX64.fullmatch(value["manifest_sha256"])):
            raise FormatError(f"{path} must be {{chain_id: string, seq: int >= 1, "
                              f"manifest_sha256: hex}}, exactly")
        return cls(value["chain_id"], value["seq"], value["manifest_sha256"])


@dataclass(frozen=True)
class Chain:
    """`predicate.chain`: this bundle's place in its host's hash chain."""

    id: str
    seq: int
    prev: str | None  # null at seq 1
    genesis_reason: str | None = None
    follows: ChainFollows | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    NAMES: ClassVar[frozenset[str]] = frozenset()  # set below: the members named here

    def to_json(self) -> dict[str, Any]:
        out = _json(self.extra, {"id": self.id, "seq": self.seq,
                                 "genesis_reason": self.genesis_reason,
                                 "follows": None if self.follows is None
                                 else self.follows.to_json()})
        out["prev"] = self.prev
        return out

    @classmethod
    def read(cls, r: _Reader) -> Chain:
        chain_id, seq = r.text("id"), r.integer("seq", 1)
        prev = r.nullable_text("prev")
        reason = r.optional_text("genesis_reason")
        follows = r.optional_raw("follows")
        return cls(chain_id, seq, None if prev is ABSENT else prev, reason,
                   None if follows is ABSENT else ChainFollows.read(follows, f"{r.path}.follows"),
                   r.unknown(cls.NAMES))


@dataclass(frozen=True)
class Gap:
    """One entry of `collectors[].gaps`: what a collector could not see, by reason."""

    reason: str
    count: int
    extra: dict[str, Any] = field(default_factory=dict)
    NAMES: ClassVar[frozenset[str]] = frozenset()  # set below: the members named here

    def to_json(self) -> dict[str, Any]:
        return _json(self.extra, {"reason": self.reason, "count": self.count})

    @classmethod
    def read(cls, r: _Reader) -> Gap:
        return cls(r.text("reason"), r.integer("count", 0), r.unknown(cls.NAMES))


@dataclass(frozen=True)
class CollectorEntry:
    """One entry of `predicate.collectors`: how one collector's run went."""

    name: str
    version: str
    status: str  # ok | partial | error | unsupported (not closed: see above)
    records: int
    error: str | None
    duration_ms: int
    gaps: tuple[Gap, ...] | None = None  # None: written before gaps existed (read as none)
    extra: dict[str, Any] = field(default_factory=dict)
    NAMES: ClassVar[frozenset[str]] = frozenset()  # set below: the members named here

    @property
    def gap_list(self) -> tuple[Gap, ...]:
        """The gaps, empty for a manifest written before they existed."""
        return self.gaps or ()

    def to_json(self) -> dict[str, Any]:
        out = _json(self.extra, {"name": self.name, "version": self.version,
                                 "status": self.status, "records": self.records,
                                 "duration_ms": self.duration_ms,
                                 "gaps": None if self.gaps is None
                                 else [gap.to_json() for gap in self.gaps]})
        out["error"] = self.error
        return out

    @classmethod
    def read(cls, r: _Reader) -> CollectorEntry:
        name, version, status = r.text("name"), r.text("version"), r.text("status")
        records = r.integer("records", 0)
        error = r.nullable_text("error")
        duration = r.integer("duration_ms", 0)
        gaps = r.items("gaps", required=False)
        return cls(name, version, status, records, None if error is ABSENT else error,
                   duration, None if gaps is None
                   else tuple(Gap.read(r.item("gaps", i, item)) for i, item in enumerate(gaps)),
                   r.unknown(cls.NAMES))


@dataclass(frozen=True)
class Resources:
    """`agent.resources`: the agent's own cost over this collection (integers only)."""

    cpu_user_ms: int
    cpu_system_ms: int
    rss_bytes: int
    peak_rss_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)
    NAMES: ClassVar[frozenset[str]] = frozenset()  # set below: the members named here

    def to_json(self) -> dict[str, Any]:
        return _json(self.extra, {"cpu_user_ms": self.cpu_user_ms,
                                  "cpu_system_ms": self.cpu_system_ms,
                                  "rss_bytes": self.rss_bytes,
                                  "peak_rss_bytes": self.peak_rss_bytes})

    @classmethod
    def read(cls, r: _Reader) -> Resources:
        return cls(r.integer("cpu_user_ms", 0), r.integer("cpu_system_ms", 0),
                   r.integer("rss_bytes", 0), r.integer("peak_rss_bytes", 0), r.unknown(cls.NAMES))


@dataclass(frozen=True)
class AgentInfo:
    """`predicate.agent`: which agent sealed, with which config and key (its claim; the
    key that verified is the verifier's own finding)."""

    name: str
    version: str
    config_sha256: str
    key_id: str
    resources: Resources | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    NAMES: ClassVar[frozenset[str]] = frozenset()  # set below: the members named here

    def to_json(self) -> dict[str, Any]:
        return _json(self.extra, {"name": self.name, "version": self.version,
                                  "config_sha256": self.config_sha256,
                                  "key_id": self.key_id,
                                  "resources": None if self.resources is None
                                  else self.resources.to_json()})

    @classmethod
    def read(cls, r: _Reader) -> AgentInfo:
        name, version = r.text("name"), r.text("version")
        config, key_id = r.text("config_sha256"), r.text("key_id")
        resources = r.optional_child("resources")
        return cls(name, version, config, key_id,
                   None if resources is None else Resources.read(resources), r.unknown(cls.NAMES))


@dataclass(frozen=True)
class Privacy:
    """`predicate.privacy`: the records' named personal fields are pseudonyms."""

    pseudonymized: tuple[str, ...]
    key_id: str
    extra: dict[str, Any] = field(default_factory=dict)
    NAMES: ClassVar[frozenset[str]] = frozenset()  # set below: the members named here

    def to_json(self) -> dict[str, Any]:
        return _json(self.extra, {"pseudonymized": list(self.pseudonymized),
                                  "key_id": self.key_id})

    @classmethod
    def read(cls, r: _Reader) -> Privacy:
        names = []
        for i, item in enumerate(r.items("pseudonymized") or []):
            if type(item) is not str:
                raise FormatError(f"{r.path}.pseudonymized[{i}] is not a string")
            names.append(item)
        return cls(tuple(names), r.text("key_id"), r.unknown(cls.NAMES))


@dataclass(frozen=True)
class ManifestPredicate:
    """The predicate of an evidence-bundle statement (`urn:gamsa:evidence-bundle:v1`)."""

    host: Host
    collection: Collection
    records: RecordsSummary
    chain: Chain
    collectors: tuple[CollectorEntry, ...]
    agent: AgentInfo | None = None
    privacy: Privacy | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    NAMES: ClassVar[frozenset[str]] = frozenset()  # set below: the members named here

    def to_json(self) -> dict[str, Any]:
        """The JSON object the writer signs (canonical encoding is the signer's job)."""
        return _json(self.extra, {
            "host": self.host.to_json(), "collection": self.collection.to_json(),
            "records": self.records.to_json(), "chain": self.chain.to_json(),
            "collectors": [entry.to_json() for entry in self.collectors],
            "agent": None if self.agent is None else self.agent.to_json(),
            "privacy": None if self.privacy is None else self.privacy.to_json()})


for _model in (Host, ClockSteppedBack, ClockCheck, Collection, RecordsSummary, Chain, Gap,
               CollectorEntry, Resources, AgentInfo, Privacy, ManifestPredicate):
    _model.NAMES = _names(_model)


def parse_predicate(value: Any, path: str = "predicate") -> ManifestPredicate:
    """The model of a predicate's JSON value; FormatError naming the first bad field."""
    r = _Reader(value, path)
    host = Host.read(r.child("host"))
    collection = Collection.read(r.child("collection"))
    records = RecordsSummary.read(r.child("records"))
    chain = Chain.read(r.child("chain"))
    collectors = tuple(CollectorEntry.read(r.item("collectors", i, item))
                       for i, item in enumerate(r.items("collectors") or []))
    agent = r.optional_child("agent")
    privacy = r.optional_child("privacy")
    return ManifestPredicate(host, collection, records, chain, collectors,
                             None if agent is None else AgentInfo.read(agent),
                             None if privacy is None else Privacy.read(privacy),
                             r.unknown(ManifestPredicate.NAMES))


@dataclass(frozen=True)
class BundleStatement:
    """A manifest's in-toto statement: the records object it signs and the predicate."""

    subject_name: str  # the records object's key
    subject_sha256: str  # hex SHA-256 of the records object's stored bytes
    predicate: ManifestPredicate

    def to_json(self) -> dict[str, Any]:
        return make_statement(self.subject_name, self.subject_sha256, self.predicate.to_json())


def parse_bundle_statement(payload: bytes) -> BundleStatement:
    """The statement of a manifest's (decoded) payload; FormatError naming what is wrong.

    Nothing here is authenticated: verify the envelope first (`signing.dsse`)."""
    statement = parse_statement(payload)
    subject = statement["subject"][0]
    return BundleStatement(subject["name"], subject["digest"]["sha256"],
                           parse_predicate(statement["predicate"]))
