"""`gamsa report` over a real pulled mirror (tests/agent/report_fixtures.py), and the
page in headless Chromium: no console error, no network request, the planted gap
drawn in the right host's row, evidence rendered as text."""

from __future__ import annotations

import base64
import http.server
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.report_svg import GAP_COLOUR
from tests.agent.chromium import chromium_path, open_page
from tests.agent.png import read_png
from tests.agent.report_fixtures import (
    GAP_HOST,
    GAP_SEQ,
    PLANTED,
    SPIKE_MONTH,
    ReportMirror,
    make_report_mirror,
)
from tests.conftest import GamsaEnv

pytestmark = pytest.mark.slow
needs_chromium = pytest.mark.skipif(chromium_path() is None,
                                    reason="Debian's chromium is not installed "
                                           "(apt-get install chromium; .ci/run does)")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> ReportMirror:
    root = tmp_path_factory.mktemp("report")
    env = GamsaEnv(root, root / "agent.toml", root / "state", root / "store")
    env.write_config()
    return make_report_mirror(env, root)


@pytest.fixture(scope="module")
def page(made: ReportMirror, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("html") / "report.html"
    result = made.env.run("report", "--mirror", str(made.mirror), "--html", str(out))
    assert result.returncode == 0, result.stderr
    return out


def report_json(made: ReportMirror, out: Path, *args: str) -> dict[str, object]:
    result = made.env.run("report", "--mirror", str(made.mirror), "--html", str(out),
                          "--json", *args)
    assert result.returncode == 0, result.stderr
    summary: dict[str, object] = json.loads(result.stdout)
    return summary


def test_the_report_counts_what_the_mirror_holds(made: ReportMirror, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    summary = report_json(made, out)
    assert (summary["hosts"], summary["bundles"], summary["gaps"]) == (2, 7, 1)
    assert (summary["silences"], summary["breaks"], summary["not_fully_collected"]) == (0, 0, 1)
    assert summary["access_anomalies"] == 2  # logins in the spike month: host-a and fleet
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o640
    html = out.read_text()
    assert f"host {GAP_HOST} chain" in html and f"seq {GAP_SEQ} missing" in html
    assert "lee" in html and "/etc/sudoers" in html and SPIKE_MONTH in html
    later = report_json(made, tmp_path / "later.html", "--as-of", "2099-01-01T00:00:00Z")
    assert later["silences"] == 2
    only_a = report_json(made, tmp_path / "a.html", "--host", "host-a")
    assert (only_a["hosts"], only_a["gaps"], only_a["ai_egress_rows"]) == (1, 0, 0)
    again = made.env.run("report", "--mirror", str(made.mirror), "--html", str(out))
    assert again.returncode == 2 and "exists" in again.stderr
    before = out.stat().st_ino
    assert made.env.run("report", "--mirror", str(made.mirror), "--html", str(out),
                        "--replace").returncode == 0
    assert out.stat().st_ino != before  # renamed over, never written in place


def test_the_mirror_finds_a_hosts_bundles_at_a_seq(made: ReportMirror) -> None:
    from agent.mirror import open_mirror

    view = open_mirror(made.mirror)
    assert [b.seq for b in view.bundles_at(GAP_HOST, GAP_SEQ - 1)] == [GAP_SEQ - 1]
    assert view.bundles_at(GAP_HOST, GAP_SEQ) == []  # the removed one
    assert view.bundles_at("host-a", GAP_SEQ + 1) == []


def test_bundles_not_read_or_held_in_quarantine_are_said_and_exit_1(
        made: ReportMirror, tmp_path: Path) -> None:
    import shutil

    mirror = tmp_path / "copy"
    shutil.copytree(made.mirror, mirror)
    records = sorted((mirror / "v1" / "host=host-a").rglob("*.records.jsonl.gz"))[0]
    records.write_bytes(b"not gzip")
    # host-a's newest manifest with a predicate the typed model rejects (signature aside:
    # the mirror is not verified again)
    bad = sorted((mirror / "v1" / "host=host-a").rglob("*.manifest.dsse.json"))[-1]
    envelope = json.loads(bad.read_bytes())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["chain"]["seq"] = "2"
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    bad.chmod(0o644)
    bad.write_text(json.dumps(envelope))
    # host-b's newest bundle as `gamsa pull` quarantines one: objects, then findings.json
    manifest = sorted((mirror / "v1" / f"host={GAP_HOST}").rglob("*.manifest.dsse.json"))[-1]
    stem = manifest.relative_to(mirror).as_posix().removesuffix(".manifest.dsse.json")
    held = mirror / "quarantine" / stem
    held.mkdir(parents=True)
    for path in manifest.parent.glob(manifest.name.split("-")[0] + "-*"):
        path.rename(held / path.name)
    (held / "findings.json").write_text(json.dumps({"key": stem, "findings": [
        {"key": f"{stem}.records.jsonl.gz", "code": "digest_mismatch", "message": "x",
         "severity": "error"}]}))
    out = tmp_path / "r.html"
    result = made.env.run("report", "--mirror", str(mirror), "--html", str(out), "--json")
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    unreadable = {u["object"]: u["error"] for u in summary["unreadable"]}
    assert {key.split("/")[1] for key in unreadable} == {"host=host-a"} and len(unreadable) == 2
    assert unreadable[bad.relative_to(mirror).as_posix()] == (
        f"{bad}: unreadable manifest (predicate.chain.seq is not an integer)")
    assert summary["quarantined"] == [{"object": f"{stem}.manifest.dsse.json",
                                       "findings": "digest_mismatch"}]
    page = out.read_text()
    assert "could not be read" in page and "held in quarantine" in page
    result = made.env.run("report", "--mirror", str(mirror), "--html", str(tmp_path / "b"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "not read:" in result.stderr and "held in quarantine:" in result.stderr


@needs_chromium
def test_the_page_in_chromium_draws_the_gap_for_its_host(page: Path, tmp_path: Path) -> None:
    loaded = open_page(page.as_uri(), tmp_path / "profile",
                       ("[data-kind=gap]", "g.host-row"), shot="svg.timeline")
    assert loaded.requests == [] and loaded.errors == []
    gaps = [(g.get("data-host"), g.get("data-seq")) for g in _elements(loaded.dom, "gap")]
    assert gaps == [(GAP_HOST, str(GAP_SEQ))]
    assert "<script" not in loaded.dom  # the planted process name is text, not an element
    assert PLANTED.replace("<", "&lt;").replace(">", "&gt;") in loaded.dom
    image = read_png(loaded.png)
    rows = {host: box for host, box in zip(("host-a", "host-b"), loaded.boxes["g.host-row"],
                                           strict=True)}
    red = tuple(int(GAP_COLOUR[i:i + 2], 16) for i in (1, 3, 5))
    ox, oy = loaded.png_origin

    def gap_pixels(host: str) -> int:
        box = rows[host]
        top, bottom = int(box["y"] - oy) + 1, int(box["y"] - oy + box["height"]) - 1
        return sum(1 for y in range(top, bottom) for x in range(image.width)
                   if all(abs(a - b) <= 8 for a, b in zip(image.pixel(x, y), red, strict=True)))

    assert gap_pixels(GAP_HOST) >= 5 * 18  # at least MIN_MARK_WIDTH - 1 columns, full height
    assert gap_pixels("host-a") == 0
    assert int(ox) >= 0


def _elements(dom: str, kind: str) -> list[dict[str, str]]:
    """Attributes of the elements with data-kind=`kind` in a serialized DOM."""
    import html.parser

    found: list[dict[str, str]] = []

    class Parser(html.parser.HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            values = {k: v or "" for k, v in attrs}
            if values.get("data-kind") == kind:
                found.append(values)

    Parser().feed(dom)
    return found


@pytest.fixture
def listener() -> Iterator[tuple[int, list[str]]]:
    """A local HTTP server that records every request it gets."""
    got: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            got.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield server.server_address[1], got
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@needs_chromium
def test_a_planted_request_is_caught_with_and_without_the_policy(
        page: Path, tmp_path: Path, listener: tuple[int, list[str]]) -> None:
    port, got = listener
    html = page.read_text()
    planted = tmp_path / "planted.html"
    planted.write_text(html.replace("</body>", f'<img src="http://127.0.0.1:{port}/csp">'
                                               f"</body>"))
    loaded = open_page(planted.as_uri(), tmp_path / "p1")
    assert loaded.requests == [f"http://127.0.0.1:{port}/csp"]
    assert any("Content Security Policy" in e for e in loaded.errors), loaded.errors
    assert got == []  # the policy stopped it before it left
    open_page_without_policy = tmp_path / "open.html"
    open_page_without_policy.write_text(
        planted.read_text().replace('http-equiv="Content-Security-Policy"', 'name="x"')
        .replace("/csp", "/open"))
    loaded = open_page(open_page_without_policy.as_uri(), tmp_path / "p2")
    assert loaded.requests == [f"http://127.0.0.1:{port}/open"]
    assert got == ["/open"]  # what the check reports is what really left the browser
