"""Hardware-held keys: the agent key and the org key on a SoftHSM2 token, end to end.

Each test makes its own token in tmp_path (SOFTHSM2_CONF, `softhsm2-util
--init-token`) and drives the real `gamsa` CLI in subprocesses. Skips with a reason
where SoftHSM2 (Debian `softhsm2`) or python-pkcs11 (`gamsa[pkcs11]`) is missing.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import GamsaEnv, ok

MODULES = [p for p in ("/usr/lib/softhsm/libsofthsm2.so",
                       "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so") if os.path.exists(p)]
pytestmark = [
    pytest.mark.skipif(shutil.which("softhsm2-util") is None or not MODULES,
                       reason="SoftHSM2 not installed (Debian package softhsm2)"),
    pytest.mark.skipif(importlib.util.find_spec("pkcs11") is None,
                       reason="python-pkcs11 not installed (pip install '.[pkcs11]')"),
]
PIN = "8642-user"


@dataclass
class Token:
    conf: Path
    pin_file: Path
    module: str

    def uri(self, label: str, token: str = "gamsa", pin_file: Path | None = None,
            module: str | None = None) -> str:
        return (f"pkcs11:token={token};object={label};type=private"
                f"?module-path={module or self.module}"
                f"&pin-source=file:{pin_file or self.pin_file}")


@pytest.fixture
def token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Token:
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))  # GamsaEnv.run passes os.environ on
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "gamsa",
                    "--pin", PIN, "--so-pin", "97531-so"], check=True, capture_output=True)
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    pin_file.chmod(0o600)
    return Token(conf, pin_file, MODULES[0])


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gamsa: error: "), result.stderr
    assert PIN not in result.stderr + result.stdout
    return lines[0]


def key_attributes(tok: Token, label: str) -> dict[str, object]:
    """What the token says about a private key, asked by a separate process."""
    script = textwrap.dedent(f"""
        import json, pkcs11
        from pkcs11 import Attribute, ObjectClass
        from pkcs11.exceptions import PKCS11Error
        lib = pkcs11.lib({tok.module!r})
        with lib.get_token(token_label="gamsa").open(user_pin={PIN!r}) as s:
            (key,) = s.get_objects({{Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                    Attribute.LABEL: {label!r}}})
            try:
                key[Attribute.VALUE]
                value = "readable"
            except PKCS11Error as exc:
                value = type(exc).__name__
            print(json.dumps({{"extractable": key[Attribute.EXTRACTABLE],
                              "sensitive": key[Attribute.SENSITIVE],
                              "never_extractable": key[Attribute.NEVER_EXTRACTABLE],
                              "value": value}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_agent_seals_with_a_token_key_it_cannot_read(gamsa_env: GamsaEnv, token: Token,
                                                     tmp_path: Path) -> None:
    uri = token.uri("agent-key")
    gamsa_env.write_config(f'[keys]\nagent = "{uri}"\n')
    # Sealing never makes a token key: a mistyped label must not start a new chain.
    missing = gamsa_env.run("collect")
    assert "no private key with this label/id" in one_line_error(missing, 2)

    made = json.loads(ok(gamsa_env.run("keys", "init", "--json")).stdout)
    assert made["created"] is True and made["path"] == uri
    again = json.loads(ok(gamsa_env.run("keys", "init", "--json")).stdout)
    assert (again["created"], again["key_id"]) == (False, made["key_id"])  # never replaced
    shown = json.loads(ok(gamsa_env.run("keys", "show", "--json")).stdout)
    assert shown["key_id"] == made["key_id"]

    ok(gamsa_env.run("collect"))
    ok(gamsa_env.run("collect"))
    assert not (gamsa_env.state_dir / "keys" / "agent.key").exists()
    assert key_attributes(token, "agent-key") == {
        "extractable": False, "sensitive": True, "never_extractable": True,
        "value": "AttributeSensitive"}

    pub = tmp_path / "agent.pub"
    pub.write_text(shown["public_key_pem"])
    verified = gamsa_env.run("verify", "--store", gamsa_env.store_url, "--trust", str(pub),
                             "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert report["bundles"] == 2
    manifests = list(gamsa_env.store.rglob("*.manifest.dsse.json"))
    assert manifests and all(
        json.loads(m.read_bytes())["signatures"][0]["keyid"] == made["key_id"]
        for m in manifests)
    # Without --trust, verify on the host trusts the token key's public half.
    assert gamsa_env.run("verify", "--store", gamsa_env.store_url).returncode == 0
    # Rotation replaces a key file; a token key says it is not supported, in one line.
    rotated = gamsa_env.run("keys", "rotate", "--no-enroll")
    assert "not supported yet" in one_line_error(rotated, 2)


def test_org_key_on_the_token_signs_an_enrollment(gamsa_env: GamsaEnv, token: Token,
                                                  tmp_path: Path) -> None:
    org_uri = token.uri("org-key")
    org_dir = tmp_path / "org"
    made = ok(gamsa_env.run("org", "init", "--out", str(org_dir), "--key", org_uri,
                            "--json"))
    org = json.loads(made.stdout)
    assert org["created"] is True and not (org_dir / "org.key").exists()
    again = json.loads(ok(gamsa_env.run("org", "init", "--out", str(org_dir), "--key",
                                        org_uri, "--json")).stdout)
    assert (again["created"], again["key_id"]) == (False, org["key_id"])
    assert key_attributes(token, "org-key")["extractable"] is False

    ok(gamsa_env.run("collect"))
    ok(gamsa_env.run("keys", "enroll"))
    signed = ok(gamsa_env.run("org", "sign-enrollment", "--org-key", org_uri,
                              "--store", gamsa_env.store_url, "--pending", "--yes"))
    assert "test-host" in signed.stderr
    ok(gamsa_env.run("collect"))
    verified = gamsa_env.run("verify", "--store", gamsa_env.store_url, "--trust-org",
                             str(org_dir / "org.pub"), "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert not [f for f in json.loads(verified.stdout)["findings"]
                if f["code"] == "key_unbound"]


def test_token_failures_are_one_line_errors_naming_the_uri(gamsa_env: GamsaEnv, token: Token,
                                                           tmp_path: Path) -> None:
    good = token.uri("agent-key")
    gamsa_env.write_config(f'[keys]\nagent = "{good}"\n')
    ok(gamsa_env.run("keys", "init"))

    wrong_pin = tmp_path / "wrong-pin"
    wrong_pin.write_text("0000\n")
    wrong_pin.chmod(0o600)
    cases = {
        token.uri("agent-key", pin_file=wrong_pin): "refused the PIN",
        token.uri("agent-key", token="no-such-token"): "no such token",
        token.uri("agent-key", module="/usr/lib/no-such-pkcs11.so"):
            "PKCS#11 module /usr/lib/no-such-pkcs11.so does not exist",
        token.uri("agent-key", pin_file=tmp_path / "absent"): "does not exist",
    }
    for uri, says in cases.items():
        gamsa_env.write_config(f'[keys]\nagent = "{uri}"\n')
        for args in (("collect",), ("keys", "show")):
            line = one_line_error(gamsa_env.run(*args), 2)
            assert says in line and uri in line, line
        org = gamsa_env.run("org", "sign-enrollment", "--org-key", uri, "--store",
                            gamsa_env.store_url, "--pending", "--yes")
        assert says in one_line_error(org, 2)

    # A PIN written into the URI is refused when the config is read, and never echoed.
    leaky = good.replace(f"&pin-source=file:{token.pin_file}", f"&pin-value={PIN}")
    gamsa_env.write_config(f'[keys]\nagent = "{leaky}"\n')
    assert "pin-value is not accepted" in one_line_error(gamsa_env.run("keys", "show"), 2)
    # The token is intact after all that: the right PIN still opens it.
    gamsa_env.write_config(f'[keys]\nagent = "{good}"\n')
    ok(gamsa_env.run("collect"))


def test_a_token_key_that_is_not_ed25519_is_refused_not_used(gamsa_env: GamsaEnv,
                                                             token: Token) -> None:
    # Signatures stay Ed25519 (docs/FORMAT.md): a P-256 key on the token is named, not used.
    script = textwrap.dedent(f"""
        import pkcs11
        from pkcs11 import Attribute, KeyType
        from pkcs11.util.ec import encode_named_curve_parameters
        lib = pkcs11.lib({token.module!r})
        with lib.get_token(token_label="gamsa").open(rw=True, user_pin={PIN!r}) as s:
            params = s.create_domain_parameters(KeyType.EC, {{
                Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}}, local=True)
            params.generate_keypair(store=True, label="p256-key")
    """)
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    gamsa_env.write_config(f'[keys]\nagent = "{token.uri("p256-key")}"\n')
    for args in (("keys", "init"), ("collect",)):
        line = one_line_error(gamsa_env.run(*args), 2)
        assert "is not an Ed25519 key (key type EC)" in line, line
    assert not list(gamsa_env.store.rglob("*.manifest.dsse.json"))


def test_moving_a_host_from_its_key_file_to_a_token_key(gamsa_env: GamsaEnv,
                                                        token: Token) -> None:
    ok(gamsa_env.run("collect"))
    file_key = json.loads(ok(gamsa_env.run("keys", "show", "--json")).stdout)["key_id"]
    gamsa_env.write_config(f'[keys]\nagent = "{token.uri("agent-key")}"\n')
    token_key = json.loads(ok(gamsa_env.run("keys", "init", "--json")).stdout)["key_id"]
    assert token_key != file_key
    ok(gamsa_env.run("collect"))
    # The published key document follows the key: it is the token key's now.
    doc = json.loads((gamsa_env.state_dir / "keys" / "agent.json").read_bytes())
    assert doc["key_id"] == token_key
    assert (gamsa_env.store / "v1" / "keys" / f"{token_key}.json").exists()
    envelopes = [json.loads(m.read_bytes())
                 for m in gamsa_env.store.rglob("*.manifest.dsse.json")]
    (envelope,) = [e for e in envelopes if e["signatures"][0]["keyid"] == token_key]
    chain = json.loads(base64.b64decode(envelope["payload"]))["predicate"]["chain"]
    assert chain["seq"] == 1 and "new agent key" in chain["genesis_reason"], chain


def test_one_process_opens_token_keys_again_and_again(token: Token) -> None:
    # The daemon seals and ships many times in one process, and login is per process:
    # a second open must reuse the login, not fail with "user already logged in".
    script = textwrap.dedent(f"""
        from signing.signer import load_or_create_signer, load_signer
        agent, created = load_or_create_signer({token.uri("agent-key")!r})
        assert created
        for _ in range(3):
            again = load_signer({token.uri("agent-key")!r})
            assert again.key_id == agent.key_id
            assert again.public_key().verify(again.sign(b"bundle"), b"bundle")
        org, created = load_or_create_signer({token.uri("org-key")!r})
        assert created and org.key_id != agent.key_id
        assert agent.public_key().verify(agent.sign(b"after"), b"after")
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0 and out.stdout == "ok\n", out.stderr
