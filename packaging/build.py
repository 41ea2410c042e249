"""Build gamsa's offline installers: a wheelhouse, a .deb and a tarball.

    python packaging/build.py [--out dist] [--wheelhouse DIR] [--revision N] [--constraint FILE]

At build time (network, the package registry) `pip wheel` collects gamsa and every
runtime dependency as wheels, and `requirements.lock` pins each one by version and
SHA-256. The installers need no network: `pip install --no-index --require-hashes`
from that wheelhouse (docs/OPERATIONS.md, "Install"). Binary wheels are for the
building Python and CPU: build on the target's Debian release (or its Python minor).

Exit codes: 0 built, 2 usage, 3 a tool failed (its output is shown).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SETUP_FILES = ("gamsa-setup", "agent.toml", "gamsa.service", "install.sh")
MAINTAINER_SCRIPTS = ("postinst", "prerm", "postrm")


class BuildError(Exception):
    """A step failed; the message is one line."""


@dataclass(frozen=True)
class Wheel:
    """One wheel of the wheelhouse, as its file name and hash say."""

    path: Path
    name: str
    version: str
    python_tag: str
    abi_tag: str
    sha256: str


def project_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BuildError(f"{' '.join(argv[:3])} failed (exit {done.returncode}):\n"
                         f"{done.stdout[-2000:]}{done.stderr[-4000:]}")
    return done.stdout


def read_wheel(path: Path) -> Wheel:
    # PEP 427: {name}-{version}(-{build})?-{python}-{abi}-{platform}.whl
    parts = path.name[:-len(".whl")].split("-")
    if len(parts) not in (5, 6):
        raise BuildError(f"{path}: not a wheel file name")
    name = re.sub(r"[-_.]+", "-", parts[0]).lower()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Wheel(path, name, parts[1], parts[-3], parts[-2], digest)


def build_wheelhouse(dest: Path, constraint: Path | None) -> None:
    """gamsa and its dependency closure as wheels, plus pip (run from its wheel)."""
    dest.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
            "--wheel-dir", str(dest), str(REPO), "pip"]
    if constraint is not None:
        argv += ["--constraint", str(constraint)]
    run(argv)


def write_lock(wheelhouse: Path) -> list[Wheel]:
    """requirements.lock: every wheel but pip, pinned by version and hash."""
    wheels = sorted((read_wheel(p) for p in wheelhouse.glob("*.whl")), key=lambda w: w.name)
    names = [w.name for w in wheels]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BuildError(f"{wheelhouse}: more than one wheel of {', '.join(dupes)}; "
                         "start from an empty wheelhouse")
    if "gamsa" not in names or "pip" not in names:
        raise BuildError(f"{wheelhouse}: no gamsa or no pip wheel; rebuild the wheelhouse")
    lines = [f"{w.name}=={w.version} --hash=sha256:{w.sha256}" for w in wheels
             if w.name != "pip"]
    (wheelhouse / "requirements.lock").write_text(
        "# Offline install pins (packaging/build.py): pip install --no-index "
        "--require-hashes -r requirements.lock\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return wheels


def python_depends(wheels: list[Wheel]) -> str:
    """python3 >= 3.11; wheels built for one CPython ABI (not abi3) bound it from above."""
    minors = {int(m.group(1)) for w in wheels
              for m in [re.fullmatch(r"cp3(\d+)", w.abi_tag)] if m}
    if len(minors) > 1:
        raise BuildError(f"wheels for several Python versions: 3.{sorted(minors)}")
    if minors:
        minor = minors.pop()
        return f"python3 (>= 3.{minor}), python3 (<< 3.{minor + 1})"
    return "python3 (>= 3.11)"


def stage_payload(root: Path, wheelhouse: Path) -> None:
    """The files both installers put on the host, laid out as on the host."""
    share = root / "opt/gamsa/share"
    share.mkdir(parents=True)
    shutil.copytree(wheelhouse, root / "opt/gamsa/wheelhouse")
    for name, mode in (("gamsa-setup", 0o755), ("agent.toml", 0o644)):
        shutil.copyfile(HERE / name, share / name)
        (share / name).chmod(mode)
    shutil.copyfile(REPO / "docs/OPERATIONS.md", share / "OPERATIONS.md")


def build_deb(wheelhouse: Path, wheels: list[Wheel], out: Path, revision: str) -> Path:
    version = f"{project_version()}-{revision}"
    arch = run(["dpkg", "--print-architecture"]).strip()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        stage_payload(root, wheelhouse)
        (root / "etc/gamsa").mkdir(parents=True)
        shutil.copyfile(HERE / "agent.toml", root / "etc/gamsa/agent.toml")
        (root / "etc/gamsa/agent.toml").chmod(0o640)
        (root / "lib/systemd/system").mkdir(parents=True)
        shutil.copyfile(HERE / "gamsa.service", root / "lib/systemd/system/gamsa.service")
        for d in root.rglob("*"):
            if d.is_dir():
                d.chmod(0o755)
        debian = root / "DEBIAN"
        debian.mkdir(mode=0o755)
        size_kib = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) // 1024
        (debian / "control").write_text(
            f"Package: gamsa\nVersion: {version}\nArchitecture: {arch}\n"
            "Maintainer: gamsa maintainers <gamsa@localhost>\n"
            f"Installed-Size: {size_kib}\n"
            f"Depends: {python_depends(wheels)}, passwd, util-linux\n"
            "Section: admin\nPriority: optional\n"
            "Description: audit-evidence collector for banks (offline install)\n"
            " Gathers host configuration and access evidence, seals it (RFC 8785, RFC 9162,\n"
            " Ed25519 DSSE) and ships it to a write-once store. Installs into /opt/gamsa\n"
            " from a bundled, hash-pinned wheelhouse: no network needed.\n",
            encoding="utf-8")
        (debian / "conffiles").write_text("/etc/gamsa/agent.toml\n", encoding="utf-8")
        for name in MAINTAINER_SCRIPTS:
            shutil.copyfile(HERE / "deb" / name, debian / name)
            (debian / name).chmod(0o755)
        out.mkdir(parents=True, exist_ok=True)
        deb = out / f"gamsa_{version}_{arch}.deb"
        run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(deb)])
    return deb


def build_tarball(wheelhouse: Path, out: Path) -> Path:
    top = f"gamsa-{project_version()}-offline"
    tarball = out / f"{top}.tar.gz"
    out.mkdir(parents=True, exist_ok=True)

    def owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    with tarfile.open(tarball, "w:gz") as tar:
        for name in (*SETUP_FILES, "OPERATIONS.md"):
            src = REPO / "docs" / name if name == "OPERATIONS.md" else HERE / name
            data = src.read_bytes()
            info = owned_by_root(tarfile.TarInfo(f"{top}/{name}"))
            info.size = len(data)
            info.mode = 0o755 if name in ("install.sh", "gamsa-setup") else 0o644
            tar.addfile(info, io.BytesIO(data))
        tar.add(wheelhouse, arcname=f"{top}/wheelhouse", filter=owned_by_root)
    return tarball


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist")
    parser.add_argument("--wheelhouse", type=Path, default=None,
                        help="reuse this wheelhouse (no network); default: build one in OUT")
    parser.add_argument("--revision", default="1", help="Debian revision (default 1)")
    parser.add_argument("--constraint", type=Path, default=None,
                        help="pip constraints file pinning dependency versions")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[0-9A-Za-z.+~]+", args.revision):
        print(f"build.py: error: --revision {args.revision!r}: use digits, letters, . + ~",
              file=sys.stderr)
        return 2
    for tool in ("dpkg-deb", "dpkg"):
        if shutil.which(tool) is None:
            print(f"build.py: error: {tool} not found (Debian package dpkg)", file=sys.stderr)
            return 2
    try:
        wheelhouse = args.wheelhouse
        if wheelhouse is None:
            wheelhouse = args.out / "wheelhouse"
            shutil.rmtree(wheelhouse, ignore_errors=True)
            build_wheelhouse(wheelhouse, args.constraint)
        elif not wheelhouse.is_dir():
            print(f"build.py: error: --wheelhouse {wheelhouse}: not a directory", file=sys.stderr)
            return 2
        wheels = write_lock(wheelhouse)
        print(build_deb(wheelhouse, wheels, args.out, args.revision))
        print(build_tarball(wheelhouse, args.out))
    except (BuildError, OSError) as e:
        print(f"build.py: error: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
