"""The offline installers (packaging/build.py): the .deb and the tarball build, install
for real with no network into a private mount namespace (tests/packaging/sandbox.sh:
the host's /etc, /opt, /var/lib are untouched), and the installed agent collects,
verifies and keeps its key and chain across an upgrade. Also the hardened unit."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
UNIT = PACKAGING / "gamsa.service"
SANDBOX = Path(__file__).with_name("sandbox.sh")
CAPS = "dac_read_search,sys_ptrace"  # the unit's AmbientCapabilities, for setpriv

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None,
                                reason="dpkg-deb not installed (Debian package dpkg)")


def sandbox_reason() -> str | None:
    if sys.platform != "linux":
        return "Linux only"
    if os.geteuid() != 0:
        return "installing needs root (in a private mount namespace; the host is untouched)"
    for tool in ("unshare", "dpkg", "runuser", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    probe = subprocess.run(["unshare", "--mount", "--net", "--fork", "true"],
                           capture_output=True, check=False)
    if probe.returncode != 0:
        return f"cannot make a private mount namespace: {probe.stderr.decode().strip()}"
    return None


needs_sandbox = pytest.mark.skipif(sandbox_reason() is not None,
                                   reason=str(sandbox_reason()))


@dataclass(frozen=True)
class Built:
    out: Path
    wheelhouse: Path
    deb: Path
    tarball: Path


def build(out: Path, *extra: str) -> list[Path]:
    done = subprocess.run([sys.executable, str(PACKAGING / "build.py"), "--out", str(out),
                           *extra], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    return [Path(line) for line in done.stdout.split()]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """One wheelhouse (from the registry) and both installers, once per module."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb not installed (Debian package dpkg)")
    out = tmp_path_factory.mktemp("dist")
    deb, tarball = build(out)
    return Built(out, out / "wheelhouse", deb, tarball)


class Host:
    """A throwaway host: commands run with no network in the sandbox rooted at `box`."""

    def __init__(self, box: Path) -> None:
        self.box = box

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["unshare", "--mount", "--net", "--fork", "bash", str(SANDBOX),
                               str(self.box), *argv], capture_output=True, text=True,
                              timeout=300, check=False, env={"PATH": os.environ["PATH"]})
        if check:
            assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"
        return done

    def as_agent(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """A gamsa command as the unit runs it: user gamsa, only the unit's capabilities."""
        return self.run("setpriv", "--reuid=gamsa", "--regid=gamsa", "--init-groups",
                        f"--inh-caps=-all,+{CAPS.replace(',', ',+')}",
                        f"--ambient-caps=+{CAPS.replace(',', ',+')}",
                        f"--bounding-set=-all,+{CAPS.replace(',', ',+')}", "--no-new-privs",
                        "/opt/gamsa/bin/gamsa", *argv)

    def path(self, host_path: str) -> Path:
        """Where a host path of the sandbox lives on this machine."""
        for prefix, sub in (("/var/lib/", "varlib/"), ("/opt/", "opt/"), ("/etc/", "etc/")):
            if host_path.startswith(prefix):
                return self.box / sub / host_path[len(prefix):]
        raise AssertionError(host_path)

    def chain(self) -> dict[str, object]:
        return dict(json.loads(self.path("/var/lib/gamsa/chain.json").read_text()))

    def key_sha256(self) -> str:
        return hashlib.sha256(self.path("/var/lib/gamsa/keys/agent.key").read_bytes()).hexdigest()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    box = tmp_path / "box"
    yield Host(box)
    # The box holds a copy of /etc (shadow included): never leave it in pytest's kept tmp dirs.
    shutil.rmtree(box, ignore_errors=True)


def collect_and_verify(host: Host) -> dict[str, object]:
    summary: dict[str, object] = json.loads(host.as_agent("collect", "--json").stdout)
    verified = host.as_agent("verify")
    assert "0 error finding(s)" in verified.stdout, verified.stdout
    return summary


def check_installed(host: Host) -> None:
    """What both installers must leave: user, 0700 state dir, key, venv, enabled unit."""
    state = host.path("/var/lib/gamsa")
    assert state.stat().st_mode & 0o777 == 0o700
    uid = int(host.run("id", "-u", "gamsa").stdout)
    assert state.stat().st_uid == uid
    key = host.path("/var/lib/gamsa/keys/agent.key")
    assert key.stat().st_uid == uid and key.stat().st_mode & 0o777 == 0o600
    assert host.path("/etc/gamsa").stat().st_mode & 0o777 == 0o750
    assert host.run("/opt/gamsa/bin/gamsa", "--version").stdout.startswith("gamsa")
    assert host.path("/etc/systemd/system/multi-user.target.wants/gamsa.service").is_symlink()


# --------------------------------------------------------------------------- the unit


def unit_settings() -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            assert key not in settings, f"{key} set twice"
            settings[key] = value
    return settings


def test_unit_is_hardened_as_documented() -> None:
    s = unit_settings()
    assert s["ExecStart"] == "/opt/gamsa/bin/gamsa agent run"
    assert (s["Type"], s["User"], s["NoNewPrivileges"]) == ("notify", "gamsa", "yes")
    assert (s["ProtectSystem"], s["ProtectHome"], s["PrivateTmp"]) == (
        "strict", "read-only", "yes")
    assert s["ReadWritePaths"] == "/var/lib/gamsa" and s["StateDirectory"] == "gamsa"
    assert s["StateDirectoryMode"] == "0700"
    caps = {"CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"}
    assert set(s["AmbientCapabilities"].split()) == caps
    assert set(s["CapabilityBoundingSet"].split()) == caps
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"
    # The agent's own SIGTERM deadline is 10 s: systemd waits longer before SIGKILL.
    assert s["TimeoutStopSec"] == "15s" and s["Restart"] == "on-failure"
    assert "WatchdogSec" in s and s["Nice"] == "10" and s["IOSchedulingClass"] == "idle"
    assert "MemoryMax" in s


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (Debian package systemd)")
def test_unit_exposure_is_low() -> None:
    """systemd's own review of the sandboxing: exposure at most 3.0 ("OK") of 10."""
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=30",
                           str(UNIT)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr


# --------------------------------------------------------------------------- build


@pytest.mark.slow
@needs_dpkg
def test_deb_has_files_conffile_and_scripts(built: Built) -> None:
    info = subprocess.run(["dpkg-deb", "--info", str(built.deb)], capture_output=True,
                          text=True, check=True).stdout
    for script in ("postinst", "prerm", "postrm", "conffiles"):
        assert f" {script} " in info.replace("\t", " "), info
    assert "Package: gamsa" in info and "Depends: python3 (>= 3.11)" in info
    conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(built.deb)],
                               capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(conffiles)) as tar:
        member = tar.extractfile("./conffiles")
        assert member is not None and member.read() == b"/etc/gamsa/agent.toml\n"
    contents = subprocess.run(["dpkg-deb", "--contents", str(built.deb)], capture_output=True,
                              text=True, check=True).stdout
    for path in ("./etc/gamsa/agent.toml", "./lib/systemd/system/gamsa.service",
                 "./opt/gamsa/share/gamsa-setup", "./opt/gamsa/wheelhouse/requirements.lock"):
        assert path in contents
    assert "./var/lib/gamsa" not in contents  # the state is made once, never shipped
    lock = (built.wheelhouse / "requirements.lock").read_text()
    for dep in ("gamsa==", "cryptography==", "boto3==", "psutil==", "watchdog=="):
        assert dep in lock
    assert lock.count("--hash=sha256:") == len(
        [p for p in built.wheelhouse.glob("*.whl") if not p.name.startswith("pip-")])


@pytest.mark.slow
def test_tarball_has_installer_and_wheelhouse(built: Built) -> None:
    with tarfile.open(built.tarball) as tar:
        names = set(tar.getnames())
        top = f"gamsa-{built.tarball.name.split('-')[1]}-offline"
        for name in ("install.sh", "gamsa-setup", "agent.toml", "gamsa.service",
                     "wheelhouse/requirements.lock"):
            assert f"{top}/{name}" in names
        assert tar.getmember(f"{top}/install.sh").mode & 0o111
        assert all(m.uid == 0 for m in tar.getmembers())


# --------------------------------------------------------------------------- install


@pytest.mark.slow
@needs_sandbox
def test_deb_installs_offline_collects_and_upgrades_keeping_the_chain(
        built: Built, host: Host) -> None:
    host.run("dpkg", "-i", str(built.deb))
    check_installed(host)
    # The unit as installed passes systemd's checks, with the real ExecStart present.
    if shutil.which("systemd-analyze"):
        host.run("systemd-analyze", "verify", "/lib/systemd/system/gamsa.service")

    first = collect_and_verify(host)
    assert first["seq"] == 1
    collectors = first["collectors"]
    assert isinstance(collectors, dict) and collectors["accounts"] == "ok"  # dac_read_search
    key = host.key_sha256()
    # The operator's config edit survives the upgrade (a conffile).
    conf = host.path("/etc/gamsa/agent.toml")
    conf.write_text(conf.read_text() + "# edited by the operator\n")

    deb2 = build(built.out, "--wheelhouse", str(built.wheelhouse), "--revision", "2")[0]
    assert "-2_" in deb2.name
    host.run("dpkg", "-i", str(deb2))
    check_installed(host)
    assert host.key_sha256() == key
    assert conf.read_text().endswith("# edited by the operator\n")
    assert len(list(host.path("/opt/gamsa").glob("venv-*"))) == 1
    second = collect_and_verify(host)
    assert second["seq"] == 2 and second["chain_id"] == first["chain_id"]

    # Purge removes the program, never the evidence, the key or the user.
    host.run("dpkg", "--purge", "gamsa")
    assert not host.path("/opt/gamsa/venv").exists()
    assert host.key_sha256() == key and host.chain()["seq"] == 2
    host.run("id", "gamsa")


@pytest.mark.slow
@needs_sandbox
def test_tarball_installs_offline_twice_keeping_key_chain_and_config(
        built: Built, host: Host, tmp_path: Path) -> None:
    with tarfile.open(built.tarball) as tar:
        tar.extractall(tmp_path / "unpacked", filter="tar")
    (install,) = (tmp_path / "unpacked").glob("*/install.sh")
    host.run(str(install))
    check_installed(host)
    assert host.path("/etc/systemd/system/gamsa.service").read_bytes() == UNIT.read_bytes()
    first = collect_and_verify(host)
    key = host.key_sha256()
    conf = host.path("/etc/gamsa/agent.toml")
    conf.write_text(conf.read_text() + "# edited by the operator\n")

    again = host.run(str(install))
    assert "agent.toml.new" in again.stderr
    check_installed(host)
    assert host.key_sha256() == key
    assert conf.read_text().endswith("# edited by the operator\n")
    second = collect_and_verify(host)
    assert (first["seq"], second["seq"]) == (1, 2)
    assert second["chain_id"] == first["chain_id"]


@pytest.mark.slow
@needs_sandbox
def test_a_tampered_wheelhouse_is_refused_and_the_installed_agent_kept(
        built: Built, host: Host, tmp_path: Path) -> None:
    """A wheel that no longer matches requirements.lock fails the install, loudly, and
    the venv already in service stays in service."""
    with tarfile.open(built.tarball) as tar:
        tar.extractall(tmp_path / "unpacked", filter="tar")
    (install,) = (tmp_path / "unpacked").glob("*/install.sh")
    host.run(str(install))
    venv = os.readlink(host.path("/opt/gamsa/venv"))
    (gamsa_wheel,) = install.parent.glob("wheelhouse/gamsa-*.whl")
    with gamsa_wheel.open("ab") as f:
        f.write(b"\0")
    failed = host.run(str(install), check=False)
    assert failed.returncode != 0
    assert "the previous install is unchanged" in failed.stderr
    assert "hash" in failed.stderr.lower()
    assert os.readlink(host.path("/opt/gamsa/venv")) == venv
    assert len(list(host.path("/opt/gamsa").glob("venv-*"))) == 1
    assert collect_and_verify(host)["seq"] == 1
