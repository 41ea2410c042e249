"""Organisation root and host-key enrollment, end to end through the real `gamsa` CLI.

A small fleet shares one file:// store; an organisation key enrolls each host's
agent key; `gamsa verify --trust-org` then trusts a key only for its host and
window. The attacks: a key enrolled for one host signing bundles under another,
appended to its chain or as a new chain.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from signing.enrollment import (
    PREDICATE_TYPE,
    enrollment_object_name,
    parse_request,
    sign_enrollment,
)
from signing.keys import FileSigner, load_private_key
from tests.conftest import GamsaEnv, ok

REPO = Path(__file__).resolve().parents[2]


def host_env(tmp_path: Path, host_id: str, store: Path) -> GamsaEnv:
    root = tmp_path / host_id
    root.mkdir()
    env = GamsaEnv(root, root / "agent.toml", root / "state", store)
    env.config.write_text(f'state_dir = "{env.state_dir}"\nhost_id = "{host_id}"\n'
                          f'[store]\nurl = "{env.store_url}"\n'
                          f'[collectors]\nenabled = ["host"]\n')
    return env


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("gamsa: error: "), result.stderr
    return lines[-1]


def key_id(env: GamsaEnv) -> str:
    return str(json.loads(ok(env.run("keys", "show", "--json")).stdout)["key_id"])


@dataclass
class Fleet:
    org_dir: Path
    store: Path
    hosts: dict[str, GamsaEnv]

    @property
    def org_pub(self) -> Path:
        return self.org_dir / "org.pub"

    @property
    def org_key(self) -> Path:
        return self.org_dir / "org.key"

    @property
    def any(self) -> GamsaEnv:
        return next(iter(self.hosts.values()))

    def verify(self, *args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
        result = self.any.run("verify", "--store", f"file://{self.store}", "--json", *args)
        assert "Traceback" not in result.stderr, result.stderr
        return result.returncode, json.loads(result.stdout)

    def sign_pending(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.any.run("org", "sign-enrollment", "--org-key", str(self.org_key),
                            "--store", f"file://{self.store}", "--pending", *args)


def errors(report: dict) -> list[dict]:  # type: ignore[type-arg]
    return [f for f in report["findings"] if f["severity"] == "error"]


def make_fleet(tmp_path: Path, names: tuple[str, ...]) -> Fleet:
    store = tmp_path / "store"
    hosts = {name: host_env(tmp_path, name, store) for name in names}
    fleet = Fleet(tmp_path / "org", store, hosts)
    ok(fleet.any.run("org", "init", "--out", str(fleet.org_dir)))
    for env in hosts.values():
        ok(env.run("collect"))
        ok(env.run("keys", "enroll"))
    ok(fleet.sign_pending("--yes"))
    for env in hosts.values():
        ok(env.run("collect"))
    return fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return make_fleet(tmp_path, ("web-01", "db-01"))


def test_org_init_makes_an_offline_key_and_never_replaces_it(tmp_path: Path,
                                                             gamsa_env: GamsaEnv) -> None:
    out = tmp_path / "org"
    made = ok(gamsa_env.run("org", "init", "--out", str(out)))
    assert (out / "org.key").stat().st_mode & 0o777 == 0o600
    assert out.stat().st_mode & 0o777 == 0o700
    private = (out / "org.key").read_bytes()
    org_id = FileSigner.from_key(load_private_key(out / "org.key")).key_id
    assert f"organisation key_id {org_id}" in made.stdout
    assert "BEGIN PUBLIC KEY" in (out / "org.pub").read_text()
    again = gamsa_env.run("org", "init", "--out", str(out))
    assert "exists" in one_line_error(again, 2)
    assert (out / "org.key").read_bytes() == private


def test_a_fleet_enrolled_by_the_org_verifies(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path, ("web-01", "db-01"))
    # A third host enrolls offline: request file -> org signs the file -> host installs it.
    late = host_env(tmp_path, "app-01", fleet.store)
    fleet.hosts["app-01"] = late
    request = tmp_path / "app-01.request.json"
    ok(late.run("keys", "enroll", "--no-submit", "--out", str(request)))
    signed_dir = tmp_path / "signed"
    signed = ok(late.run("org", "sign-enrollment", "--org-key", f"file:{fleet.org_key}",
                         str(request), "--out", str(signed_dir), "--yes"))
    late_key = key_id(late)
    assert f"host app-01  key {late_key}" in signed.stderr  # listed before signing
    (enrollment_file,) = signed_dir.iterdir()
    ok(late.run("keys", "install-enrollment", str(enrollment_file),
                "--trust-org", str(fleet.org_pub)))
    ok(late.run("collect"))
    assert enrollment_file.name in os.listdir(fleet.store / "v1" / "keys")

    code, report = fleet.verify("--trust-org", str(fleet.org_pub))
    assert code == 0, errors(report)
    assert report["bundles"] == 5
    assert not [f for f in report["findings"] if f["code"] == "key_unbound"]
    # The statement binds key id <-> host id <-> window, as docs/FORMAT.md says.
    payload = json.loads(base64.b64decode(json.loads(enrollment_file.read_bytes())["payload"]))
    assert payload["predicateType"] == PREDICATE_TYPE
    assert payload["subject"] == [{"name": late_key, "digest": {"sha256": late_key}}]
    predicate = payload["predicate"]
    assert (predicate["host_id"], predicate["key_id"]) == ("app-01", late_key)
    assert predicate["not_before"] < predicate["not_after"]
    # A second batch signs nothing twice: every pending request is already enrolled.
    again = ok(fleet.sign_pending("--yes"))
    assert "nothing to sign" in again.stderr
    assert again.stderr.count("already enrolled until") == 2
    # Renewal: enrollments ending within --renew-within days are signed anew, beside
    # the old ones (a write-once store keeps both), and the fleet still verifies.
    renewed = ok(fleet.sign_pending("--yes", "--renew-within", "400", "--valid-days", "500"))
    assert "will sign 2 enrollment(s)" in renewed.stderr
    assert len(list((fleet.store / "v1" / "keys").glob("*.enrollment.*"))) == 5
    assert fleet.verify("--trust-org", str(fleet.org_pub))[0] == 0


def test_direct_trust_still_works_and_says_it_is_unbound(fleet: Fleet,
                                                         tmp_path: Path) -> None:
    env = fleet.hosts["web-01"]
    pem = tmp_path / "web.pem"
    pem.write_text(json.loads(ok(env.run("keys", "show", "--json")).stdout)["public_key_pem"])
    result = ok(env.run("verify", "--host", "web-01", "--trust", str(pem)))
    assert "key_unbound" in result.stdout and "not bound to a host" in result.stdout
    assert "host(s) web-01" in result.stdout


def test_verify_takes_the_org_root_from_config(fleet: Fleet) -> None:
    env = fleet.hosts["web-01"]
    config = env.config.read_text()
    env.config.write_text(config + f'[verify]\ntrust_org = ["{fleet.org_pub}"]\n')
    result = ok(env.run("verify"))
    assert "trusting this agent's own key" not in result.stderr
    assert "key_unbound" not in result.stdout and "OK: 4 bundle(s)" in result.stdout
    env.config.write_text(config + '[verify]\ntrust_org = ["org.pub"]\n')
    assert "verify.trust_org" in one_line_error(env.run("verify"), 2)


def forge_appended(fleet: Fleet, tmp_path: Path, attacker: str, victim: str) -> GamsaEnv:
    """The attacker's key, the victim's chain head: seal under the victim's host id."""
    victim_env, attacker_env = fleet.hosts[victim], fleet.hosts[attacker]
    forger = host_env(tmp_path, f"forger-{attacker}", fleet.store)
    forger.config.write_text(forger.config.read_text().replace(
        f'host_id = "forger-{attacker}"', f'host_id = "{victim}"'))
    shutil.copytree(victim_env.state_dir, forger.state_dir)
    shutil.rmtree(forger.state_dir / "keys")
    shutil.copytree(attacker_env.state_dir / "keys", forger.state_dir / "keys")
    head = json.loads((forger.state_dir / "chain.json").read_text())
    head["key_id"] = key_id(attacker_env)
    (forger.state_dir / "chain.json").write_text(json.dumps(head))
    return forger


@pytest.mark.parametrize(("attacker", "victim"), [("db-01", "web-01"), ("web-01", "db-01")])
def test_a_key_enrolled_for_another_host_appending_to_a_chain_is_an_error(
        fleet: Fleet, tmp_path: Path, attacker: str, victim: str) -> None:
    forger = forge_appended(fleet, tmp_path, attacker, victim)
    sealed = json.loads(ok(forger.run("collect", "--json")).stdout)
    assert sealed["seq"] == 3 and sealed["genesis_reason"] is None  # appended, linked
    code, report = fleet.verify("--trust-org", str(fleet.org_pub))
    assert code == 1
    found = {f["code"]: f for f in errors(report)}
    # (a key change without a rotation statement too: tests/agent/test_rotation.py;
    # verify runs on web-01: its own state also sees a bundle beyond its chain head there)
    expected = {"key_not_enrolled_for_host", "key_change_without_rotation"}
    assert set(found) == expected | ({"chain_beyond_head"} if victim == "web-01" else set())
    if victim == "web-01":
        assert found["chain_beyond_head"]["key"] == sealed["manifest_key"]
    finding = found["key_not_enrolled_for_host"]
    assert finding["key"] == sealed["manifest_key"]
    message = finding["message"]
    assert victim in message and attacker in message
    assert key_id(fleet.hosts[attacker]) in message
    # Without the org root, both keys trusted directly, only the key change inside
    # the chain shows it; a whole new chain would pass: that is what enrollment adds.
    pems = []
    for name, env in fleet.hosts.items():
        pem = tmp_path / f"{name}.pem"
        pem.write_text(json.loads(ok(env.run("keys", "show", "--json")).stdout)
                       ["public_key_pem"])
        pems += ["--trust", str(pem)]
    code, report = fleet.verify(*pems)
    assert sorted(f["code"] for f in errors(report)) == sorted(
        ["key_change_without_rotation"] + (["chain_beyond_head"] if victim == "web-01" else []))


def test_a_key_enrolled_for_another_host_starting_a_new_chain_is_an_error(
        fleet: Fleet, tmp_path: Path) -> None:
    forger = host_env(tmp_path, "forger", fleet.store)
    forger.config.write_text(forger.config.read_text().replace('"forger"', '"web-01"'))
    forger.state_dir.mkdir(mode=0o700)
    shutil.copytree(fleet.hosts["db-01"].state_dir / "keys", forger.state_dir / "keys")
    for _ in range(2):
        ok(forger.run("collect"))
    code, report = fleet.verify("--trust-org", str(fleet.org_pub))
    assert code == 1
    found = errors(report)
    assert len(found) == 2
    assert {f["code"] for f in found} == {"key_not_enrolled_for_host"}
    assert all("host web-01" in f["message"] and "db-01" in f["message"] for f in found)
    assert all("/host=web-01/" in f["key"] for f in found)


def sign_in_process(fleet: Fleet, host: str, not_before: dt.datetime,
                    not_after: dt.datetime) -> Path:
    """An enrollment with a chosen window, put into the store like `sign-enrollment`."""
    env = fleet.hosts[host]
    kid = key_id(env)
    data = (fleet.store / "v1" / "enroll" / "pending" / host / f"{kid}.json").read_bytes()
    request = parse_request(data, host)
    org = FileSigner.from_key(load_private_key(fleet.org_key))
    envelope = sign_enrollment(request, org, not_before, not_after, not_after)
    path = fleet.store / enrollment_object_name(kid, envelope)
    path.write_bytes(envelope)
    return path


def test_bundles_outside_the_enrollment_window_are_errors(tmp_path: Path) -> None:
    store = tmp_path / "store"
    fleet = Fleet(tmp_path / "org", store, {"web-01": host_env(tmp_path, "web-01", store)})
    env = fleet.hosts["web-01"]
    ok(env.run("org", "init", "--out", str(fleet.org_dir)))
    ok(env.run("collect"))
    ok(env.run("keys", "enroll"))
    now = dt.datetime.now(dt.UTC)
    sign_in_process(fleet, "web-01", now - dt.timedelta(days=30), now - dt.timedelta(days=1))
    code, report = fleet.verify("--trust-org", str(fleet.org_pub))
    assert code == 1
    (finding,) = errors(report)
    assert finding["code"] == "key_outside_validity"
    assert "web-01" in finding["message"] and key_id(env) in finding["message"]
    # A renewal (a second enrollment of the same key) covers it again.
    sign_in_process(fleet, "web-01", now - dt.timedelta(days=30), now + dt.timedelta(days=30))
    assert fleet.verify("--trust-org", str(fleet.org_pub))[0] == 0


def test_wrong_org_key_trusts_nothing(fleet: Fleet, tmp_path: Path) -> None:
    other = tmp_path / "other-org"
    ok(fleet.any.run("org", "init", "--out", str(other)))
    code, report = fleet.verify("--trust-org", str(other / "org.pub"))
    assert code == 1
    # (chain_truncated too: verify runs on web-01's host, whose store now shows nothing)
    codes = {f["code"] for f in errors(report)} - {"chain_truncated"}
    assert codes == {"enrollment_untrusted", "untrusted_key"}
    # The agent's own key is not trusted behind the auditor's back under org trust.
    assert not [f for f in report["findings"] if f["code"] == "key_unbound"]
    private = fleet.any.run("verify", "--trust-org", str(fleet.org_key))
    assert "private key" in one_line_error(private, 2)


def test_tampered_or_misfiled_enrollment_is_a_finding(fleet: Fleet) -> None:
    keys = fleet.store / "v1" / "keys"
    web, db = key_id(fleet.hosts["web-01"]), key_id(fleet.hosts["db-01"])
    (web_enrollment,) = keys.glob(f"{web}.enrollment.*")
    envelope = json.loads(web_enrollment.read_bytes())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["not_after"] = "2099-01-01T00:00:00Z"
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    os.chmod(web_enrollment, 0o644)
    web_enrollment.write_text(json.dumps(envelope))
    # db-01's genuine enrollment copied under web-01's key name
    (db_enrollment,) = keys.glob(f"{db}.enrollment.*")
    misfiled = keys / db_enrollment.name.replace(db, web)
    shutil.copy(db_enrollment, misfiled)
    (keys / "notes.txt").write_text("not ours")
    code, report = fleet.verify("--trust-org", str(fleet.org_pub))
    assert code == 1
    by_key = {(Path(f["key"]).name, f["code"]) for f in errors(report)}
    assert (web_enrollment.name, "enrollment_invalid") in by_key
    assert (misfiled.name, "enrollment_invalid") in by_key
    assert any(code == "untrusted_key" for _, code in by_key)  # web-01 lost its enrollment
    assert not [f for f in errors(report) if "/host=db-01/" in f["key"]]
    assert {"key": "v1/keys/notes.txt", "code": "unexpected_object"}.items() <= next(
        f for f in report["findings"] if f["key"] == "v1/keys/notes.txt").items()


def test_install_enrollment_refuses_another_hosts_enrollment(fleet: Fleet) -> None:
    keys = fleet.store / "v1" / "keys"
    (db_enrollment,) = keys.glob(f"{key_id(fleet.hosts['db-01'])}.enrollment.*")
    result = fleet.hosts["web-01"].run("keys", "install-enrollment", str(db_enrollment))
    line = one_line_error(result, 2)
    assert "db-01" in line and "web-01" in line
    garbage = fleet.hosts["web-01"].root / "garbage.json"
    garbage.write_text("{not json")
    result = fleet.hosts["web-01"].run("keys", "install-enrollment", str(garbage))
    assert "not a valid enrollment" in one_line_error(result, 2)


def test_sign_enrollment_rejects_bad_requests(fleet: Fleet, tmp_path: Path) -> None:
    pending = fleet.store / "v1" / "enroll" / "pending"
    web_kid = key_id(fleet.hosts["web-01"])
    web_request = json.loads((pending / "web-01" / f"{web_kid}.json").read_bytes())
    # A host claims web-01's key as its own: both claims are refused.
    claim = {**web_request, "host_id": "evil-01"}
    (pending / "evil-01").mkdir()
    (pending / "evil-01" / f"{web_kid}.json").write_text(json.dumps(claim))
    # A request whose key id is not its key's.
    (pending / "bad-01").mkdir()
    (pending / "bad-01" / ("0" * 64 + ".json")).write_text(
        json.dumps({**web_request, "host_id": "bad-01", "key_id": "0" * 64}))
    result = fleet.sign_pending("--yes")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "claimed by hosts evil-01, web-01" in result.stderr
    assert "is not the id of its public_key_pem" in result.stderr
    assert "signed evil-01" not in result.stderr and "signed bad-01" not in result.stderr
    # Files: not JSON, a missing file, a public key where the org key should be, a
    # pkcs11: URI naming no key, a scheme not built (awskms).
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2")
    result = fleet.any.run("org", "sign-enrollment", "--org-key", str(fleet.org_key),
                           str(junk), "--yes", "--out", str(tmp_path / "o"))
    assert result.returncode == 1 and "REJECTED" in result.stderr and "not JSON" in result.stderr
    for org_key, expected in ((str(fleet.org_pub), "is a public key"),
                              ("pkcs11:token=org", "no key named"),
                              ("awskms:alias/org", "unsupported scheme 'awskms'")):
        result = fleet.any.run("org", "sign-enrollment", "--org-key", org_key, str(junk),
                               "--yes")
        assert expected in one_line_error(result, 2)
    result = fleet.any.run("org", "sign-enrollment", "--org-key", str(fleet.org_key),
                           str(tmp_path / "missing.json"), "--yes")
    assert "missing.json" in one_line_error(result, 2)
    result = fleet.any.run("keys", "enroll", "--no-submit")
    assert "nothing to do" in one_line_error(result, 2)


def test_signing_alone_verifies_a_fleet_with_org_trust(fleet: Fleet, tmp_path: Path) -> None:
    """A regulator's verifier: a copy of signing/ and cryptography, nothing else of ours."""
    forger = forge_appended(fleet, tmp_path, "db-01", "web-01")
    ok(forger.run("collect"))
    alone = tmp_path / "alone"
    shutil.copytree(REPO / "signing", alone / "signing",
                    ignore=shutil.ignore_patterns("__pycache__"))
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(alone)!r})
        from pathlib import Path
        from signing.keys import load_public_key_pem
        from signing.verify import DirectoryReader, verify_store
        org = load_public_key_pem(Path({str(fleet.org_pub)!r}))
        result = verify_store(DirectoryReader(Path({str(fleet.store)!r})), {{}},
                              org_keys={{org.key_id: org}})
        ours = sorted(m for m in sys.modules if m.split(".")[0] in
                      ("agent", "collector", "click", "psutil", "boto3", "tests"))
        print(json.dumps({{"modules": ours, "signing": sys.modules["signing"].__file__,
                          "findings": [f.as_dict() for f in result.findings
                                       if f.severity == "error"]}}))
    """)
    run = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True,
                         timeout=120, check=False, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["modules"] == []
    assert out["signing"].startswith(str(alone))
    assert [f["code"] for f in out["findings"]] == ["key_not_enrolled_for_host",
                                                    "key_change_without_rotation"]


@pytest.mark.parametrize(("answer", "code"), [("n", 1), ("y", 0)])
def test_sign_enrollment_asks_on_a_terminal(tmp_path: Path, answer: str, code: int) -> None:
    import pty

    store = tmp_path / "store"
    env = host_env(tmp_path, "web-01", store)
    ok(env.run("org", "init", "--out", str(tmp_path / "org")))
    ok(env.run("keys", "enroll"))
    master, slave = pty.openpty()
    try:
        os.write(master, f"{answer}\n".encode())
        run_env = {k: v for k, v in os.environ.items() if not k.startswith("GAMSA_")}
        run_env["GAMSA_CONFIG"] = str(env.config)
        result = subprocess.run(
            [str(Path(sys.executable).parent / "gamsa"), "org", "sign-enrollment",
             "--org-key", str(tmp_path / "org" / "org.key"), "--store", env.store_url,
             "--pending"], stdin=slave, capture_output=True, text=True, timeout=60,
            env=run_env, check=False)
    finally:
        os.close(master)
        os.close(slave)
    assert result.returncode == code, result.stderr
    assert "will sign 1 enrollment(s)" in result.stderr and "host web-01" in result.stderr
    assert "sign 1 enrollment(s)? [y/N]" in result.stderr
    signed = list((store / "v1" / "keys").glob("*.enrollment.*"))
    assert len(signed) == (1 if answer == "y" else 0)


def test_enrollment_through_an_s3_store(s3_gamsa: GamsaEnv, tmp_path: Path) -> None:
    """Pending requests, the batch and publishing on a moto S3 bucket (Object Lock)."""
    env = s3_gamsa
    org = tmp_path / "org"
    ok(env.run("org", "init", "--out", str(org)))
    ok(env.run("collect"))
    first = json.loads(ok(env.run("keys", "enroll", "--json")).stdout)
    assert first["store_key"] == f"v1/enroll/pending/test-host/{first['key_id']}.json"
    assert json.loads(ok(env.run("keys", "enroll", "--json")).stdout)["already_pending"]
    signed = json.loads(ok(env.run("org", "sign-enrollment", "--org-key", str(org / "org.key"),
                                   "--store", env.store_url, "--pending", "--yes",
                                   "--json")).stdout)
    (entry,) = signed["signed"]
    assert entry["object"].startswith(f"v1/keys/{first['key_id']}.enrollment.")
    ok(env.run("collect"))
    result = ok(env.run("verify", "--trust-org", str(org / "org.pub"), "--json"))
    report = json.loads(result.stdout)
    assert report["ok"] and report["bundles"] == 2
