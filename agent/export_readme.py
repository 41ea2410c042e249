"""The README.md of an inspection package: what it holds, and how to check it with
standard tools (sha256sum, openssl, python3's standard library) and with the
`signing/` package shipped in it. The commands name a real bundle of the package,
so they run as written (tests/agent/test_export.py runs them).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from signing.verify_package import (
    FAILURES_DIR,
    MANIFEST_NAME,
    PACKAGE_NAME,
    PROOFS_DIR,
    REPORT_NAME,
    TRUST_KEYS_DIR,
    TRUST_ORG_DIR,
    TRUST_TSA,
)

# Marks the fenced blocks an inspector runs in order from the package's folder.
RECIPE_FENCE = "```sh"
LISTED = 50  # chains, failures, proofs named in the README; all are in report.json

_DSSE_PY = """\
python3 - "$M" "$tmp" <<'EOF'
import base64, json, sys
envelope = json.load(open(sys.argv[1]))
payload = base64.b64decode(envelope["payload"])
kind = envelope["payloadType"].encode()
# DSSE v1 pre-authentication encoding: the bytes the key signed
pae = b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)
open(sys.argv[2] + "/pae.bin", "wb").write(pae)
open(sys.argv[2] + "/sig.bin", "wb").write(base64.b64decode(envelope["signatures"][0]["sig"]))
print(envelope["signatures"][0]["keyid"])
EOF"""

_MERKLE_PY = """\
python3 - "$M" "$R" <<'EOF'
import base64, gzip, hashlib, json, sys
statement = json.loads(base64.b64decode(json.load(open(sys.argv[1]))["payload"]))
signed = statement["predicate"]["records"]
lines = gzip.open(sys.argv[2]).read().split(b"\\n")[:-1]   # one record per line
def root(hashes):                                          # RFC 9162 section 2.1.1
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    return hashlib.sha256(b"\\x01" + root(hashes[:k]) + root(hashes[k:])).digest()
leaves = [hashlib.sha256(b"\\x00" + line).digest() for line in lines]
assert len(lines) == signed["count"], "record count differs from the signed one"
assert root(leaves).hex() == signed["merkle_root"], "Merkle root differs from the signed one"
print(f"Merkle root OK: {len(lines)} records")
EOF"""


_PROOF_PY = """\
python3 - "$P" <<'EOF'
import base64, hashlib, json, sys
proof = json.load(open(sys.argv[1]))
manifest = base64.b64decode(proof["manifest"])
key = proof["records_key"].removesuffix(".records.jsonl.gz") + ".manifest.dsse.json"
assert manifest == open(key, "rb").read(), "the proof's manifest is not the package's"
signed = json.loads(base64.b64decode(json.loads(manifest)["payload"]))["predicate"]["records"]
record = base64.b64decode(proof["record"])
node = hashlib.sha256(b"\\x00" + record).digest()
fn, sn = proof["leaf_index"], proof["tree_size"] - 1     # RFC 9162 section 2.1.3.2
for sibling in map(bytes.fromhex, proof["audit_path"]):
    assert sn > 0, "audit path too long"
    if fn & 1 or fn == sn:
        node = hashlib.sha256(b"\\x01" + sibling + node).digest()
        while not fn & 1 and fn:
            fn, sn = fn >> 1, sn >> 1
    else:
        node = hashlib.sha256(b"\\x01" + node + sibling).digest()
    fn, sn = fn >> 1, sn >> 1
assert sn == 0 and proof["tree_size"] == signed["count"], "tree size differs"
assert node.hex() == signed["merkle_root"], "the record is not under the signed root"
assert proof["line"] == proof["leaf_index"] + 1
print(f"proof OK: line {proof['line']} of {proof['records_key']}: {record.decode()}")
EOF"""


def _example(stage: Path) -> tuple[str, str, str] | None:
    """(manifest key, records key, signing key id) of the package's first bundle."""
    host_dirs = sorted((stage / "v1").glob("host=*"))
    for manifest in sorted(p for d in host_dirs for p in d.rglob("*.manifest.dsse.json")):
        key = manifest.relative_to(stage).as_posix()
        envelope = json.loads(manifest.read_bytes())
        return (key, key.removesuffix(".manifest.dsse.json") + ".records.jsonl.gz",
                str(envelope["signatures"][0]["keyid"]))
    return None


def _proof_recipe(report: dict[str, Any]) -> list[str]:
    """One proof checked by hand: its record up the audit path to the signed root of a
    manifest that is the package's own (whose signature the step above checks)."""
    first = next((p for p in report["proofs"] if p["ok"]), None)
    if first is None:
        return []
    return ["A record shown by its inclusion proof alone (the record, its audit path, and "
            "the bundle's signed manifest, byte-equal to the package's; its signature is "
            "checked as above):", "", RECIPE_FENCE, f"P='{first['path']}'", _PROOF_PY, "```",
            ""]


def _recipe(stage: Path, report: dict[str, Any]) -> list[str]:
    example = _example(stage)
    lines = [
        "## 2. Check it with standard tools",
        "",
        "Unpack the zip into a folder of its own (its paths are the store keys, with no "
        "top folder: `unzip inspection.zip -d inspection`). "
        "Run these from the unpacked folder (bash, coreutils, openssl 3, python3; no "
        "gamsa code). They check one bundle by hand; step 3 checks every bundle.",
        "",
        "Every file is as exported:",
        "",
        RECIPE_FENCE,
        f"sha256sum --quiet -c {MANIFEST_NAME} && echo 'all files match {MANIFEST_NAME}'",
        "```",
        "",
    ]
    if example is None:
        return [*lines, "(No bundle verified, so there is no example bundle to check by "
                        "hand: see failures/.)", ""]
    manifest, records, key_id = example
    lines += [
        "The records object's SHA-256 is the one its signed manifest names (the manifest "
        "is a DSSE envelope; its payload is an in-toto Statement):",
        "",
        RECIPE_FENCE,
        f"M='{manifest}'",
        f"R='{records}'",
        "signed=$(python3 -c 'import base64,json,sys; print(json.loads(base64.b64decode("
        "json.load(open(sys.argv[1]))[\"payload\"]))[\"subject\"][0][\"digest\"][\"sha256\"])'"
        " \"$M\")",
        "actual=$(sha256sum \"$R\" | cut -d' ' -f1)",
        "test \"$signed\" = \"$actual\" && echo \"records digest OK: $actual\"",
        "```",
        "",
        "The manifest's Ed25519 signature, with openssl, over the DSSE v1 "
        "pre-authentication encoding; the key is the agent key document in `v1/keys/`, "
        "and its key id is the SHA-256 of the raw 32-byte public key:",
        "",
        RECIPE_FENCE,
        "tmp=$(mktemp -d)",
        _DSSE_PY,
        f"K={key_id}",
        "python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[\"public_key_pem\"],"
        " end=\"\")' \"v1/keys/$K.json\" > \"$tmp/key.pem\"",
        "test \"$(openssl pkey -pubin -in \"$tmp/key.pem\" -outform DER | tail -c 32 | "
        "sha256sum | cut -d' ' -f1)\" = \"$K\" && echo \"key id OK: $K\"",
        "openssl pkeyutl -verify -pubin -inkey \"$tmp/key.pem\" -rawin "
        "-in \"$tmp/pae.bin\" -sigfile \"$tmp/sig.bin\"",
        "```",
        "",
    ]
    if (stage / TRUST_TSA).is_file() and (stage / (manifest.removesuffix(".dsse.json")
                                                   + ".tsr")).is_file():
        lines += [
            "The bundle's RFC 3161 timestamp token (`.manifest.tsr`: a TSA saw this manifest's "
            f"SHA-256 at its genTime), with the TSA certificate chain in `{TRUST_TSA}`:",
            "",
            RECIPE_FENCE,
            "openssl ts -verify -in \"${M%.dsse.json}.tsr\" -data \"$M\" "
            f"-CAfile {TRUST_TSA}",
            "openssl ts -reply -in \"${M%.dsse.json}.tsr\" -text | grep 'Time stamp:'",
            "```",
            "",
        ]
    org = report["trust"]["org"]
    enrollments = sorted((stage / "v1" / "keys").glob(f"{key_id}.enrollment.*.dsse.json"))
    if org and enrollments:
        lines += [
            "That key is trusted because the organisation root enrolled it for this host: "
            "the enrollment is a DSSE envelope too, signed by the root key in "
            f"`{TRUST_ORG_DIR}/` (compare its key id with the one the bank gave you "
            "separately):",
            "",
            RECIPE_FENCE,
            f"M='{enrollments[0].relative_to(stage).as_posix()}'",
            _DSSE_PY,
            f"openssl pkeyutl -verify -pubin -inkey '{TRUST_ORG_DIR}/{org[0]}.pem' -rawin "
            "-in \"$tmp/pae.bin\" -sigfile \"$tmp/sig.bin\"",
            f"M='{manifest}'",
            "```",
            "",
        ]
    lines += [
        "The Merkle root (RFC 9162) and count of the records are the signed ones:",
        "",
        RECIPE_FENCE,
        _MERKLE_PY,
        "rm -rf \"$tmp\"",
        "```",
        "",
        *(_proof_recipe(report) if report["proofs"] else []),
        "Each manifest's `predicate.chain.prev` is the SHA-256 (`sha256sum`) of the previous "
        "manifest of its chain, byte for byte: that is how a missing or replaced bundle "
        "shows." + ("" if (following := _next_in_chain(stage, manifest)) is None else
                    " For this bundle and the next:"),
        "",
    ]
    if following is not None:
        lines += [
            RECIPE_FENCE,
            f"N='{following}'",
            "prev=$(python3 -c 'import base64,json,sys; print(json.loads(base64.b64decode("
            "json.load(open(sys.argv[1]))[\"payload\"]))[\"predicate\"][\"chain\"]"
            "[\"prev\"])' \"$N\")",
            "test \"$prev\" = \"$(sha256sum \"$M\" | cut -d' ' -f1)\" && "
            "echo \"chain link OK: $prev\"",
            "```",
            "",
        ]
    return lines


def _chain_position(path: Path) -> tuple[str, int]:
    statement = json.loads(base64.b64decode(json.loads(path.read_bytes())["payload"]))
    chain = statement["predicate"]["chain"]
    return str(chain.get("id")), int(chain["seq"])


def _next_in_chain(stage: Path, manifest: str) -> str | None:
    """The manifest key of the bundle after `manifest` in its chain, when the package
    holds it (the next file of its host, same chain, seq + 1)."""
    host_dir = stage / manifest.split("/date=", 1)[0]
    ordered = sorted(host_dir.rglob("*.manifest.dsse.json"))
    keys = [p.relative_to(stage).as_posix() for p in ordered]
    at = keys.index(manifest)
    if at + 1 >= len(keys):
        return None
    chain, seq = _chain_position(ordered[at])
    return keys[at + 1] if _chain_position(ordered[at + 1]) == (chain, seq + 1) else None


def _listed(items: list[str], what: str) -> list[str]:
    """A markdown list of at most LISTED items; the rest are in report.json."""
    shown = [f"- {item}" for item in items[:LISTED]]
    if len(items) > LISTED:
        shown.append(f"- … and {len(items) - LISTED} more ({what} in `{REPORT_NAME}`)")
    return [*shown, ""]


def render_readme(stage: Path, package: dict[str, Any], report: dict[str, Any]) -> str:
    """The README for the staged package (deterministic: no time, no temp paths)."""
    evidence = report["evidence"]
    selection = package["selection"]
    chains = evidence["chains"]
    hosts = sorted({c["host"] for c in chains})
    trust = report["trust"]
    verdict = ("It verifies: every bundle, chain and proof checks under the trust below."
               if report["ok"] else
               "**It does NOT verify**: see the findings in `report.json` (`ok: false`)"
               + (" and the failing bundles below." if report["failures"] else "."))
    lines = [
        "# gamsa inspection package",
        "",
        f"Evidence exported by {package['made_by']} from a verified mirror of "
        f"`{package['store']}`: {evidence['bundles']} bundle(s) of {len(hosts)} host(s), "
        f"{evidence['records']} records. Selection: hosts "
        f"{', '.join(selection['hosts']) or 'all'}, dates {selection['since'] or 'any'} to "
        f"{selection['until'] or 'any'}. {verdict}",
        "",
        "Trust it was checked under (compare these key ids with the ones the bank gave "
        "you by another channel; never trust a key only because it is in this package):",
        "",
    ]
    lines += [f"- organisation root `{k}` (`{TRUST_ORG_DIR}/{k}.pem`)" for k in trust["org"]]
    lines += [f"- agent key `{k}` (`{TRUST_KEYS_DIR}/{k}.pem`), trusted for any host"
              for k in trust["keys"]]
    lines += [
        "",
        "## 1. What is in it",
        "",
        "- `v1/host=<host>/date=<day>/<seq>-<collection>.records.jsonl.gz` and "
        "`.manifest.dsse.json` (and `.manifest.tsr`, an RFC 3161 token, when the bundle "
        "has one): each bundle's objects exactly as stored, under their store keys.",
        "- `v1/keys/`: the agent key documents, the organisation's enrollments, key "
        "rotations and revocations.",
        f"- `{TRUST_ORG_DIR}/`, `{TRUST_KEYS_DIR}/`: the public keys the export trusted.",
        f"- `{PROOFS_DIR}/`: inclusion proofs, one record each (the record, its RFC 9162 "
        "audit path and the signed manifest).",
        f"- `{FAILURES_DIR}/`: bundles that did not verify, kept for inspection only when "
        "the exporter asked (`--include-failures`).",
        f"- `{REPORT_NAME}`: the verifier's report over exactly this package; `{PACKAGE_NAME}`:"
        " the selection; `signing/` and `verify.py`: the verifier; "
        f"`{MANIFEST_NAME}`: the SHA-256 of every other file.",
        "",
        f"Chains ({len(chains)}):",
        "",
        *_listed([f"{c['host']} chain {c['chain_id']}: seq {c['first_seq']}..{c['last_seq']}"
                  f" ({c['bundles']} bundle(s))" for c in chains], "chains"),
    ]
    if report["failures"]:
        lines += [f"Failing bundles ({len(report['failures'])}), under `{FAILURES_DIR}/`:", ""]
        lines += _listed([f"`{entry['bundle']}`: " + (", ".join(sorted(
            {f["code"] for f in entry["findings"]})) or "see report.json")
            for entry in report["failures"]], "failures")
    if report["proofs"]:
        lines += [f"Proofs ({len(report['proofs'])}):", ""]
        lines += _listed([f"`{p['path']}`: line {p['line']} of `{p['records_key']}`"
                          for p in report["proofs"]], "proofs")
    lines += _recipe(stage, report)
    lines += [
        "## 3. Check everything with the shipped verifier",
        "",
        "`verify.py` runs the `signing/` folder beside it (gamsa's own verifier, "
        "Python 3.11+, needing only the `cryptography` package) over the whole package: "
        f"every file against `{MANIFEST_NAME}`, every bundle (signature, key binding, "
        "digest, canonical lines, count, Merkle root), every chain (gaps, forks, links), "
        f"every proof, and the recomputed report against `{REPORT_NAME}`. Exit 0 when "
        "all holds, 1 when anything fails (each finding names its file).",
        "",
        "```sh",
        "python3 -m venv ~/gamsa-check && ~/gamsa-check/bin/pip install cryptography",
        "~/gamsa-check/bin/python verify.py",
        "# with keys you hold rather than the package's trust/:",
        "~/gamsa-check/bin/python verify.py --trust-org /path/to/org.pub",
        "```",
        "",
        "A package is a selection of a store: a chain that starts after seq 1 here "
        "(`chain_starts_before_package`) and an enrolled host without bundles here "
        "(`host_not_in_package`) are warnings; a gap inside a chain is an error.",
        "",
    ]
    return "\n".join(lines)
