"""The `files` collector on trees built in tmp_path (exact records) and on this machine.

Trees are built per test rather than stored under tests/assets: git cannot hold a
FIFO, a symlink loop is awkward in a checkout, and inode numbers differ anyway.
The tests run as root here, so "unreadable" uses conditions that fail for root too
(a path component that is a file, a symlink loop, a write-only sysctl).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from collector.files import (
    CACHE_FILE,
    COLLECTOR,
    DEFAULT_PATHS,
    Limits,
    ScanResult,
    _read_regular,
    scan,
)
from collector.registry import CollectContext, run_collector
from tests.collector.test_contract import contract_violations, expected_status

MTIME_NS = 1_700_000_000_123_456_789
MTIME = "2023-11-14T22:13:20.123456Z"
SECRET = "Hunter2Secret"
APP_CONF = f"listen = 8080\npassword={SECRET}\n"
BLOB = b"\x7fELF\x00\x01\x02 binary"
BIG = "x = 1\n" * 40  # 240 bytes, over the 100-byte cap used below
NOT_RACY = Limits(racy_ns=0)  # files made by a test are seconds old at most


def run(root: Path, paths: list[str], state_dir: Path | None = None,
        limits: Limits = NOT_RACY, **options: Any) -> ScanResult:
    ctx = CollectContext(root=root, options={"files": {"paths": paths, **options}},
                         state_dir=state_dir)
    return scan(ctx, limits)


def triples(result: ScanResult) -> list[tuple[str, str, dict[str, Any]]]:
    return [(r.type, r.key, r.data) for r in result.records]


def sha(raw: bytes | str) -> str:
    return hashlib.sha256(raw.encode() if isinstance(raw, str) else raw).hexdigest()


def entry(root: Path, host_path: bytes, kind: str, mode: str, **fields: Any) -> dict[str, Any]:
    """The record data expected for `host_path`; inode, device and directory sizes
    are the only values taken from lstat."""
    st = os.lstat(os.fsencode(root) + host_path)
    try:
        path: Any = host_path.decode()
    except UnicodeDecodeError:
        path = {"b64": base64.b64encode(host_path).decode()}
    data = {"path": path, "kind": kind, "size": st.st_size, "mode": mode,
            "uid": os.getuid(), "gid": os.getgid(), "owner": "tester", "group": "testers",
            "mtime": MTIME, "inode": str(st.st_ino), "device": str(st.st_dev),
            "sha256": None, "hash_omitted_reason": None, "symlink_target": None,
            "content": None, "content_redactions": 0, "content_omitted_reason": None,
            "secret_file_rule": None}
    data.update(fields)
    return data


def make_tree(root: Path) -> None:
    """etc/app with one of each thing the collector must handle."""
    etc = root / "etc"
    app = etc / "app"
    (app / "sub" / "deep").mkdir(parents=True)
    # names come from the tree's own passwd/group, not this machine's
    (etc / "passwd").write_text(f"tester:x:{os.getuid()}:{os.getgid()}::/:/bin/sh\n")
    (etc / "group").write_text(f"testers:x:{os.getgid()}:\n")
    (app / "app.conf").write_text(APP_CONF)
    (app / "blob.bin").write_bytes(BLOB)
    (app / "big.conf").write_text(BIG)
    (app / "link").symlink_to("app.conf")
    (app / "loop_a").symlink_to("loop_b")
    (app / "loop_b").symlink_to("loop_a")
    os.mkfifo(app / "fifo")
    with open(os.fsencode(app) + b"/caf\xe9.conf", "wb") as f:
        f.write(b"x=1\n")
    (app / "sub" / "deep" / "d.conf").write_text("d\n")
    (app / "sub" / "up").symlink_to("..")  # a directory symlink to its parent
    for path in [*app.rglob("*"), app]:
        os.utime(path, ns=(MTIME_NS, MTIME_NS), follow_symlinks=False)
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o640)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    make_tree(root)
    return root


@pytest.mark.timeout(10)
def test_exact_records(tree: Path) -> None:
    result = run(tree, ["/etc/app/**", "/etc/missing/*.conf", "/etc/app/*.conf",
                        "relative/path"], content_max_bytes=100)
    e = lambda *a, **k: entry(tree, *a, **k)  # noqa: E731
    cafe = b"/etc/app/caf\xe9.conf"
    cafe_key = "b64:" + base64.b64encode(cafe).decode()
    assert triples(result) == [
        ("file", "/etc/app", e(b"/etc/app", "dir", "0755")),
        ("file", "/etc/app/app.conf",
         e(b"/etc/app/app.conf", "file", "0640", sha256=sha(APP_CONF),
           content="listen = 8080\npassword=[REDACTED:named_secret]\n",
           content_redactions=1)),
        ("file", "/etc/app/big.conf",
         e(b"/etc/app/big.conf", "file", "0640", sha256=sha(BIG),
           content_omitted_reason="over_cap")),
        ("file", "/etc/app/blob.bin",
         e(b"/etc/app/blob.bin", "file", "0640", sha256=sha(BLOB),
           content_omitted_reason="binary")),
        ("file", cafe_key, e(cafe, "file", "0640", sha256=sha("x=1\n"), content="x=1\n")),
        ("file", "/etc/app/fifo", e(b"/etc/app/fifo", "fifo", "0640")),
        ("file", "/etc/app/link",
         e(b"/etc/app/link", "symlink", "0777", symlink_target="app.conf")),
        ("file", "/etc/app/loop_a",
         e(b"/etc/app/loop_a", "symlink", "0777", symlink_target="loop_b")),
        ("file", "/etc/app/loop_b",
         e(b"/etc/app/loop_b", "symlink", "0777", symlink_target="loop_a")),
        ("file", "/etc/app/sub", e(b"/etc/app/sub", "dir", "0755")),
        ("file", "/etc/app/sub/deep", e(b"/etc/app/sub/deep", "dir", "0755")),
        ("file", "/etc/app/sub/deep/d.conf",
         e(b"/etc/app/sub/deep/d.conf", "file", "0640", sha256=sha("d\n"), content="d\n")),
        ("file", "/etc/app/sub/up", e(b"/etc/app/sub/up", "symlink", "0777",
                                      symlink_target="..")),
        ("no_match", "/etc/missing/*.conf",
         {"pattern": "/etc/missing/*.conf", "reason": "nothing matched"}),
        ("no_match", "relative/path",
         {"pattern": "relative/path", "reason": "not an absolute path"}),
    ]
    assert SECRET not in json.dumps([r.to_json("h") for r in result.records])


def test_records_keep_the_contract(tree: Path) -> None:
    result = run_collector(COLLECTOR, CollectContext(root=tree, options={
        "files": {"paths": ["/etc/**", "/nope", "/etc/app/app.conf/x"]}}))
    assert result.status == expected_status(result.records), result.error
    assert [p for r in result.records for p in contract_violations(COLLECTOR, r)] == []


def keys(result: ScanResult, kind: str = "file") -> list[str]:
    return [r.key for r in result.records if r.type == kind]


def test_globs(tree: Path) -> None:
    (tree / "etc" / "top.conf").write_text("t\n")
    (tree / "etc" / ".hidden.conf").write_text("h\n")
    # `**` in the middle: zero or more directories, never through the `up` symlink
    assert keys(run(tree, ["/etc/**/*.conf"])) == [
        "/etc/.hidden.conf", "/etc/app/app.conf", "/etc/app/big.conf",
        "b64:" + base64.b64encode(b"/etc/app/caf\xe9.conf").decode(),
        "/etc/app/sub/deep/d.conf", "/etc/top.conf"]
    # a wildcard component; a matched directory stands for everything under it
    assert keys(run(tree, ["/etc/*/sub"])) == [
        "/etc/app/sub", "/etc/app/sub/deep", "/etc/app/sub/deep/d.conf", "/etc/app/sub/up"]
    assert keys(run(tree, ["/etc/app/[ab]??.conf", "/etc/app/big.conf",
                           "/etc/app/./b?g.conf/"])) == [
        "/etc/app/app.conf", "/etc/app/big.conf"]
    # a literal path that is a symlink is recorded, not followed into
    assert keys(run(tree, ["/etc/app/sub/up"])) == ["/etc/app/sub/up"]


def test_unreadable_paths_fail_for_root_too(tree: Path) -> None:
    patterns = ["/etc/app/app.conf/x", "/etc/app/loop_a/*", "/etc/app/app.conf/*"]
    assert triples(run(tree, patterns)) == [
        ("source_unreadable", "/etc/app/app.conf",
         {"path": "/etc/app/app.conf", "reason": "NotADirectoryError: Not a directory"}),
        ("source_unreadable", "/etc/app/app.conf/x",
         {"path": "/etc/app/app.conf/x", "reason": "NotADirectoryError: Not a directory"}),
        ("source_unreadable", "/etc/app/loop_a",
         {"path": "/etc/app/loop_a", "reason": "OSError: Too many levels of symbolic links"}),
        *[("no_match", p, {"pattern": p, "reason": "nothing matched"}) for p in patterns],
    ]


def test_unreadable_regular_file(tmp_path: Path) -> None:
    """chmod 000 stops only a non-root user; as root, a write-only sysctl does
    (procfs checks its mode bits for root too)."""
    if os.geteuid() != 0:
        (tmp_path / "secret").write_text("s\n")
        (tmp_path / "secret").chmod(0)
        root, path = tmp_path, "/secret"
    else:
        root, path = Path("/"), "/proc/sys/vm/drop_caches"
        try:
            with open(path, "rb"):
                pytest.skip(f"{path} is readable here")
        except FileNotFoundError:
            pytest.skip(f"no {path}")
        except PermissionError:
            pass
    result = run(root, [path])
    (record,) = [r for r in result.records if r.type == "file"]
    assert (record.data["kind"], record.data["sha256"], record.data["hash_omitted_reason"],
            record.data["content_omitted_reason"]) == ("file", None, "unreadable", "unreadable")
    assert [(r.type, r.key, r.data) for r in result.records if r.type != "file"] == [
        ("source_unreadable", path,
         {"path": path, "reason": "PermissionError: Permission denied"})]


@pytest.mark.timeout(10)
def test_file_swapped_after_lstat(tmp_path: Path) -> None:
    """A FIFO or symlink put in place of a regular file between lstat and open is
    neither opened blocking nor followed; a file that grew is not half-hashed."""
    path = tmp_path / "f"
    path.write_text("abc\n")
    before = os.lstat(path)
    os.link(path, tmp_path / "keep")  # so the inode number is not reused below
    path.unlink()
    os.mkfifo(path)
    assert _read_regular(os.fsencode(path), before, True).changed
    path.unlink()
    path.symlink_to("/etc/hostname")
    assert _read_regular(os.fsencode(path), before, False).changed
    path.unlink()
    (tmp_path / "g").write_text("xyz\n")  # same size, another inode
    os.replace(tmp_path / "g", path)
    assert _read_regular(os.fsencode(path), before, True).changed
    path.unlink()
    path.write_text("abc\n")
    same = os.lstat(path)
    with open(path, "a") as f:
        f.write("more\n")
    assert _read_regular(os.fsencode(path), same, True).changed
    assert _read_regular(os.fsencode(path), same, False).changed
    grown = os.lstat(path)
    assert _read_regular(os.fsencode(path), grown, False).digest == sha("abc\nmore\n")


@pytest.mark.timeout(20)
def test_sparse_10_gb_file_is_bounded(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with open(data / "disk.img", "wb") as f:
        f.truncate(10 * 1024**3)
    (data / "small.conf").write_text("a = 1\n")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    result = run(tmp_path, ["/data/*"])
    elapsed = time.monotonic() - started
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    big = next(r.data for r in result.records if r.key == "/data/disk.img")
    assert (big["size"], big["sha256"], big["hash_omitted_reason"], big["content"],
            big["content_omitted_reason"]) == (10737418240, None, "over_hash_cap", None,
                                               "over_cap")
    assert result.stats.bytes_read == len("a = 1\n")  # the image was never read
    assert elapsed < 5
    assert grown_kib < 50 * 1024


def test_hash_cap_option(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"0123456789")
    over = run(tmp_path, ["/f"], content_max_bytes=0, hash_max_bytes=9).records[0].data
    under = run(tmp_path, ["/f"], content_max_bytes=0, hash_max_bytes=10).records[0].data
    assert (over["sha256"], over["hash_omitted_reason"]) == (None, "over_hash_cap")
    assert (under["sha256"], under["hash_omitted_reason"]) == (sha(b"0123456789"), None)


def test_size_beyond_safe_integers_is_a_string(tmp_path: Path) -> None:
    size = 2**54
    for directory in (tmp_path, Path("/dev/shm")):  # ext4 stops at 16 TiB, tmpfs does not
        if not directory.is_dir():
            continue
        with tempfile.TemporaryDirectory(dir=directory) as place:
            try:
                with open(Path(place) / "huge", "wb") as f:
                    f.truncate(size)
            except OSError:
                continue
            record = run(Path(place), ["/huge"]).records[0]
            assert (record.data["size"], record.data["hash_omitted_reason"]) == \
                (str(size), "over_hash_cap")
            return
    pytest.skip("no file system here takes a 16 PiB sparse file")


def test_limits(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    for name in "abcde":
        (tmp_path / "d" / name).write_text(name)
    (tmp_path / "deep" / "1" / "2" / "3").mkdir(parents=True)
    many = run(tmp_path, ["/d/*", "/d/?"], limits=Limits(max_matches=3))
    assert keys(many) == ["/d/a", "/d/b", "/d/c"]
    assert triples(many)[3:] == [
        ("truncated", p, {"pattern": p, "reasons": ["max_matches"], "max_matches": 3,
                          "max_depth": 64}) for p in ("/d/*", "/d/?")]
    deep = run(tmp_path, ["/deep"], limits=Limits(max_depth=1))
    # /deep/1 is entered (depth 1), /deep/1/2 is listed but not entered
    assert keys(deep) == ["/deep", "/deep/1", "/deep/1/2"]
    assert triples(deep)[3:] == [
        ("truncated", "/deep", {"pattern": "/deep", "reasons": ["max_depth"],
                                "max_matches": 100_000, "max_depth": 1})]


def test_hash_cache(tmp_path: Path) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    contents = {name: os.urandom(300_000 if name == "big" else 2000)
                for name in ("a", "b", "c", "big")}
    for name, raw in contents.items():
        (root / name).write_bytes(raw)

    def collect() -> ScanResult:
        # content_max_bytes 0: these files are hashed, never read for content
        return run(root, ["/*"], state_dir=state, content_max_bytes=0,
                   limits=Limits(threads=2, racy_ns=0))

    first = collect()
    assert (first.stats.files_read, first.stats.bytes_read, first.stats.cache_hits) == \
        (4, sum(map(len, contents.values())), 0)
    assert {r.key: r.data["sha256"] for r in first.records} == \
        {f"/{n}": sha(raw) for n, raw in contents.items()}
    cached = json.loads((state / CACHE_FILE).read_text())["entries"]
    assert sorted(cached.values()) == sorted(sha(raw) for raw in contents.values())

    second = collect()
    assert (second.stats.files_read, second.stats.cache_hits) == (0, 4)
    assert [(r.key, r.data) for r in second.records] == [(r.key, r.data) for r in first.records]

    # same size, mtime put back: only the ctime tells, and it is in the key (the
    # sleep stands in for the racy-window rule this test turns off)
    time.sleep(0.05)
    original = os.lstat(root / "b")
    (root / "b").write_bytes(b"B" * 2000)
    os.utime(root / "b", ns=(original.st_atime_ns, original.st_mtime_ns))
    (root / "c").unlink()
    third = collect()
    assert (third.stats.files_read, third.stats.cache_hits) == (1, 2)
    assert {r.key: r.data["sha256"] for r in third.records}["/b"] == sha(b"B" * 2000)
    assert len(json.loads((state / CACHE_FILE).read_text())["entries"]) == 3  # pruned


def test_recently_changed_files_are_not_cached(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 100)
    state = tmp_path / "state"
    for _ in range(2):
        result = run(tmp_path, ["/f"], state_dir=state, content_max_bytes=0,
                     limits=Limits())  # default: a file changed within 1 s is racy
        assert (result.stats.files_read, result.stats.cache_hits) == (1, 0)
    assert not (state / CACHE_FILE).exists()


def test_damaged_cache_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 100)
    (tmp_path / "state" / "cache").mkdir(parents=True)
    for damage in ("not json", '{"version": 1, "entries": []}', "[]"):
        (tmp_path / "state" / CACHE_FILE).write_text(damage)
        result = run(tmp_path, ["/f"], state_dir=tmp_path / "state", content_max_bytes=0)
        assert result.records[0].data["sha256"] == sha(b"x" * 100)


def test_bad_options_are_a_collector_error(tmp_path: Path) -> None:
    for options in ({"paths": "/etc/hosts"}, {"content_max_bytes": "64k"},
                    {"hash_max_bytes": -1}):
        result = run_collector(COLLECTOR, CollectContext(root=tmp_path,
                                                         options={"files": options}))
        assert result.status == "error"
        assert result.records[-1].type == "collector_error"


def test_threads_give_the_same_records(tree: Path) -> None:
    big = tree / "etc" / "app" / "sub" / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 7))  # hashed in the pool
    one = run(tree, ["/etc"], limits=Limits(threads=1, racy_ns=0))
    four = run(tree, ["/etc"], limits=Limits(threads=4, racy_ns=0))
    assert [(r.key, r.data) for r in one.records] == [(r.key, r.data) for r in four.records]
    assert next(r.data["sha256"] for r in four.records if r.key.endswith("big.bin")) == \
        sha(big.read_bytes())


def test_live_default_paths() -> None:
    result = run_collector(COLLECTOR, CollectContext())
    assert result.status == expected_status(result.records), result.error
    assert not [r for r in result.records if r.type == "collector_error"]
    absent = {r.key for r in result.records if r.type == "no_match"}
    assert absent <= set(DEFAULT_PATHS)
    files = {r.key: r.data for r in result.records if r.type == "file"}
    for literal in (p for p in DEFAULT_PATHS if "*" not in p):
        assert (literal in files) != (literal in absent), literal
        assert (literal in files) == os.path.lexists(literal), literal
    if os.path.isfile("/etc/hosts") and not os.path.islink("/etc/hosts"):
        hosts = files["/etc/hosts"]
        assert hosts["sha256"] == sha(Path("/etc/hosts").read_bytes())
        assert hosts["owner"] is not None and hosts["mode"].isdigit()


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="sha256sum not installed")
def test_live_tree_matches_sha256sum(tmp_path: Path) -> None:
    import subprocess

    target = Path(json.__file__).parent  # stable system files, several over 64 KiB
    result = run(Path("/"), [f"{target}/*.py"], content_max_bytes=0)
    out = subprocess.run(["sha256sum", *sorted(str(p) for p in target.glob("*.py"))],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    expected = {line.split("  ", 1)[1]: line.split()[0] for line in out.splitlines()}
    assert {r.key: r.data["sha256"] for r in result.records} == expected


def test_files_secret_by_nature_keep_hash_and_metadata_only(tmp_path: Path) -> None:
    """Whatever `paths` says, shadow, keys and credential stores are never captured:
    content null, `secret_file` with the rule that matched, the hash still there."""
    pem = ("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIKeyMaterialZq8\n"
           "-----END PRIVATE KEY-----\n")
    files = {
        "etc/shadow": ("root:$6$salt$HashHashHash:19700:0:99999:7:::\n", "shadow"),
        "etc/ssl/private/web.pem": (pem, "/etc/ssl/private/*"),
        "etc/app/tls.key": (pem, "*.key"),
        "etc/app/renamed.conf": (pem, "content: a PEM private key"),
        "home/u/.pgpass": ("db:5432:core:app:PgPassZq8\n", ".pgpass"),
        "home/u/.aws/credentials": ("[default]\naws_secret_access_key = Zq8\n",
                                    "*/.aws/credentials"),
        "home/u/.ssh/id_ed25519": (pem, "id_ed25519"),
        "etc/krb5.keytab": ("\x05\x02binary", "*.keytab"),
    }
    for name, (text, _rule) in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "etc/app/plain.conf").write_text("password_min_length = 12\n")
    odd = os.fsencode(tmp_path) + b"/home/caf\xe9"
    os.mkdir(odd)
    with open(odd + b"/.pgpass", "wb") as f:
        f.write(b"db:5432:core:app:PgPassNonUtf8\n")
    result = run(tmp_path, ["/etc/**", "/home/**"])
    by_key = {r.key: r.data for r in result.records if r.type == "file"}
    for name, (text, rule) in files.items():
        data = by_key["/" + name]
        assert (data["content"], data["content_omitted_reason"], data["secret_file_rule"],
                data["sha256"]) == (None, "secret_file", rule, sha(text)), name
    plain = by_key["/etc/app/plain.conf"]
    assert (plain["content"], plain["secret_file_rule"]) == ("password_min_length = 12\n", None)
    odd_key = "b64:" + base64.b64encode(b"/home/caf\xe9/.pgpass").decode()
    assert (by_key[odd_key]["content"], by_key[odd_key]["secret_file_rule"]) == (None, ".pgpass")
    sealed = json.dumps([r.data for r in result.records]).encode()
    assert b"KeyMaterialZq8" not in sealed and b"PgPassNonUtf8" not in sealed
