"""`gamsa export`: an inspection package a supervisor checks alone.

The selected bundles of a verified mirror (agent/mirror.py), byte for byte under
their store keys, the mirror's `v1/keys/` folder, the trust roots it was pulled
under, inclusion proofs of the records a file names, the verifier's report over
exactly these contents (made by `signing.verify_package` on the staged package),
a README with commands for standard tools, `signing/` itself with a `verify.py`,
and `MANIFEST.sha256`: one zip. Layout in docs/DESIGN.md ("Inspection package").

The package is staged in a temp directory beside `--out` (objects hard-linked from
the mirror when they share a filesystem, else copied), judged, then zipped with
sorted entries and fixed times (two exports of one selection are the same bytes)
into a temp name, fsynced and linked to `--out`, create-only.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import signing
from agent import __version__
from agent.export_readme import render_readme
from agent.fsutil import failing, fsync_dir
from agent.mirror import BundleFilter, MirroredBundle, MirrorView, QuarantinedBundle
from agent.proof_rows import read_proof_rows
from signing.bundle import parse_bundle_key
from signing.canonical import canonical_bytes
from signing.enrollment import KEYS_PREFIX
from signing.errors import FINDINGS, GamsaError, UsageError
from signing.keys import PublicKey, load_public_key_pem, parse_key_document, public_key_from_pem
from signing.proof import make_proofs
from signing.verify import ERROR, Finding, VerifyResult
from signing.verify_package import (
    FAILURES_DIR,
    MANIFEST_NAME,
    PACKAGE_FORMAT,
    PACKAGE_NAME,
    PROOF_SUFFIX,
    PROOFS_DIR,
    REPORT_NAME,
    TRUST_KEYS_DIR,
    TRUST_ORG_DIR,
    TRUST_TSA,
    build_report,
    check_evidence,
    manifest_text,
    package_tsa_chain,
    report_bytes,
)

Progress = Callable[[int, int], None]
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the zip epoch: entries carry no export time
PACKAGE_MODE = 0o640
VERIFY_PY = '''"""Check this inspection package: python3 verify.py [--json] [--trust-org ORG.pub]
[--trust KEY.pem]. Needs Python 3.11+ and the `cryptography` package (msgspec is not
needed); it uses the signing/ folder beside this file, not an installed gamsa."""

import sys
from pathlib import Path

if sys.version_info < (3, 11):
    sys.exit("verify.py needs Python 3.11 or later (this is %d.%d)" % sys.version_info[:2])
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.dont_write_bytecode = True  # leave the package as it was: no __pycache__ in it
try:
    import cryptography  # noqa: F401
except ImportError:
    sys.exit("verify.py needs the cryptography package: pip install cryptography")

from signing.verify_package import main  # noqa: E402

sys.exit(main(sys.argv[1:], default_root=HERE))
'''


@dataclass(frozen=True)
class ExportRequest:
    """What to export: the mirror, the selection, the trust it was pulled under."""

    mirror: MirrorView
    out: Path
    which: BundleFilter
    trusted: Mapping[str, PublicKey]
    org_keys: Mapping[str, PublicKey] | None
    prove_lines: Path | None = None
    include_failures: bool = False
    tsa_chain: Path | None = None  # the TSA certificates (PEM) to ship and judge tokens by


@dataclass
class ExportResult:
    """What went into the package, for the one summary line and `--json`."""

    out: str
    bundles: int = 0
    records: int = 0
    files: int = 0
    bytes: int = 0
    proofs: int = 0
    failures: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and not any(f.severity == ERROR for f in self.findings)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "out": self.out, "bundles": self.bundles,
                "records": self.records, "files": self.files, "bytes": self.bytes,
                "proofs": self.proofs, "failures": self.failures,
                "findings": [f.as_dict() for f in self.findings]}


def resolve_trust(view: MirrorView, trust: tuple[Path, ...], trust_org: tuple[Path, ...],
                  ) -> tuple[dict[str, PublicKey], dict[str, PublicKey] | None]:
    """The trust the mirror was pulled under, as public keys: the ones given (each must
    be part of that trust), else those the mirror recorded (`gamsa pull` keeps their
    PEM), else, for agent keys, the mirror's key documents of those ids."""
    state = view.state()
    pulled = state.get("trust") or {}
    ids = {"keys": set(pulled.get("keys") or ()), "org": set(pulled.get("org") or ())}
    if trust or trust_org:
        given = {"keys": {k.key_id: k for k in map(load_public_key_pem, trust)},
                 "org": {k.key_id: k for k in map(load_public_key_pem, trust_org)}}
        for kind, option in (("keys", "--trust"), ("org", "--trust-org")):
            for key_id in sorted(set(given[kind]) - ids[kind]):
                raise UsageError(f"{option}: key {key_id} is not in the trust the mirror was "
                                 f"pulled under ({', '.join(sorted(ids[kind])) or 'none'})",
                                 hint="export under the trust the mirror was verified with")
        return given["keys"], given["org"] or None
    pems = state.get("trust_public_keys") or {}
    found: dict[str, dict[str, PublicKey]] = {"keys": {}, "org": {}}
    for kind in ("keys", "org"):
        for key_id in sorted(ids[kind]):
            document = view.root / KEYS_PREFIX / f"{key_id}.json"
            if key_id in pems:
                key = public_key_from_pem(pems[key_id])
            elif kind == "keys" and document.is_file():
                key = parse_key_document(document.read_bytes())
            else:
                raise UsageError(f"--mirror {view.root}: pulled under "
                                 f"{'organisation root' if kind == 'org' else 'key'} "
                                 f"{key_id}, whose public key it does not hold",
                                 hint="pass it with --trust-org ORG.pub" if kind == "org"
                                 else "pass it with --trust KEY.pem")
            if key.key_id != key_id:
                raise UsageError(f"{view.state_path}: trust key {key_id} is another key "
                                 f"({key.key_id})")
            found[kind][key_id] = key
    if not found["keys"] and not found["org"]:
        raise UsageError(f"--mirror {view.root}: the mirror records no trust",
                         hint="pass --trust KEY.pem or --trust-org ORG.pub")
    return found["keys"], found["org"] or None


def _place(source: Path, target: Path) -> None:
    """`source`'s bytes at `target`: a hard link where possible (no copy), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _stage_evidence(request: ExportRequest, bundles: list[MirroredBundle], stage: Path) -> None:
    root = request.mirror.root
    for bundle in bundles:
        _place(bundle.records_path, stage / bundle.records_key)
        _place(bundle.manifest_path, stage / bundle.manifest_key)
        if bundle.timestamp_path is not None:
            _place(bundle.timestamp_path, stage / bundle.name.timestamp_key)
    keys = root / KEYS_PREFIX
    for path in sorted(keys.rglob("*")) if keys.is_dir() else []:
        if path.is_file() and not path.is_symlink():
            _place(path, stage / path.relative_to(root))
    for folder, keys_of in ((TRUST_KEYS_DIR, request.trusted),
                            (TRUST_ORG_DIR, request.org_keys or {})):
        for key_id, key in sorted(keys_of.items()):
            target = stage / folder / f"{key_id}.pem"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(key.pem())
    if request.tsa_chain is not None:
        target = stage / TRUST_TSA
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(request.tsa_chain, target)
    source = Path(signing.__file__).parent
    for module in sorted(source.glob("*.py")):
        _place(module, stage / "signing" / module.name)
    (stage / "verify.py").write_text(VERIFY_PY)


def _failing_bundles(stage: Path, request: ExportRequest, bundles: list[MirroredBundle],
                     progress: Progress | None) -> tuple[list[MirroredBundle], list[Finding],
                                                         VerifyResult]:
    """The selected bundles that do not verify in the package, every error finding, and
    the verifier's result."""
    result = check_evidence(stage, request.trusted, request.org_keys, progress,
                            package_tsa_chain(stage))
    good = {b.manifest_key for b in result.bundles if b.ok}
    errors = [f for f in result.findings if f.severity == ERROR]
    return [b for b in bundles if b.manifest_key not in good], errors, result


def _refusal(failing: list[MirroredBundle], held: list[QuarantinedBundle],
             errors: list[Finding]) -> GamsaError:
    counts = [f"{len(failing)} selected bundle(s) fail" if failing else "",
              f"{len(held)} held in the mirror's quarantine" if held else "",
              f"{len(errors)} error finding(s)" if errors else ""]
    if errors:
        detail = f" (first: {errors[0].key}: {errors[0].code}: {errors[0].message})"
    else:
        detail = f" (first: {held[0].name.manifest_key}: failed when pulled)" if held else ""
    return GamsaError(f"export refused: the selection does not verify: "
                      f"{', '.join(c for c in counts if c)}{detail}",
                      hint="pass --include-failures to export it with the failing bundles "
                           "under failures/, marked in the report and README",
                      exit_code=FINDINGS)


def _stage_proofs(request: ExportRequest, bundles: list[MirroredBundle],
                  failing: list[MirroredBundle], stage: Path) -> int:
    if request.prove_lines is None:
        return 0
    by_key = {key: b for b in bundles for key in (b.manifest_key, b.records_key)}
    failed = {b.manifest_key for b in failing}
    wanted: dict[str, list[int]] = {}
    for row in read_proof_rows(request.prove_lines):
        bundle = by_key.get(row.bundle)
        if bundle is None:
            known = parse_bundle_key(row.bundle) is not None
            raise UsageError(f"--prove-lines {row.where}: bundle {row.bundle} is "
                             + ("not in this export's selection" if known
                                else "not a bundle's manifest or records key"),
                             hint="prove records of the bundles exported "
                                  "(--host/--since/--until)")
        if bundle.manifest_key in failed:
            raise GamsaError(f"--prove-lines {row.where}: bundle {bundle.manifest_key} does "
                             f"not verify; no proof is made from it", exit_code=FINDINGS)
        wanted.setdefault(bundle.manifest_key, []).append(row.line)
    made = 0
    for manifest_key, lines in sorted(wanted.items()):
        bundle = by_key[manifest_key]
        stem = bundle.records_key.removesuffix(".records.jsonl.gz")
        proofs = make_proofs(bundle.manifest_path.read_bytes(),
                             bundle.records_path.read_bytes(), lines, bundle.records_key)
        for line, proof in proofs.items():
            target = stage / PROOFS_DIR / f"{stem}.line-{line:08d}{PROOF_SUFFIX}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(proof)
            made += 1
    return made


def _zip(stage: Path, out: Path) -> int:
    """Zip `stage` deterministically into a temp name beside `out`, then link it to
    `out` (create-only). Returns the zip's size."""
    names = [line.split("  ", 1)[1] for line in
             (stage / MANIFEST_NAME).read_text("utf-8").splitlines()] + [MANIFEST_NAME]
    temp = out.parent / f".{out.name}.{secrets.token_hex(6)}.partial"
    try:
        # 0640 like the report: the package holds evidence (accounts, processes, logs),
        # not for every local user.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        with failing("write", out), os.fdopen(os.open(temp, flags, PACKAGE_MODE), "wb") as sink:
            with zipfile.ZipFile(sink, "w", allowZip64=True) as archive:
                for name in sorted(names):
                    path = stage / name
                    info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
                    info.create_system = 3  # unix, so the modes below are read
                    info.external_attr = (0o755 if name == "verify.py" else 0o644) << 16
                    info.compress_type = (zipfile.ZIP_STORED if name.endswith(".gz")
                                          else zipfile.ZIP_DEFLATED)
                    size = path.stat().st_size
                    with path.open("rb") as source, archive.open(
                            info, "w", force_zip64=size >= 1 << 31) as target:
                        shutil.copyfileobj(source, target, 1 << 20)
            sink.flush()
            os.fsync(sink.fileno())
            size = sink.tell()
        try:
            os.link(temp, out)
        except FileExistsError:
            raise UsageError(f"--out {out}: already exists; an export never replaces a file",
                             hint="give a new file name") from None
        with failing("write", out.parent):
            fsync_dir(out.parent)
        return size
    finally:
        temp.unlink(missing_ok=True)


def export(request: ExportRequest, progress: Progress | None = None) -> ExportResult:
    """Write the inspection package of `request` to `request.out`; `progress` is
    called as the staged bundles are verified (done, total)."""
    out = request.out
    if out.exists() or out.is_symlink():
        raise UsageError(f"--out {out}: already exists; an export never replaces a file",
                         hint="give a new file name")
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: no directory {out.parent}")
    bundles = list(request.mirror.bundles(request.which))
    if not bundles:
        raise UsageError(f"--mirror {request.mirror.root}: no bundles match the selection "
                         "(--host/--since/--until)")
    result = ExportResult(str(out))
    with failing("write", out):  # --out's folder not writable: name --out, not a temp
        staging = tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.")
    with failing("stage the export of"), staging as temp:
        stage = Path(temp) / "package"
        _stage_evidence(request, bundles, stage)
        failing_bundles, errors, evidence = _failing_bundles(stage, request, bundles,
                                                             progress)
        # Bundles pull refused are part of the selection too: never left out unsaid.
        held = request.mirror.quarantined(request.which)
        if (failing_bundles or held or errors) and not request.include_failures:
            raise _refusal(failing_bundles, held, errors)
        for bundle in failing_bundles:
            for key in (bundle.records_key, bundle.manifest_key, bundle.name.timestamp_key):
                if (stage / key).exists():
                    (stage / FAILURES_DIR / key).parent.mkdir(parents=True, exist_ok=True)
                    (stage / key).rename(stage / FAILURES_DIR / key)
        for quarantined in held:
            for key, path in quarantined.objects().items():
                _place(path, stage / FAILURES_DIR / key)
        result.proofs = _stage_proofs(request, bundles, failing_bundles, stage)
        result.failures = sorted([b.manifest_key for b in failing_bundles]
                                 + [q.name.manifest_key for q in held])
        selection = {"hosts": sorted(request.which.hosts),
                     "since": request.which.since and request.which.since.isoformat(),
                     "until": request.which.until and request.which.until.isoformat()}
        package = {"format": PACKAGE_FORMAT, "made_by": f"gamsa {__version__}",
                   "store": request.mirror.state().get("store"), "selection": selection,
                   "include_failures": request.include_failures}
        (stage / PACKAGE_NAME).write_bytes(canonical_bytes(package) + b"\n")
        # The verifier's result stands for the package unless failing bundles moved.
        report, findings = build_report(stage, request.trusted, request.org_keys,
                                        None if failing_bundles else evidence,
                                        package_tsa_chain(stage))
        (stage / REPORT_NAME).write_bytes(report_bytes(report))
        (stage / "README.md").write_text(render_readme(stage, package, report))
        (stage / MANIFEST_NAME).write_bytes(manifest_text(stage))
        result.findings = findings
        result.bundles = report["evidence"]["bundles"] + len(report["failures"])
        result.records = report["evidence"]["records"]
        result.files = len((stage / MANIFEST_NAME).read_bytes().splitlines()) + 1
        result.bytes = _zip(stage, out)
    return result
