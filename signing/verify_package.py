"""Checking an inspection package (made by `gamsa export`) with nothing but this folder
and `cryptography`: `python -m signing.verify_package DIR`, or `python verify.py` in
the unpacked package (which puts the shipped `signing/` first on the path).

A package (docs/DESIGN.md, "Inspection package") holds bundles under their store keys,
the store's `v1/keys/` folder, the trust roots in `trust/`, inclusion proofs in
`proofs/`, bundles that did not verify in `failures/` (only with `--include-failures`),
`report.json` (this module's report over the package, written at export) and
`MANIFEST.sha256` (every other file's SHA-256, `sha256sum -c` format).

The check: every file against MANIFEST.sha256 (changed, missing, unlisted, not a
regular file); the evidence with the verifier (signing.verify) under the package's
trust, or the inspector's own keys (`--trust-org`, `--trust`); each proof against the
package's own signed manifest; failures listed; and the report recomputed and
compared with `report.json`. A package is only a selection of a store, so two
findings are read in its scope: a chain that starts after seq 1 in the package
(`chain_starts_before_package`) and an enrolled host without bundles in it
(`host_not_in_package`) are warnings, not errors. Exit 0 when all holds, 1 when
anything fails, 2 when DIR is not a package.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from signing.bundle import BundleName, parse_bundle_key
from signing.errors import FINDINGS, OK, USAGE, GamsaError
from signing.keys import PublicKey, load_public_key_pem
from signing.proof import verify_proof
from signing.timestamp import load_tsa_chain
from signing.verify import (
    ERROR,
    WARNING,
    BundleSummary,
    DirectoryReader,
    Finding,
    Trust,
    VerifyResult,
    check_bundle,
    load_trust,
    verify_store,
)

if TYPE_CHECKING:
    from cryptography.x509 import Certificate

PACKAGE_FORMAT = 1
MANIFEST_NAME = "MANIFEST.sha256"
REPORT_NAME = "report.json"
PACKAGE_NAME = "package.json"
TRUST_ORG_DIR = "trust/org"
TRUST_KEYS_DIR = "trust/keys"
TRUST_TSA = "trust/tsa.pem"  # the TSA certificate chain, when the export was given one
PROOFS_DIR = "proofs"
FAILURES_DIR = "failures"
PROOF_SUFFIX = ".proof.json"
_MANIFEST_LINE = re.compile(r"([0-9a-f]{64})  (\S.*)")
_CHUNK = 1 << 20


@dataclass
class PackageResult:
    """What checking a package found: the recomputed report and every finding."""

    report: dict[str, Any]
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.severity == ERROR for f in self.findings)


# -- files and MANIFEST.sha256 -------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def walk_files(root: Path) -> Iterator[tuple[str, bool]]:
    """(relative posix path, is a regular file) of everything under `root` that is not
    a directory, in no particular order; symlinks are listed, never followed, and
    `__pycache__/` (what running the verifier leaves) is skipped."""
    pending = [""]
    while pending:
        rel = pending.pop()
        with os.scandir(os.path.join(root, rel)) as entries:
            for entry in entries:
                name = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        pending.append(name)
                else:
                    yield name, entry.is_file(follow_symlinks=False)


def manifest_text(root: Path) -> bytes:
    """MANIFEST.sha256 for the files under `root` (all but itself), sorted by path."""
    lines = []
    for name, regular in walk_files(root):
        if name == MANIFEST_NAME:
            continue
        if not regular:
            raise GamsaError(f"{root / name}: not a regular file; a package holds files only")
        lines.append(f"{sha256_file(root / name)}  {name}\n")
    return "".join(sorted(lines, key=lambda line: line[66:])).encode("utf-8")


def check_manifest(root: Path) -> list[Finding]:
    """Every file against MANIFEST.sha256: changed, missing, unlisted, not regular."""
    try:
        text = (root / MANIFEST_NAME).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [Finding(MANIFEST_NAME, "package_manifest_unreadable", str(exc))]
    findings: list[Finding] = []
    listed: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = _MANIFEST_LINE.fullmatch(line)
        name = match.group(2) if match else ""
        if not match or name.startswith("/") or ".." in name.split("/"):
            findings.append(Finding(MANIFEST_NAME, "package_manifest_invalid",
                                    f"line {number} is not '<sha256>  <relative path>'"))
            continue
        listed[name] = match.group(1)
    present = dict(sorted(walk_files(root)))
    for name, expected in sorted(listed.items()):
        if name not in present:
            findings.append(Finding(name, "package_file_missing",
                                    f"listed in {MANIFEST_NAME} but not in the package"))
        elif not present[name]:
            findings.append(Finding(name, "package_file_not_regular",
                                    "not a regular file (a symlink, a FIFO, a device)"))
        elif (actual := sha256_file(root / name)) != expected:
            findings.append(Finding(name, "package_file_changed",
                                    f"sha256 is {actual}, {MANIFEST_NAME} says {expected}"))
    for name, regular in present.items():
        if name != MANIFEST_NAME and name not in listed:
            findings.append(Finding(name, "package_file_unlisted",
                                    f"not listed in {MANIFEST_NAME}"
                                    + ("" if regular else " (and not a regular file)")))
    return findings


# -- trust ---------------------------------------------------------------------------


def _keys_in(folder: Path) -> dict[str, PublicKey]:
    if not folder.is_dir():
        return {}
    keys = [load_public_key_pem(path) for path in sorted(folder.iterdir()) if path.is_file()]
    return {k.key_id: k for k in keys}


def package_trust(root: Path) -> tuple[dict[str, PublicKey], dict[str, PublicKey] | None]:
    """The trust the package was exported under: (direct keys, org roots or None)."""
    org = _keys_in(root / TRUST_ORG_DIR)
    return _keys_in(root / TRUST_KEYS_DIR), (org or None)


# -- the report ----------------------------------------------------------------------


def scope_to_package(result: VerifyResult) -> None:
    """Read two findings in the package's scope (a selection of a store, not all of it):
    a chain whose first bundle here is past seq 1, and an enrolled host with no bundle
    here, are warnings. Gaps inside a chain stay errors."""
    first: dict[tuple[str, str], BundleSummary] = {}
    for b in result.bundles:
        seen = first.get((b.name.host_id, b.chain_id))
        if seen is None or b.seq < seen.seq:
            first[(b.name.host_id, b.chain_id)] = b
    starts = {b.manifest_key: b for b in first.values() if b.seq > 1}
    hosts = {b.name.host_id for b in result.bundles}
    scoped: list[Finding] = []
    for f in result.findings:
        if f.code == "chain_gap" and f.key in starts:
            b = starts[f.key]
            f = Finding(f.key, "chain_starts_before_package",
                        f"host {b.name.host_id} chain {b.chain_id}: "
                        + ("seq 1 is" if b.seq == 2 else f"seq 1..{b.seq - 1} are")
                        + f" not in this package, which starts the chain at seq {b.seq}; its "
                        f"link to seq {b.seq - 1} is not checked here", WARNING)
        elif f.code == "host_without_bundles" and f.key.removeprefix(
                "v1/host=").rstrip("/") not in hosts:
            f = Finding(f.key, "host_not_in_package",
                        f"{f.message}; this package holds no bundle of it (not selected, "
                        f"or it has none)", WARNING)
        scoped.append(f)
    result.findings[:] = scoped


def failure_entries(root: Path, trust: Trust) -> list[dict[str, Any]]:
    """Each bundle under failures/, with what the verifier finds wrong with it."""
    reader = DirectoryReader(root / FAILURES_DIR)  # its keys folder: the package's
    names: dict[BundleName, set[str]] = {}
    for key in reader.list("v1/host="):
        parsed = parse_bundle_key(key)
        if parsed is not None:
            names.setdefault(parsed[0], set()).add(parsed[1])
    entries = []
    for name in sorted(names, key=lambda n: (n.host_id, n.seq, n.collection_id)):
        if "manifest" in names[name]:
            findings = check_bundle(reader, name, frozenset(names[name]), trust).findings
        else:
            findings = [Finding(name.records_key, "manifest_missing",
                                "records object without its manifest")]
        entries.append({"bundle": name.manifest_key,
                        "path": f"{FAILURES_DIR}/{name.manifest_key}",
                        "findings": [f.as_dict() for f in findings]})
    return entries


def check_proof(root: Path, path: str, trust: Trust) -> dict[str, Any]:
    """One proof: it verifies, its manifest is the package's own, its line is its index."""
    entry: dict[str, Any] = {"path": path, "records_key": None, "line": None, "ok": False,
                             "error": None}
    try:
        data = (root / path).read_bytes()
        proven = verify_proof(data, trust.keys)
        document = json.loads(data)
        entry.update(records_key=proven.records_key, line=proven.line)
        parsed = parse_bundle_key(proven.records_key)
        if parsed is None:
            raise GamsaError(f"records key {proven.records_key} is not a bundle key")
        manifest = root / parsed[0].manifest_key
        if not manifest.is_file():
            raise GamsaError(f"its bundle {parsed[0].manifest_key} is not in the package")
        if base64.b64decode(document["manifest"]) != manifest.read_bytes():
            raise GamsaError(f"its manifest differs from {parsed[0].manifest_key}")
        if document.get("line") != proven.line:
            raise GamsaError(f"it says line {document.get('line')}, its leaf index is "
                             f"line {proven.line}")
    except GamsaError as exc:
        entry["error"] = exc.message
        return entry
    except (OSError, ValueError, KeyError, TypeError) as exc:
        entry["error"] = f"unreadable ({exc})"
        return entry
    entry["ok"] = True
    return entry


def package_tsa_chain(root: Path) -> list[Certificate] | None:
    """The TSA chain shipped in `trust/tsa.pem`, or None (tokens are then not judged)."""
    path = root / TRUST_TSA
    return load_tsa_chain(path) if path.is_file() else None


def check_evidence(root: Path, trusted: Mapping[str, PublicKey],
                   org_keys: Mapping[str, PublicKey] | None,
                   progress: Callable[[int, int], None] | None = None,
                   tsa_chain: list[Certificate] | None = None) -> VerifyResult:
    """The verifier over the package's `v1/` (bundles, chains, keys, and RFC 3161
    tokens when a TSA chain is given), in its scope."""
    result = verify_store(DirectoryReader(root), trusted, progress=progress,
                          org_keys=org_keys, tsa_chain=tsa_chain)
    scope_to_package(result)
    return result


def build_report(root: Path, trusted: Mapping[str, PublicKey],
                 org_keys: Mapping[str, PublicKey] | None,
                 evidence: VerifyResult | None = None,
                 tsa_chain: list[Certificate] | None = None) -> tuple[dict[str, Any],
                                                                     list[Finding]]:
    """The verification report over the package's contents, and its findings (evidence,
    failures, proofs). Deterministic: the same package gives the same bytes.
    `evidence`: `check_evidence` of this same `v1/`, when the caller just ran it."""
    reader = DirectoryReader(root)
    result = evidence if evidence is not None else check_evidence(
        root, trusted, org_keys, tsa_chain=tsa_chain)
    trust, _ = load_trust(reader, trusted, org_keys)
    failures = failure_entries(root, trust)
    proofs = [check_proof(root, name, trust) for name, _ in sorted(walk_files(root))
              if name.startswith(f"{PROOFS_DIR}/") and name.endswith(PROOF_SUFFIX)]
    findings = list(result.findings)
    findings += [Finding(entry["path"], "bundle_failed",
                         "exported with --include-failures; it does not verify: "
                         + "; ".join(f"{f['code']}: {f['message']}" for f in entry["findings"]
                                     if f["severity"] == ERROR))
                 for entry in failures]
    findings += [Finding(entry["path"], "proof_invalid", str(entry["error"]))
                 for entry in proofs if not entry["ok"]]
    ok = not any(f.severity == ERROR for f in findings)
    report = {"format": PACKAGE_FORMAT, "ok": ok,
              "trust": {"keys": sorted(trusted), "org": sorted(org_keys or {})},
              "evidence": result.as_dict(), "failures": failures, "proofs": proofs}
    return report, findings


def report_bytes(report: Mapping[str, Any]) -> bytes:
    return json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"


def verify_package(root: Path, trusted: Mapping[str, PublicKey] | None = None,
                   org_keys: Mapping[str, PublicKey] | None = None,
                   tsa_chain: list[Certificate] | None = None) -> PackageResult:
    """Check the package at `root` (under its own trust unless keys or a TSA chain
    are given)."""
    if not (root / PACKAGE_NAME).is_file():
        raise GamsaError(f"{root}: not an inspection package (no {PACKAGE_NAME})",
                         exit_code=USAGE)
    if trusted is None and org_keys is None:
        trusted, org_keys = package_trust(root)
    findings = check_manifest(root)
    odd = [f for f in findings if f.code == "package_file_not_regular" or (
        f.code == "package_file_unlisted" and "not a regular file" in f.message)]
    if odd:
        # A symlink to /dev/zero or a FIFO would hang or exhaust the verifier.
        return PackageResult({}, [*findings, Finding(
            odd[0].key, "evidence_not_checked", "the package holds something that is not "
            "a regular file; nothing in it was verified")])
    chain = tsa_chain if tsa_chain is not None else package_tsa_chain(root)
    report, evidence = build_report(root, trusted or {}, org_keys, tsa_chain=chain)
    try:
        shipped = (root / REPORT_NAME).read_bytes()
    except OSError as exc:
        shipped = b""
        findings.append(Finding(REPORT_NAME, "report_missing", str(exc)))
    if shipped and shipped != report_bytes(report):
        findings.append(Finding(REPORT_NAME, "report_differs",
                                "the shipped report is not what the evidence gives now"))
    return PackageResult(report, findings + evidence)


def _print_text(result: PackageResult, root: Path, own_trust: bool) -> None:
    report = result.report
    trust = report.get("trust", {})
    for kind, ids in (("organisation root", trust.get("org", [])),
                      ("agent key", trust.get("keys", []))):
        for key_id in ids:
            print(f"trusting {kind} {key_id}"
                  + ("" if own_trust else " (from the package's trust/: compare it with the "
                                          "key id you were given)"))
    for f in result.findings:
        print(f"{f.severity.upper():7} {f.code}: {f.key}: {f.message}")
    evidence = report.get("evidence", {})
    errors = sum(1 for f in result.findings if f.severity == ERROR)
    print(f"{'OK' if result.ok else 'FAILED'}: {evidence.get('bundles', 0)} bundle(s), "
          f"{evidence.get('records', 0)} records, {len(report.get('proofs', []))} proof(s), "
          f"{len(report.get('failures', []))} failing bundle(s), {errors} error "
          f"finding(s) in {root}")


def main(argv: Sequence[str] | None = None, default_root: Path | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="verify.py" if default_root else "python -m signing.verify_package",
        description="Check a gamsa inspection package: every file against MANIFEST.sha256, "
                    "every bundle, chain and proof under the package's trust (or yours).")
    if default_root is None:
        parser.add_argument("root", metavar="DIR", type=Path, help="the unpacked package")
    parser.add_argument("--trust-org", action="append", type=Path, default=[],
                        metavar="ORG.pub", help="organisation root public key you hold "
                        "(instead of the package's trust/); repeatable")
    parser.add_argument("--trust", action="append", type=Path, default=[], metavar="KEY.pem",
                        help="agent public key you hold (instead of the package's "
                             "trust/); repeatable")
    parser.add_argument("--tsa-cert", type=Path, metavar="CHAIN.pem",
                        help="TSA certificate chain you hold, to judge the RFC 3161 tokens "
                             "(instead of the package's trust/tsa.pem)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    root: Path = default_root if default_root is not None else args.root
    try:
        own = bool(args.trust or args.trust_org)
        trusted = {k.key_id: k for k in map(load_public_key_pem, args.trust)} if own else None
        org = {k.key_id: k for k in map(load_public_key_pem, args.trust_org)} or None
        chain = load_tsa_chain(args.tsa_cert) if args.tsa_cert else None
        result = verify_package(root, trusted if own else None, org if own else None, chain)
    except GamsaError as exc:
        print(f"verify: {exc.diagnostics()}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"verify: cannot read {exc.filename or root}: {exc.strerror or exc}",
              file=sys.stderr)
        return USAGE
    if args.json:
        print(json.dumps({"ok": result.ok,
                          "findings": [f.as_dict() for f in result.findings],
                          "report": result.report}, indent=2, sort_keys=True))
    else:
        _print_text(result, root, own)
    return OK if result.ok else FINDINGS


if __name__ == "__main__":
    sys.exit(main())
