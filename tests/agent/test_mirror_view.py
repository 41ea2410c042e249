"""agent.mirror: the auditor's commands read a pulled mirror's bundles by host, date
and seq; a directory that is not a mirror is a one-line usage error."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from agent.mirror import BundleFilter, open_mirror
from signing.errors import GamsaError, UsageError
from tests.agent.mirror_fixtures import pull, seal
from tests.conftest import GamsaEnv


def test_bundles_statements_and_records_of_a_pulled_mirror(gamsa_env: GamsaEnv,
                                                            tmp_path: Path) -> None:
    seal(gamsa_env, 2, host="host-a")
    seal(gamsa_env, 1, host="host-b")
    mirror_dir = tmp_path / "mirror"
    code, _, _ = pull(gamsa_env, mirror_dir)
    assert code == 0
    view = open_mirror(mirror_dir)
    assert view.hosts() == ["host-a", "host-b"]
    bundles = list(view.bundles())
    assert [(b.host, b.seq) for b in bundles] == [("host-a", 1), ("host-a", 2), ("host-b", 3)]
    only_b = list(view.bundles(BundleFilter(hosts=frozenset({"host-b"}))))
    assert [b.host for b in only_b] == ["host-b"]
    tomorrow = dt.date.today() + dt.timedelta(days=2)
    assert list(view.bundles(BundleFilter(since=tomorrow))) == []
    statement = view.statement(bundles[0])
    assert statement["predicate"]["host"]["id"] == "host-a"
    manifest = view.manifest(bundles[0])  # the typed model (signing/predicate.py)
    assert manifest.subject_name == bundles[0].records_key
    assert manifest.predicate == view.predicate(bundles[0])
    assert manifest.predicate.host.id == "host-a" and manifest.predicate.chain.seq == 1
    assert manifest.predicate.to_json() == statement["predicate"]
    records = list(view.records(bundles[0]))
    assert records and all(isinstance(r, dict) for r in records)
    assert view.state()["store"] == gamsa_env.store_url


def test_an_unreadable_manifest_is_one_line_naming_its_file(gamsa_env: GamsaEnv,
                                                           tmp_path: Path) -> None:
    seal(gamsa_env, 1, host="host-a")
    mirror_dir = tmp_path / "mirror"
    assert pull(gamsa_env, mirror_dir)[0] == 0
    view = open_mirror(mirror_dir)
    (bundle,) = view.bundles()
    bundle.manifest_path.chmod(0o644)
    bundle.manifest_path.write_bytes(b"{not json")
    with pytest.raises(GamsaError) as caught:
        view.predicate(bundle)
    assert caught.value.message.startswith(f"{bundle.manifest_path}: unreadable manifest (")
    assert "\n" not in caught.value.message


def test_a_directory_that_is_not_a_mirror_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a gamsa mirror"):
        open_mirror(tmp_path)
