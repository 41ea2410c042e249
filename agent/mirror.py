"""Reading a verified mirror (made by `gamsa pull`): the one place that knows its layout.

The auditor's commands (query, diff, export, report) read only the mirror, never a
store: every bundle in it was verified on arrival, and failing ones sit in
`quarantine/`, read only to say which bundles are held there (export must not
leave them out unsaid). This module finds the mirror's bundles by
host, date and seq, and opens their manifests and records; it does not verify again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

from agent.pull import FINDINGS_NAME, QUARANTINE_NAME, STATE_NAME, TEMP_NAME
from signing.bundle import MANIFEST_SUFFIX, BundleName, iter_record_lines, parse_bundle_key
from signing.dsse import envelope_payload, parse_statement
from signing.errors import GamsaError, UsageError
from signing.predicate import BundleStatement, ManifestPredicate, parse_bundle_statement

BUNDLES_PREFIX = "v1/host="
T = TypeVar("T")


@dataclass(frozen=True)
class MirroredBundle:
    """One whole bundle in the mirror (its manifest is there, so its records are)."""

    name: BundleName
    manifest_path: Path
    records_path: Path
    timestamp_path: Path | None

    @property
    def host(self) -> str:
        return self.name.host_id

    @property
    def seq(self) -> int:
        return self.name.seq

    @property
    def manifest_key(self) -> str:
        return self.name.manifest_key

    @property
    def records_key(self) -> str:
        return self.name.records_key


@dataclass(frozen=True)
class QuarantinedBundle:
    """A bundle `gamsa pull` refused: its objects and `findings.json` in quarantine/."""

    name: BundleName
    directory: Path

    def objects(self) -> dict[str, Path]:
        """Its objects held in quarantine, by store key (some may be missing)."""
        keys = (self.name.records_key, self.name.manifest_key, self.name.timestamp_key)
        return {key: self.directory / key.rsplit("/", 1)[-1] for key in keys
                if (self.directory / key.rsplit("/", 1)[-1]).is_file()}


@dataclass(frozen=True)
class BundleFilter:
    """Which bundles a command reads: hosts (none: all) and a date range by `date=`."""

    hosts: frozenset[str] = frozenset()
    since: date | None = None
    until: date | None = None

    def admits_host(self, host: str) -> bool:
        return not self.hosts or host in self.hosts

    def admits_date(self, day: str) -> bool:
        try:
            when = date.fromisoformat(day)
        except ValueError:
            return False
        if self.since is not None and when < self.since:
            return False
        return self.until is None or when <= self.until


class MirrorView:
    """A mirror directory opened for reading."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_path = root / STATE_NAME

    def state(self) -> dict[str, Any]:
        """`.gamsa-mirror.json`: the store it mirrors, its trust, the last pull."""
        try:
            state: dict[str, Any] = json.loads(self.state_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise GamsaError(f"{self.state_path}: not a readable mirror state ({exc})") from exc
        return state

    def hosts(self) -> list[str]:
        """Every host with a directory in the mirror, sorted."""
        base = self.root / "v1"
        if not base.is_dir():
            return []
        return sorted(entry.name.removeprefix("host=") for entry in base.iterdir()
                      if entry.is_dir() and entry.name.startswith("host="))

    def bundles(self, which: BundleFilter | None = None) -> Iterator[MirroredBundle]:
        """Whole bundles (manifest present), by host, then date, then seq."""
        which = which or BundleFilter()
        for host in self.hosts():
            if not which.admits_host(host):
                continue
            host_dir = self.root / "v1" / f"host={host}"
            found: list[MirroredBundle] = []
            for day_dir in sorted(host_dir.iterdir()):
                day = day_dir.name.removeprefix("date=")
                if not day_dir.is_dir() or not which.admits_date(day):
                    continue
                found.extend(self._bundles_in(day_dir))
            found.sort(key=lambda bundle: (bundle.name.date, bundle.seq))
            yield from found

    def _bundles_in(self, day_dir: Path) -> Iterable[MirroredBundle]:
        rel = day_dir.relative_to(self.root).as_posix()
        for entry in sorted(day_dir.iterdir()):
            parsed = parse_bundle_key(f"{rel}/{entry.name}")
            if parsed is None or parsed[1] != "manifest" or not entry.is_file():
                continue
            name = parsed[0]
            tsr = self.root / name.timestamp_key
            yield MirroredBundle(name, entry, self.root / name.records_key,
                                 tsr if tsr.is_file() else None)

    def manifest(self, bundle: MirroredBundle) -> BundleStatement:
        """The manifest's statement as the typed model (signing/predicate.py): what its
        records object is and the predicate (verified when it was pulled)."""
        return self._read_manifest(bundle, parse_bundle_statement)

    def predicate(self, bundle: MirroredBundle) -> ManifestPredicate:
        """The manifest's predicate (host, collection, chain, collectors, ...)."""
        return self.manifest(bundle).predicate

    def quarantined(self, which: BundleFilter | None = None) -> list[QuarantinedBundle]:
        """Bundles of the selection held in quarantine/ (judged: `findings.json` is there)
        and not in the mirror, by host, then date, then seq."""
        which = which or BundleFilter()
        base = self.root / QUARANTINE_NAME
        found = []
        for findings in sorted((base / "v1").rglob(FINDINGS_NAME)) if base.is_dir() else []:
            stem = findings.parent.relative_to(base).as_posix()
            parsed = parse_bundle_key(stem + MANIFEST_SUFFIX)
            if parsed is None:  # a key object quarantined, not a bundle
                continue
            name = parsed[0]
            if (which.admits_host(name.host_id) and which.admits_date(name.date)
                    and not (self.root / name.manifest_key).is_file()):
                found.append(QuarantinedBundle(name, findings.parent))
        return sorted(found, key=lambda q: (q.name.host_id, q.name.date, q.name.seq))

    def statement(self, bundle: MirroredBundle) -> dict[str, Any]:
        """The manifest's in-toto statement as plain JSON (for a reader that shows it
        whole; everything else reads `manifest`)."""
        return self._read_manifest(bundle, parse_statement)

    def _read_manifest(self, bundle: MirroredBundle, parse: Callable[[bytes], T]) -> T:
        try:
            return parse(envelope_payload(bundle.manifest_path.read_bytes()))
        except OSError as exc:
            raise GamsaError(f"{bundle.manifest_path}: unreadable manifest "
                             f"({exc.strerror or exc})") from exc
        except GamsaError as exc:
            raise GamsaError(f"{bundle.manifest_path}: unreadable manifest "
                             f"({exc.message})") from exc

    def record_lines(self, bundle: MirroredBundle) -> Iterator[bytes]:
        """Each record's canonical JSON line, in order (line numbers start at 1)."""
        try:
            data = bundle.records_path.read_bytes()
        except OSError as exc:
            raise GamsaError(f"{bundle.records_path}: unreadable records ({exc})") from exc
        yield from iter_record_lines(data, bundle.records_key)

    def records(self, bundle: MirroredBundle) -> Iterator[dict[str, Any]]:
        """Each record as a dict, in order."""
        for line in self.record_lines(bundle):
            yield json.loads(line)


def open_mirror(root: Path) -> MirrorView:
    """The mirror at `root`, or a UsageError saying it is not one."""
    if not (root / STATE_NAME).is_file():
        raise UsageError(f"--mirror {root}: not a gamsa mirror (no {STATE_NAME})",
                         hint="make one with `gamsa pull --store URL --to DIR`")
    return MirrorView(root)


# Names the mirror keeps beside the bundles, never read as evidence.
NOT_EVIDENCE = (STATE_NAME, QUARANTINE_NAME, TEMP_NAME)
