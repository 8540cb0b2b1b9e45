"""What users see after a migration: report (terminal, --json, report.html in real headless
Chromium), history, and the --json of migrate and serve status. Real conda 25.11.1 migrations."""
import json
import os
import struct
import subprocess
import zlib

import pytest

from conftest import ROOT, attempt_dirs, find_python, run_pm
from servers import Server

with open(os.path.join(ROOT, "examples", "heatsim-tests.ini")) as _handle:
    CONFIG = _handle.read()


def write_config(tmp_path, text):
    path = tmp_path / "tests.ini"
    path.write_text(text.format(out=str(tmp_path / "installed")))
    return str(path)


@pytest.fixture
def two_attempts(pyz, conda_site, heatsim_bundle, tmp_path):
    """heatsim migrated twice: first with a failing extra test, then passing (--json)."""
    bundle = heatsim_bundle("newest")
    failing = CONFIG.replace("tests = smooth, tools", "tests = smooth, broken") + \
        "[test_broken]\nexec = echo 'the answer is not 42' && exit 3\n"
    first = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path, failing), "--bundle",
                                                bundle, "--yes"], conda_site.env(), timeout=600)
    assert first.returncode == 1, first.stderr
    second = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path, CONFIG), "--bundle",
                                                 bundle, "--yes", "--force", "--json"], conda_site.env(), timeout=600)
    assert second.returncode == 0, second.stderr
    return {"site": conda_site, "migrate_json": json.loads(second.stdout), "tmp": tmp_path}


def pm_run(pyz, site, *args):
    proc = run_pm(find_python("newest"), pyz, list(args), site.env())
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


REPORT_KEYS = {"name", "id", "status", "level", "error", "seconds", "installed_to", "activate", "path", "source",
               "target", "requirements", "tests", "history", "test_config", "environment_gone"}


def test_report_shows_platforms_requirements_tests_and_history_in_the_terminal_and_as_json(pyz, two_attempts):
    site = two_attempts["site"]
    text = pm_run(pyz, site, "report", "heatsim")
    assert "passed (level exact)" in text.splitlines()[0]
    assert "base machine" in text and "this machine" in text and "python" in text and "25.11.1" in text
    assert "heatplot 0.3 h3_0, conda (level exact)" in text
    assert "smooth" in text and "tools" in text and "history (2 attempts, newest first)" in text
    report = json.loads(pm_run(pyz, site, "report", "heatsim", "--json"))
    assert set(report) == REPORT_KEYS
    assert [(t["name"], t["status"]) for t in report["tests"]] == [("smooth", "passed"), ("tools", "passed")]
    assert "ok: smoothing step" in report["tests"][0]["output"]
    assert [h["status"] for h in report["history"]] == ["passed", "failed"]
    assert report["source"]["conda"] == "25.11.1" and report["target"]["python"]
    assert report["target"]["env_python"] is None, "the example environment has no Python; one on PATH is not it"
    first = report["history"][1]["id"]
    older = json.loads(pm_run(pyz, site, "report", "heatsim", first[:20], "--json"))
    assert older["status"] == "failed" and older["tests"][1]["exit_code"] == 3
    assert "the answer is not 42" in older["tests"][1]["output"]
    migrated = two_attempts["migrate_json"]
    assert set(migrated) == REPORT_KEYS - {"history"} and migrated["id"] == report["id"]
    history = json.loads(pm_run(pyz, site, "history", "heatsim", "--json"))
    assert [h["id"] for h in history] == [report["id"], first]
    assert set(history[0]) == {"id", "status", "level", "seconds", "error", "tests", "tests_passed", "environment_gone"}
    assert pm_run(pyz, site, "history", "heatsim").splitlines()[1].startswith(report["id"])


def chromium(*args):
    proc = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--user-data-dir=" + args[0]] + list(args[1:]), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def png_colours(path):
    """The number of distinct pixel colours of an 8-bit RGB(A) PNG, decoded with zlib."""
    with open(path, "rb") as handle:
        data = handle.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, chunks, width, height, kind = 8, b"", 0, 0, 0
    while at < len(data):
        length, tag = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        if tag == b"IHDR":
            width, height, depth, kind = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and kind in (2, 6)
        elif tag == b"IDAT":
            chunks += body
        at += 12 + length
    pixels, size = zlib.decompress(chunks), 3 if kind == 2 else 4
    stride, previous, colours = width * size, bytearray(width * size), set()
    for row in range(height):
        line = pixels[row * (stride + 1):(row + 1) * (stride + 1)]
        kind_of_filter, raw = line[0], bytearray(line[1:])
        for i in range(stride):
            left = raw[i - size] if i >= size else 0
            up, up_left = previous[i], previous[i - size] if i >= size else 0
            if kind_of_filter == 1:
                raw[i] = (raw[i] + left) & 255
            elif kind_of_filter == 2:
                raw[i] = (raw[i] + up) & 255
            elif kind_of_filter == 3:
                raw[i] = (raw[i] + (left + up) // 2) & 255
            elif kind_of_filter == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                raw[i] = (raw[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else up_left)) & 255
        previous = raw
        if row % 4 == 0:
            colours.update(bytes(raw[i:i + 3]) for i in range(0, stride, size * 4))
    return colours


def test_report_html_is_one_page_that_chromium_renders_with_its_content(pyz, two_attempts, tmp_path):
    site = two_attempts["site"]
    attempt = attempt_dirs(site.home, "heatsim")[-1]
    page = os.path.join(attempt, "report.html")
    with open(page) as handle:
        source = handle.read()
    assert "http://" not in source and "https://" not in source and "<link" not in source \
        and "<script" not in source, "one page: nothing is fetched from anywhere"
    dom = chromium(str(tmp_path / "profile"), "--dump-dom", "file://" + page)
    assert "<h1>heatsim</h1>" in dom and 'id="status" class="status passed">passed at level exact' in dom
    assert dom.count('<details class="test"') == 2 and "ok: smoothing step" in dom
    assert dom.count('<rect class="attempt') == 2 and '<rect class="attempt failed"' in dom
    assert "heatplot 0.3 h3_0, conda (level exact)" in dom
    failed_page = os.path.join(attempt_dirs(site.home, "heatsim")[0], "report.html")
    assert "the answer is not 42" in chromium(str(tmp_path / "profile"), "--dump-dom", "file://" + failed_page)
    shot = str(tmp_path / "report.png")
    chromium(str(tmp_path / "profile"), "--window-size=1000,900", "--screenshot=" + shot, "file://" + page)
    assert len(png_colours(shot)) > 8, "the screenshot is blank"


def test_serve_status_json_names_the_server_and_its_bundles(pyz, tmp_path):
    srv = Server(pyz, str(tmp_path / "store"), find_python("newest"))
    try:
        status = json.loads(run_pm(find_python("newest"), pyz, ["serve", "status", "--json"], srv.env).stdout)
    finally:
        srv.stop()
    assert status["running"] and status["pid"] == srv.record["pid"] and status["bundles"] == {}
    stopped = run_pm(find_python("newest"), pyz, ["serve", "status", "--json"], srv.env)
    assert stopped.returncode == 1 and json.loads(stopped.stdout) == {"running": False, "store": srv.home}


def test_doctor_says_what_this_machine_offers_and_how_to_fix_what_is_missing(pyz, conda_site, tmp_path):
    env = conda_site.env()
    text = run_pm(find_python("newest"), pyz, ["doctor"], env)
    assert text.returncode == 0, text.stderr
    assert "conda 25.11.1 (%s" % os.path.join(conda_site.bin, "conda") in text.stdout
    assert "ok  python    2.7." in text.stdout and "GiB free for the store %s" % conda_site.home in text.stdout
    assert "no pm server runs for %s %s start one with 'pm.pyz serve start'" % (conda_site.home, "\u2014") in text.stdout
    rows = json.loads(run_pm(find_python("newest"), pyz, ["doctor", "--json"], env).stdout)
    assert all(set(r) == {"area", "ok", "what", "fix"} for r in rows)
    areas = dict((r["area"], r) for r in rows)
    assert {"python", "pm", "conda", "manager", "disk", "server", "platform"} <= set(areas)
    assert "glibc" in areas["platform"]["what"] and "CPUs" in areas["platform"]["what"]
    srv = Server(pyz, conda_site.home, find_python("newest"))
    try:
        rows = json.loads(run_pm(find_python("newest"), pyz, ["doctor", "--json"], env).stdout)
    finally:
        srv.stop()
    server = [r for r in rows if r["area"] == "server"][0]
    assert server["ok"] and "answers (PID %d)" % srv.record["pid"] in server["what"]
    bare = dict(env, PATH="/usr/bin:/bin")
    bare.pop("CONDA_EXE", None)
    rows = json.loads(run_pm(find_python("newest"), pyz, ["doctor", "--json"], bare).stdout)
    conda = [r for r in rows if r["area"] == "conda"][0]
    assert conda["ok"] is False and "pack --with-packages" in conda["fix"]


def test_the_attempt_keeps_its_test_config_and_each_tests_command_and_the_report_shows_them(pyz, two_attempts):
    site, tmp_path = two_attempts["site"], two_attempts["tmp"]
    latest = attempt_dirs(site.home, "heatsim")[-1]
    with open(os.path.join(latest, "test-config.ini")) as handle:
        kept = handle.read()
    assert CONFIG.format(out=str(tmp_path / "installed")) in kept, kept
    report = json.loads(pm_run(pyz, site, "report", "heatsim", "--json"))
    assert "[test_smooth]" in report["test_config"]
    assert [t["command"] for t in report["tests"]] == ["sh tests/test_smooth.sh", "sh tests/test_tools.sh"]
    first = json.loads(pm_run(pyz, site, "report", "heatsim", os.path.basename(attempt_dirs(site.home, "heatsim")[0]),
                              "--json"))
    assert "echo 'the answer is not 42' && exit 3" in [t["command"] for t in first["tests"]]
    with open(os.path.join(latest, "report.html")) as handle:
        page = handle.read()
    assert "<h2>Test configuration</h2>" in page and "[test_smooth]" in page
    assert "<code>sh tests/test_smooth.sh</code>" in page
    text = pm_run(pyz, site, "report", "heatsim")
    assert "$ sh tests/test_smooth.sh" in text and "test configuration: %s" % os.path.join(latest, "test-config.ini") \
        in text


def test_counts_of_one_are_singular(pyz, conda_site, heatsim_bundle, tmp_path):
    bundle = heatsim_bundle("newest")
    migrated = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path, CONFIG), "--bundle",
                                                   bundle], conda_site.env(), timeout=600)
    assert migrated.returncode == 0, migrated.stderr
    text = pm_run(pyz, conda_site, "report", "heatsim")
    assert "history (1 attempt, newest first)" in text, text
    stored = run_pm(find_python("newest"), pyz, ["unpack", bundle], conda_site.env())
    assert stored.returncode == 0, stored.stderr
    srv = Server(pyz, conda_site.home, find_python("newest"))
    try:
        status = pm_run(pyz, conda_site, "serve", "status")
    finally:
        srv.stop()
    assert "heatsim" in status and "1 revision," in status and "revision(s)" not in status, status
