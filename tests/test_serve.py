"""`pm.pyz serve`: a real server on 127.0.0.1, real clients (pm probe, urllib as the original, curl)."""
import base64
import calendar
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import zipfile

import pytest

import pm
from conftest import find_python, read_bytes, run_pm, wait_until
from servers import TOKEN, Server, sha256_of

@pytest.fixture
def server(pyz, tmp_path):
    srv = Server(pyz, str(tmp_path / "store"), find_python("newest"))
    yield srv
    srv.stop()


def error_of(body):
    return json.loads(body.decode())["error"]


def store_files(home):
    found = []
    for folder, _, files in os.walk(home):
        found += [os.path.relpath(os.path.join(folder, f), home) for f in files]
    return sorted(found)


def packed_bundle(pyz, conda_site, software, out):
    proc = run_pm(find_python("newest"), pyz, ["pack", "-d", software, "-e", "heatsim-env", "-o", out, "--yes"],
                  conda_site.env())
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("version", ["3.6", "newest"])
def test_start_status_stop_keep_one_instance(version, pyz, tmp_path):
    python = find_python(version)
    srv = Server(pyz, str(tmp_path / "store"), python)
    assert "token: " + TOKEN in srv.started.stdout
    status = run_pm(python, pyz, ["serve", "status"], srv.env)
    assert status.returncode == 0 and srv.url in status.stdout and "PID" in status.stdout
    second = run_pm(python, pyz, ["serve", "start", "--port", "0"], srv.env)
    assert second.returncode == 2 and "already runs" in second.stderr
    assert os.path.exists(os.path.join(srv.home, "migrate.py"))
    stopped = srv.stop()
    assert stopped.returncode == 0, stopped.stderr
    assert not os.path.exists(os.path.join(srv.home, "server.pid"))
    assert not os.path.exists(os.path.join(srv.home, "migrate.py"))
    assert run_pm(python, pyz, ["serve", "status"], srv.env).returncode == 1


def test_a_stale_pidfile_of_a_dead_server_is_replaced(pyz, tmp_path):
    home = tmp_path / "store"
    home.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (home / "server.pid").write_text(json.dumps({"pid": dead.pid, "port": 1, "host": "127.0.0.1", "started": 0}))
    srv = Server(pyz, str(home), find_python("newest"))
    try:
        assert srv.record["pid"] != dead.pid
        assert srv.request("GET", "/bundles")[0] == 200
    finally:
        srv.stop()


@pytest.mark.parametrize("version", ["2.7", "newest"])
def test_the_served_probe_uploads_a_bundle(version, server, conda_site, example_software, tmp_path):
    status, script = server.request("GET", "/migrate?token=" + TOKEN, token=False)
    assert status == 200 and ("SERVER_URL = '%s'" % server.url).encode() in script
    probe = tmp_path / "probe.py"
    probe.write_bytes(script)
    proc = subprocess.run([find_python(version), str(probe), "-d", example_software, "-e", "heatsim-env", "--yes"],
                          env=conda_site.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    stored = os.path.join(server.home, "heatsim", "bundles", "0001.zip")
    manifest = pm.Bundle.open(stored).manifest
    assert manifest.source["python"].startswith("2.7" if version == "2.7" else "3.")
    status, body = server.request("GET", "/bundles/heatsim")
    assert status == 200 and json.loads(body.decode())["minimal"] == ["heatplot"]


def test_pm_pack_server_flag_sends_and_second_upload_is_a_new_revision(pyz, server, conda_site, example_software):
    args = ["pack", "-d", example_software, "-e", "heatsim-env", "--server", server.url, "--token", TOKEN, "--yes"]
    for _ in range(2):
        proc = run_pm(find_python("2.7"), pyz, args, conda_site.env())
        assert proc.returncode == 0, proc.stderr
    status, body = server.request("GET", "/bundles")
    assert json.loads(body.decode())["heatsim"]["revisions"] == 2
    assert pm.Store(server.home).revisions("heatsim")[-1].endswith("0002.zip")


def original_post(server, path, name, data):
    """Exactly what platform-migrator 1.1.0's probe sends: JSON {name, data: urlsafe base64}, no auth."""
    body = json.dumps({"name": name, "data": base64.urlsafe_b64encode(data).decode("utf-8")}).encode("utf-8")
    return server.request("POST", path, body)


def test_the_original_probe_protocol_builds_a_bundle(server, tmp_path):
    software_zip = tmp_path / "pkg.zip"
    with zipfile.ZipFile(str(software_zip), "w") as archive:
        archive.writestr("oldsim/run.sh", "echo hi\n")
        archive.writestr("oldsim/data/in.txt", "1 2 3\n")
    env_yml = b"name: oldsim\nchannels:\n  - conda-forge\ndependencies:\n  - numpy=1.26.4=py312h\n"
    min_deps = json.dumps([{"name": "numpy", "version": "1.26.4"}]).encode()
    assert original_post(server, "/yml", "oldsim", env_yml)[0] == 200
    assert original_post(server, "/zip", "oldsim", software_zip.read_bytes())[0] == 200
    assert original_post(server, "/min", "oldsim", min_deps)[0] == 200
    latest = pm.Store(server.home).latest_bundle("oldsim")
    manifest = pm.Bundle.open(latest).manifest
    assert manifest.software_dir() == "oldsim"
    with zipfile.ZipFile(latest) as bundle:
        assert bundle.read("env.yml") == env_yml
        assert bundle.read("min-deps.json") == min_deps
        assert bundle.read("software/oldsim/data/in.txt") == b"1 2 3\n"


def test_curl_uploads_with_a_sha256_header(server, pyz, conda_site, tmp_path, heatsim_bundle):
    curl = shutil.which("curl")
    if not curl:
        pytest.skip("curl is not on this machine")
    bundle = heatsim_bundle("newest")
    with open(bundle, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    proc = subprocess.run([curl, "-s", "-T", bundle, "-H", "Authorization: Bearer " + TOKEN,
                           "-H", "X-Content-SHA256: " + digest, server.url + "/bundles/heatsim"],
                          stdout=subprocess.PIPE, universal_newlines=True, timeout=30)
    assert json.loads(proc.stdout)["sha256"] == digest
    with open(pm.Store(server.home).latest_bundle("heatsim"), "rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == digest


def test_hostile_requests_get_json_errors_and_change_nothing(server, pyz, conda_site, tmp_path, heatsim_bundle):
    bundle = read_bytes(heatsim_bundle("newest"))
    outside = tmp_path / "x"
    cases = [
        ("PUT", "/bundles/..%2Fx", bundle, {}, True, 400),
        ("PUT", "/bundles/a%2Fb", bundle, {}, True, 400),
        ("PUT", "/bundles/" + "a" * 101, bundle, {}, True, 400),
        ("PUT", "/bundles/.hidden", bundle, {}, True, 400),
        ("PUT", "/bundles/heatsim", bundle, {}, "wrong-token", 401),
        ("PUT", "/bundles/heatsim", bundle, {}, False, 401),
        ("PUT", "/bundles/other", bundle, {}, True, 400),  # manifest names heatsim
        ("PUT", "/bundles/heatsim", bundle, {"X-Content-SHA256": "0" * 64}, True, 400),
        ("PUT", "/bundles/heatsim", b"not a zip", {}, True, 400),
        ("PUT", "/bundles/heatsim", bundle[:-100], {}, True, 400),
        ("POST", "/yml", b"{not json", {}, True, 400),
        ("POST", "/yml", json.dumps({"name": "ok", "data": "***"}).encode(), {}, True, 400),
        ("POST", "/yml", json.dumps({"name": "../../x", "data": "aGk="}).encode(), {}, True, 400),
        ("POST", "/zip", json.dumps({"data": "aGk="}).encode(), {}, True, 400),
        ("GET", "/migrate", None, {}, False, 401),
        ("GET", "/etc/passwd", None, {}, True, 404),
        ("GET", "/bundles/nothing", None, {}, True, 404),
        ("DELETE", "/bundles/heatsim", None, {}, True, 405),
        ("HEAD", "/bundles", None, {}, True, 405),
    ]
    for method, path, body, headers, token, expected in cases:
        status, answer = server.request(method, path, body, headers, token)
        assert status == expected, (method, path, status, answer)
        if path == "/migrate":  # a program that says why (see test_the_probe_without_a_token_...)
            assert b"needs its token" in answer and server.home.encode() not in answer
        elif method != "HEAD":  # a HEAD answer has no body
            assert error_of(answer) and server.home not in error_of(answer)  # no server paths leak out
    for raw in (b"GARBAGE\r\n\r\n", b"GET /bundles HTTP/9.9\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", server.record["port"]), timeout=10) as sock:
            sock.sendall(raw)
            answer = b"".join(iter(lambda: sock.recv(65536), b""))
        assert error_of(answer.split(b"\r\n\r\n")[-1]), answer
    assert not outside.exists()
    assert [f for f in store_files(server.home) if not f.startswith(("server.", "migrate.py"))] == []
    assert server.request("GET", "/bundles")[0] == 200


def test_oversize_and_truncated_bodies_leave_no_partial_bundle(pyz, tmp_path):
    srv = Server(pyz, str(tmp_path / "store"), find_python("newest"), TOKEN, "--max-bytes", "1000", "--timeout", "2")
    try:
        status, body = srv.request("PUT", "/bundles/big", b"x" * 5000)
        assert status == 413 and "exceeds" in error_of(body)
        sock = socket.create_connection(("127.0.0.1", srv.record["port"]), timeout=10)
        sock.sendall(b"PUT /bundles/cut HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() +
                     b"\r\nContent-Length: 900\r\n\r\n" + b"y" * 100)
        sock.close()  # the client vanishes mid-body
        assert wait_until(lambda: os.listdir(os.path.join(srv.home, ".incoming")) == [], timeout=10)
        assert srv.request("GET", "/bundles")[1] == b"{}\n"
    finally:
        srv.stop()


def test_a_slow_client_does_not_block_others(server):
    slow = socket.create_connection(("127.0.0.1", server.record["port"]), timeout=10)
    slow.sendall(b"PUT /bundles/slow HTTP/1.1\r\nHost: x\r\n")  # and then nothing
    try:
        assert server.request("GET", "/bundles", timeout=5)[0] == 200  # urlopen raises at 5 s
    finally:
        slow.close()


def test_concurrent_uploads_of_one_name_become_separate_revisions(server, pyz, conda_site, tmp_path, heatsim_bundle):
    bundle = read_bytes(heatsim_bundle("newest"))
    results = []
    threads = [threading.Thread(target=lambda: results.append(server.request("PUT", "/bundles/heatsim", bundle)[0]))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [201] * 6
    revisions = pm.Store(server.home).revisions("heatsim")
    assert [os.path.basename(r) for r in revisions] == ["%04d.zip" % n for n in range(1, 7)]
    for revision in revisions:
        assert pm.Bundle.open(revision).manifest.name == "heatsim"


def test_binding_beyond_loopback_without_token_warns(pyz, tmp_path):
    with subprocess.Popen([find_python("newest"), pyz, "serve", "--host", "0.0.0.0", "--port", "0", "--no-token"],
                          env=dict(os.environ, PM_HOME=str(tmp_path / "store")), stderr=subprocess.PIPE,
                          universal_newlines=True) as proc:
        try:
            line = proc.stderr.readline()
            assert "warning" in line and "token" in line
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    assert not (tmp_path / "store" / "server.pid").exists()


def test_unpack_imports_a_carried_bundle_like_an_upload(pyz, conda_site, tmp_path, heatsim_bundle):
    bundle = heatsim_bundle("newest")
    env = dict(os.environ, PM_HOME=str(tmp_path / "store"))
    proc = run_pm(find_python("3.6"), pyz, ["unpack", bundle], env)
    assert proc.returncode == 0, proc.stderr
    assert pm.Store(str(tmp_path / "store")).latest_bundle("heatsim").endswith("0001.zip")
    listing = run_pm(find_python("3.6"), pyz, ["list"], env)
    assert "heatsim" in listing.stdout
    with open(str(tmp_path / "bad.zip"), "wb") as handle:
        handle.write(read_bytes(bundle)[:-200])
    proc = run_pm(find_python("newest"), pyz, ["unpack", str(tmp_path / "bad.zip")], env)
    assert proc.returncode == 2 and proc.stderr.startswith("pm: error:") and "Traceback" not in proc.stderr
    assert str(tmp_path / "bad.zip") in proc.stderr and ".incoming" not in proc.stderr
    assert len(pm.Store(str(tmp_path / "store")).revisions("heatsim")) == 1


def test_unpack_converts_the_original_tools_carried_zip(pyz, tmp_path):
    """platform-migrator 1.1.0's 'pack' writes NAME.zip: env.yml, min-deps.json and dir/... entries."""
    carried = str(tmp_path / "oldsim.zip")
    with zipfile.ZipFile(carried, "w") as archive:
        archive.writestr("env.yml", "name: oldsim\ndependencies:\n  - numpy=1.26.4\n")
        archive.writestr("min-deps.json", json.dumps([{"name": "numpy", "version": "1.26.4"}]))
        archive.writestr("oldsim/run.sh", "echo hi\n")
    env = dict(os.environ, PM_HOME=str(tmp_path / "store"), TZ="Etc/GMT+5")  # a machine 5 hours behind UTC
    proc = run_pm(find_python("newest"), pyz, ["unpack", carried], env)
    assert proc.returncode == 0, proc.stderr
    stored = pm.Store(str(tmp_path / "store")).latest_bundle("oldsim")
    manifest = pm.Bundle.open(stored).manifest
    assert manifest.software_dir() == "oldsim"
    created = calendar.timegm(time.strptime(manifest.created, "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(created - time.time()) < 120, manifest.created  # UTC, as its Z says
    with zipfile.ZipFile(stored) as bundle:
        assert bundle.read("software/oldsim/run.sh") == b"echo hi\n"


def test_ctrl_c_stops_a_foreground_server_cleanly(pyz, tmp_path):
    import signal
    home = tmp_path / "store"
    with subprocess.Popen([find_python("3.6"), pyz, "serve", "--port", "0"], env=dict(os.environ, PM_HOME=str(home)),
                          stderr=subprocess.PIPE, universal_newlines=True) as proc:
        try:
            assert "pm server on http://127.0.0.1:" in proc.stderr.readline()
            assert (home / "server.pid").exists() and (home / "migrate.py").exists()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
            assert "stopped" in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
    assert not (home / "server.pid").exists() and not (home / "migrate.py").exists()


@pytest.mark.parametrize("body, text, expected", [
    (b'{"name": "sim", "data": "aGVsbG8="}', True, ({"name": "sim"}, b"hello")),
    (b'{ "data" : "aGVsbG8=" ,\n "name" : "s\\"m" }', False, ({"name": 's"m'}, b"hello")),
    (b'{"name": "sim", "data": "_w=="}', False, ({"name": "sim"}, b"\xff")),
    (b'{"name": "sim", "data": "_w=="}', True, "not UTF-8"),
    (b'{"name": "sim", "data": "a*b="}', False, "not urlsafe base64"),
    (b'{"name": "sim", "data": "aGVsbG8=', False, "never ends"),
    (b'{"name": ["x"], "data": "aGk="}', False, "must be a string"),
    (b'["name", "data"]', False, "not a JSON object"),
])
def test_original_json_bodies_stream_through_a_small_parser(body, text, expected):
    import io
    sink = io.BytesIO()
    if isinstance(expected, str):
        with pytest.raises(pm.HttpError) as caught:
            pm.OriginalBody(io.BytesIO(body)).read(sink, text)
        assert expected in caught.value.reason and caught.value.status == 400
    else:
        assert (pm.OriginalBody(io.BytesIO(body)).read(sink, text), sink.getvalue()) == expected


def test_a_full_store_disk_is_a_507_and_the_server_keeps_serving(pyz, conda_site, example_software, tmp_path,
                                                                 tiny_disk):
    with open(os.path.join(example_software, "field.dat"), "wb") as handle:
        handle.write(os.urandom(600000))  # more than the 256 KiB disk holds
    bundle = packed_bundle(pyz, conda_site, example_software, str(tmp_path / "b.zip"))
    srv = Server(pyz, os.path.join(tiny_disk, "store"), find_python("newest"))
    try:
        status, body = srv.request("PUT", "/bundles/heatsim", read_bytes(bundle))
        assert status == 507 and "out of disk space" in error_of(body), (status, body)
        assert srv.home not in error_of(body)
        sent = run_pm(find_python("2.7"), pyz, ["pack", "-d", example_software, "-e", "heatsim-env", "--yes",
                                                "--server", srv.url, "--token", TOKEN], conda_site.env())
        assert sent.returncode == 2 and "the server refused the bundle (507)" in sent.stderr, sent.stderr
        assert srv.request("GET", "/bundles") == (200, b"{}\n")
        assert os.listdir(os.path.join(srv.home, ".incoming")) == []
    finally:
        srv.stop()


def test_revisions_are_ordered_by_number_past_9999(tmp_path):
    store = pm.Store(str(tmp_path / "store"))
    folder = store.bundles_dir("sim")
    os.makedirs(folder)
    for number in ("9999", "10000"):
        with open(os.path.join(folder, number + ".zip"), "wb") as handle:
            handle.write(b"revision " + number.encode())
    assert store.latest_bundle("sim").endswith("10000.zip")
    temp = str(tmp_path / "new.zip")
    with open(temp, "wb") as handle:
        handle.write(b"next")
    stored = []
    worker = threading.Thread(target=lambda: stored.append(store.add_revision(temp, "sim")), daemon=True)
    worker.start()
    worker.join(10)
    assert stored and stored[0].endswith("10001.zip"), "the next revision is 10001, found at once"


def test_the_stores_own_file_names_are_never_software_names(server, pyz, conda_site, example_software, tmp_path):
    for name in ("server.pid", "config", "migrate.py", "Server.log"):
        proc = run_pm(find_python("2.7"), pyz, ["pack", "-d", example_software, "-e", "heatsim-env", "-n", name,
                                                "-o", str(tmp_path / "b.zip"), "--yes"], conda_site.env())
        assert proc.returncode == 2 and "the store uses that name itself" in proc.stderr, proc.stderr
        status, body = server.request("PUT", "/bundles/" + name, b"x")
        assert status == 400 and b"the store uses that name itself" in body
    os.makedirs(os.path.join(server.home, "config"), exist_ok=True)
    listed = run_pm(find_python("newest"), pyz, ["list", "--json"], dict(conda_site.env(), PM_HOME=server.home))
    assert "config" not in [row["name"] for row in json.loads(listed.stdout)]


def test_the_original_protocol_never_mixes_parts_of_two_uploads(server, tmp_path):
    def software_zip(text):
        path = tmp_path / "pkg.zip"
        with zipfile.ZipFile(str(path), "w") as archive:
            archive.writestr("oldsim/run.sh", text)
        return path.read_bytes()
    first_yml = b"name: oldsim\ndependencies:\n  - numpy=1.26.4\n"
    first_min = json.dumps([{"name": "numpy", "version": "1.26.4"}]).encode()
    for path, data in (("/yml", first_yml), ("/zip", software_zip("echo one\n")), ("/min", first_min)):
        assert original_post(server, path, "oldsim", data)[0] == 200
    store = pm.Store(server.home)
    assert len(store.revisions("oldsim")) == 1, "min-deps.json completes the revision that /zip made"
    with zipfile.ZipFile(store.latest_bundle("oldsim")) as bundle:
        assert bundle.read("min-deps.json") == first_min
    second_yml = b"name: oldsim\ndependencies:\n  - numpy=2.0.0\n"
    status, body = original_post(server, "/yml", "oldsim", second_yml)
    assert status == 200 and "bundle" not in json.loads(body.decode()), "a new env.yml alone makes no revision"
    assert len(store.revisions("oldsim")) == 1
    assert original_post(server, "/zip", "oldsim", software_zip("echo two\n"))[0] == 200
    with zipfile.ZipFile(store.latest_bundle("oldsim")) as bundle:
        assert bundle.read("env.yml") == second_yml
        assert bundle.read("software/oldsim/run.sh") == b"echo two\n"
        assert bundle.read("min-deps.json") != first_min, "the first upload's min-deps.json is not reused"


def test_the_probe_without_a_token_is_a_program_that_says_why(server, tmp_path):
    status, script = server.request("GET", "/migrate", token=False)
    assert status == 401
    saved = tmp_path / "script.py"  # what `curl .../migrate > script.py` leaves
    saved.write_bytes(script)
    for version in ("2.7", "newest"):
        proc = subprocess.run([find_python(version), str(saved)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=30)
        assert proc.returncode != 0 and "needs its token" in proc.stderr and "/migrate?token=" in proc.stderr


@pytest.mark.parametrize("flags", [["--no-token"], ["--token", ""]])
def test_no_token_serves_the_original_tools_way(flags, pyz, tmp_path):
    srv = Server(pyz, str(tmp_path / "store"), find_python("newest"), None, *flags)
    srv.token = None
    try:
        assert "no token" in srv.started.stdout
        assert not [line for line in srv.started.stdout.splitlines() if line.startswith("token:")]
        status, script = srv.request("GET", "/migrate")
        assert status == 200 and b"SERVER_TOKEN = ''" in script
        assert srv.request("GET", "/bundles")[0] == 200
    finally:
        srv.stop()


@pytest.mark.parametrize("version", ["2.7", "newest"])
def test_the_served_probe_takes_the_original_tools_piped_answers(version, server, conda_site, example_software,
                                                                 tmp_path):
    """printf 'heatsim\\nheatsim\\nn\\n' | python probe.py: name, directory, do not save the zip (send it)."""
    status, script = server.request("GET", "/migrate?token=" + TOKEN, token=False)
    probe = tmp_path / "probe.py"
    probe.write_bytes(script)
    env = conda_site.env(CONDA_PREFIX=conda_site.prefix("heatsim-env"))
    proc = subprocess.run([find_python(version), str(probe)], input="myheat\nheatsim\nn\n", env=env,
                          cwd=os.path.dirname(example_software), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert pm.Bundle.open(pm.Store(server.home).latest_bundle("myheat")).manifest.software_dir() == "heatsim"


def test_the_token_never_lands_in_the_server_log(server):
    assert server.request("GET", "/migrate?token=" + TOKEN, token=False)[0] == 200
    assert server.request("GET", "/migrate?token=wrong", token=False)[0] == 401
    server.stop()
    with open(os.path.join(server.home, "server.log")) as handle:
        log = handle.read()
    assert "/migrate?token=***" in log and TOKEN not in log


def test_serve_listens_on_ipv6_loopback(pyz, tmp_path):
    srv = Server(pyz, str(tmp_path / "store"), find_python("newest"), TOKEN, "--host", "::1")
    try:
        assert srv.record["url"].startswith("http://[::1]:")
        srv.url = srv.record["url"]
        status, script = srv.request("GET", "/migrate?token=" + TOKEN, token=False)
        assert status == 200 and ("SERVER_URL = 'http://[::1]:%d'" % srv.record["port"]).encode() in script
    finally:
        srv.stop()


def test_the_store_and_everything_in_it_is_owner_only(server, pyz, conda_site, example_software, tmp_path):
    args = ["pack", "-d", example_software, "-e", "heatsim-env", "--server", server.url, "--token", TOKEN, "--yes"]
    assert run_pm(find_python("2.7"), pyz, args, conda_site.env()).returncode == 0
    software_zip = tmp_path / "pkg.zip"
    with zipfile.ZipFile(str(software_zip), "w") as archive:
        archive.writestr("oldsim/run.sh", "echo hi\n")
    for path, data in (("/yml", b"name: oldsim\ndependencies:\n  - numpy\n"), ("/zip", software_zip.read_bytes())):
        assert original_post(server, path, "oldsim", data)[0] == 200
    config = tmp_path / "tests.ini"
    config.write_text("[heatsim]\noutput_dir = %s\ntests = smoke\n[test_smoke]\nexec = heatplot --version\n"
                      % (tmp_path / "installed"))
    migrated = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", str(config)],
                      dict(conda_site.env(), PM_HOME=server.home))
    assert migrated.returncode == 0, migrated.stderr
    opened, envs = [], os.path.join(server.home, "heatsim", "envs")
    for folder, dirs, files in os.walk(server.home):
        if folder == envs:  # each install's environment, as conda makes it, behind the owner-only store
            dirs[:] = []
            continue
        for name in dirs + files:
            path = os.path.join(folder, name)
            if os.lstat(path).st_mode & 0o077:
                opened.append((os.path.relpath(path, server.home), oct(os.lstat(path).st_mode & 0o777)))
    assert opened == [] and os.stat(server.home).st_mode & 0o077 == 0, opened
    assert os.listdir(envs) and os.stat(os.path.join(server.home, "heatsim")).st_mode & 0o077 == 0


def test_without_a_token_only_requests_addressed_here_are_answered(pyz, tmp_path):
    """A web page's cross-origin POST or a DNS-rebinding name must not reach a server without a token."""
    srv = Server(pyz, str(tmp_path / "store"), find_python("newest"), None, "--no-token")
    srv.token = None
    try:
        assert srv.request("GET", "/bundles")[0] == 200
        assert srv.request("GET", "/bundles", headers={"Host": "localhost:%d" % srv.record["port"]})[0] == 200
        status, body = srv.request("GET", "/bundles", headers={"Host": "rebound.example:%d" % srv.record["port"]})
        assert status == 403 and "addressed to this machine" in error_of(body)
        yml = json.dumps({"name": "evil", "data": base64.urlsafe_b64encode(b"x").decode()}).encode()
        status, body = srv.request("POST", "/yml", yml, {"Origin": "http://evil.example", "Content-Type": "text/plain"})
        assert status == 403
        assert not os.path.exists(os.path.join(srv.home, "evil"))
    finally:
        srv.stop()
    with_token = Server(pyz, str(tmp_path / "store2"), find_python("newest"))
    try:
        assert with_token.request("GET", "/bundles", headers={"Host": "any.name:80"})[0] == 200, "the token decides"
    finally:
        with_token.stop()


@pytest.mark.parametrize("action", [[], ["start"]])
def test_serve_json_without_status_is_refused_and_starts_nothing(action, pyz, tmp_path):
    store = tmp_path / "store"
    try:
        proc = run_pm(find_python("newest"), pyz, ["serve", "--port", "0"] + action + ["--json"],
                      dict(os.environ, PM_HOME=str(store)), timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("serve --json started a server")
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("pm: error: --json goes with 'serve status' only"), line
    assert json.loads(proc.stdout)["status"] == "error"
    assert not (store / "server.pid").exists()


def test_unpack_on_a_full_disk_is_one_clear_line_and_leaves_nothing(pyz, conda_site, example_software, tmp_path,
                                                                   tiny_disk):
    with open(os.path.join(example_software, "field.dat"), "wb") as handle:
        handle.write(os.urandom(600000))  # more than the 256 KiB disk of the store holds
    bundle = packed_bundle(pyz, conda_site, example_software, str(tmp_path / "b.zip"))
    store = os.path.join(tiny_disk, "store")
    proc = run_pm(find_python("newest"), pyz, ["unpack", bundle], dict(os.environ, PM_HOME=store))
    (line,) = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and line.startswith("pm: error: the disk is full (writing %s" % store), line
    assert "free some space" in line and "unexpected" not in line
    left = [os.path.join(folder, f) for folder, _, files in os.walk(store) for f in files]
    assert not [path for path in left if os.path.getsize(path) > 64 << 10], left


def test_a_foreground_server_makes_a_token_as_serve_start_does(pyz, tmp_path):
    home = tmp_path / "store"
    with subprocess.Popen([find_python("newest"), pyz, "serve", "--port", "0"], env=dict(os.environ, PM_HOME=str(home)),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True) as proc:
        try:
            import select
            assert select.select([proc.stdout], [], [], 15)[0], "the server printed no token"
            token_line = proc.stdout.readline()
            curl_line = proc.stdout.readline()
            assert token_line.startswith("token: "), token_line
            token = token_line.split()[1]
            with open(str(home / "server.pid")) as handle:
                record = json.load(handle)
            assert record["token"] == token
            assert curl_line.startswith("on a base machine: curl -s 'http://127.0.0.1:%d/migrate?token=%s'"
                                        % (record["port"], token)), curl_line
            srv = Server.__new__(Server)
            srv.url, srv.token = "http://127.0.0.1:%d" % record["port"], token
            assert srv.request("GET", "/bundles", token=False)[0] == 401
            assert srv.request("GET", "/bundles")[0] == 200
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_serve_start_on_every_address_prints_a_curl_line_another_machine_can_use(pyz, tmp_path):
    srv = Server(pyz, str(tmp_path / "store"), find_python("newest"), TOKEN, "--host", "0.0.0.0")
    try:
        out = srv.started.stdout
        curl = [line for line in out.splitlines() if "curl" in line]
        assert curl and "0.0.0.0" not in out, out
        assert "http://%s:%d/migrate" % (socket.gethostname(), srv.record["port"]) in curl[0], out
    finally:
        srv.stop()


@pytest.mark.parametrize("action", [["start"], []])
def test_a_busy_port_is_named_as_the_reason(action, pyz, tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        proc = run_pm(find_python("newest"), pyz, ["serve"] + action + ["--port", str(port), "--token", TOKEN],
                      dict(os.environ, PM_HOME=str(tmp_path / "store")), timeout=30)
    finally:
        busy.close()
    (line,) = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and line.startswith("pm: error: port %d is in use" % port), line
    assert "exited at once" not in line


def free_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.mark.parametrize("version", ["2.7", "newest"])
def test_pack_checks_the_server_and_the_token_before_packing_anything(version, server, pyz, conda_site,
                                                                      example_software, tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = conda_site.env(TMPDIR=str(temp))
    nowhere = "http://127.0.0.1:%d" % free_port()
    cases = [(["--server", server.url, "--token", "wrong-token"],
              "the server at %s refuses the token" % server.url, "the token 'serve start' printed on the target"),
             (["--server", server.url], "the server at %s needs a token" % server.url, "--token"),
             (["--server", nowhere], "no pm server answers at %s" % nowhere,
              "start it with 'python3 pm.pyz serve start' on the target")]
    for flags, what, fix in cases:
        proc = run_pm(find_python(version), pyz, ["pack", "-d", example_software, "-e", "heatsim-env", "--yes"] + flags,
                      env)
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode == 2 and last.startswith("pm: error: " + what) and fix in last, proc.stderr
        assert "Bearer" not in proc.stderr and "Authorization" not in proc.stderr
        assert not re.search(r"\b401\b", proc.stderr), proc.stderr  # the server's port may hold 401
        assert "packing" not in proc.stderr, "nothing is packed before the check"
        assert os.listdir(str(temp)) == []
    assert server.request("GET", "/bundles") == (200, b"{}\n")


def test_send_sends_a_kept_bundle_or_a_stored_one_after_the_same_check(server, pyz, conda_site, tmp_path,
                                                                       heatsim_bundle):
    python = find_python("newest")
    bundle = heatsim_bundle("newest", "heatsim.bundle.zip")
    env = dict(os.environ, PM_HOME=str(tmp_path / "base-store"))
    env.pop("PM_TOKEN", None)
    wrong = run_pm(python, pyz, ["send", bundle, "--server", server.url, "--token", "wrong-token"], env)
    last = wrong.stderr.strip().splitlines()[-1]
    assert wrong.returncode == 2 and "the server at %s refuses the token" % server.url in last, wrong.stderr
    assert "Bearer" not in wrong.stderr and server.request("GET", "/bundles") == (200, b"{}\n")
    sent = run_pm(python, pyz, ["send", bundle, "--server", server.url, "--token", TOKEN], env)
    assert sent.returncode == 0 and sent.stdout.strip() == server.url + "/bundles/heatsim", sent.stderr
    assert run_pm(python, pyz, ["unpack", bundle], env).returncode == 0  # now a stored revision here
    for stored in ("heatsim", "heatsim/1"):
        again = run_pm(python, pyz, ["send", stored, "--server", server.url, "--token", TOKEN], env)
        assert again.returncode == 0, again.stderr
    assert json.loads(server.request("GET", "/bundles")[1].decode())["heatsim"]["revisions"] == 3
    assert sha256_of(pm.Store(server.home).revisions("heatsim")[-1]) == sha256_of(bundle)
    for missing in ("nothing-here", "heatsim/7", str(tmp_path / "no.zip")):
        proc = run_pm(python, pyz, ["send", missing, "--server", server.url, "--token", TOKEN], env)
        assert proc.returncode == 2 and proc.stderr.startswith("pm: error: no such bundle file"), proc.stderr
    helped = run_pm(python, pyz, ["--help"], env)
    assert "send" in helped.stdout and "pm.pyz send " in run_pm(python, pyz, ["send", "--help"], env).stdout
