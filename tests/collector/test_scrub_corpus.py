"""The secrets corpus through the scrubber: every seeded secret gone, every policy line kept.

`tests/assets/secrets-corpus/root/` holds realistic configs of services found on bank
hosts; `expected.json` next to it lists, per file, the seeded secrets and the lines
that must survive byte for byte. detect-secrets (Yelp) runs as an independent
oracle: what it flags in the original must be a seeded secret or a known false
positive (so the manifest misses nothing it knows), and what it flags in the
scrubbed text must be a known false positive (so nothing it knows survives).
The same corpus goes through the real `gamsa collect` in
tests/agent/test_secrets_corpus_e2e.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from collector.scrub import scrub_argv, scrub_text, secret_file_rule

CORPUS = Path(__file__).resolve().parents[1] / "assets" / "secrets-corpus"
EXPECTED: dict[str, Any] = json.loads((CORPUS / "expected.json").read_text(encoding="utf-8"))
FILES: dict[str, dict[str, list[str]]] = EXPECTED["files"]


def corpus_text(rel: str) -> str:
    return (CORPUS / "root" / rel).read_text(encoding="utf-8")


def test_manifest_matches_the_corpus() -> None:
    """Every file is listed, every secret is in its file, every kept line is a line of it:
    so a test below that finds nothing cannot pass by looking in the wrong place."""
    on_disk = {str(p.relative_to(CORPUS / "root")) for p in (CORPUS / "root").rglob("*")
               if p.is_file()}
    assert on_disk == set(FILES)
    for rel, expected in FILES.items():
        text = corpus_text(rel)
        lines = text.splitlines()
        assert all(secret in text for secret in expected["secrets"]), rel
        assert all(line in lines for line in expected["keep"]), rel
    for rel, expected in EXPECTED["logs"].items():
        text = (CORPUS / "logs" / rel).read_text(encoding="utf-8")
        assert all(secret in text for secret in expected["secrets"]), rel
    assert sum(len(f["secrets"]) for f in FILES.values()) >= 70
    assert sum(len(f["keep"]) for f in FILES.values()) >= 500


@pytest.mark.parametrize("rel", sorted(FILES))
def test_every_seeded_secret_goes_and_every_policy_line_stays(rel: str) -> None:
    text = corpus_text(rel)
    scrubbed, count = scrub_text(text)
    missed = [s for s in FILES[rel]["secrets"] if s in scrubbed]
    kept = set(scrubbed.splitlines())
    altered = [line for line in FILES[rel]["keep"] if line not in kept]
    assert (missed, altered) == ([], [])
    assert count >= len(FILES[rel]["secrets"])


@pytest.mark.parametrize("case", EXPECTED["argv"], ids=lambda c: c["argv"][0])
def test_command_line_corpus(case: dict[str, list[str]]) -> None:
    scrubbed, count = scrub_argv(case["argv"])
    joined = "\0".join(scrubbed)
    assert [s for s in case["secrets"] if s in joined] == [] and count >= 1
    # Only the secret's argument changed: the rest of the command line is evidence.
    changed = [a for a, b in zip(case["argv"], scrubbed, strict=True) if a != b]
    assert all(any(s in a for s in case["secrets"]) for a in changed), changed


def test_secret_files_of_the_corpus() -> None:
    """The credential stores of the corpus are secret by nature: the files collector
    seals their hash only (the e2e test checks that), whatever `paths` says."""
    secret = {rel for rel in FILES if secret_file_rule("/" + rel) is not None}
    assert secret == {"home/deploy/.pgpass", "home/deploy/.aws/credentials",
                      "home/deploy/.docker/config.json", "etc/apt/auth.conf"}


def _detect_secrets(texts: dict[str, str], tmp: Path) -> set[tuple[str, str]]:
    """(file, secret value) pairs that detect-secrets' default plugins report."""
    detect_secrets = pytest.importorskip("detect_secrets")
    from detect_secrets.settings import default_settings

    for rel, text in texts.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text(text, encoding="utf-8")
    found: set[tuple[str, str]] = set()
    with default_settings():
        collection = detect_secrets.SecretsCollection()
        for rel in texts:
            collection.scan_file(str(tmp / rel))
        for filename, secret in collection:
            found.add((str(Path(filename).relative_to(tmp)), str(secret.secret_value)))
    return found


def test_detect_secrets_as_an_oracle(tmp_path: Path) -> None:
    false_positives = set(EXPECTED["detect_secrets_false_positives"])
    original = _detect_secrets({rel: corpus_text(rel) for rel in FILES}, tmp_path / "orig")
    unlisted = {(rel, value) for rel, value in original
                if value not in false_positives
                and not any(s in value or value in s for s in FILES[rel]["secrets"])}
    assert unlisted == set(), "detect-secrets flags a secret the corpus manifest does not list"
    scrubbed = _detect_secrets({rel: scrub_text(corpus_text(rel))[0] for rel in FILES},
                               tmp_path / "scrubbed")
    assert {value for _rel, value in scrubbed} <= false_positives
    # It is an oracle, not the detector: most seeded secrets are in forms it cannot see.
    seeded = sum(len(f["secrets"]) for f in FILES.values())
    seen = {s for rel, value in original for s in FILES[rel]["secrets"]
            if s in value or value in s}
    assert len(seen) < seeded


def test_every_match_holds_one_of_its_rules_needles() -> None:
    """Token rules are skipped when none of their literals is in the text: every match
    any rule makes on the corpus must contain one, or the shortcut would hide it."""
    from collector.scrub import _NEEDLES, PATTERNS

    assert set(_NEEDLES) == {p.kind for p in PATTERNS}
    texts = [corpus_text(rel) for rel in FILES]
    texts += [(CORPUS / "logs" / rel).read_text(encoding="utf-8") for rel in EXPECTED["logs"]]
    matched = set()
    for pattern in PATTERNS:
        for text in texts:
            for match in pattern.regex.finditer(text):
                matched.add(pattern.kind)
                assert any(n in match.group(0).lower() for n in _NEEDLES[pattern.kind]), \
                    (pattern.kind, match.group(0))
    assert len(matched) >= 15  # the corpus exercises most rules
