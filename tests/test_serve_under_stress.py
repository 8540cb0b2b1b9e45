"""The server under load, faults and crafted input: a real pm.pyz server on 127.0.0.1, real sockets,
real signals. Every test bounds its own time and stops what it started."""
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time


import pm
from conftest import find_python, run_pm, wait_until
from servers import TOKEN, Server, sha256_of, synthetic_bundle


class Sampler(object):
    """The peak thread and open-file counts of a process, read from /proc every 20 ms."""

    def __init__(self, pid):
        self.pid, self.threads, self.fds, self.stopped = pid, 0, 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopped.wait(0.02):
            try:
                with open("/proc/%d/status" % self.pid) as handle:
                    threads = int([l for l in handle if l.startswith("Threads:")][0].split()[1])
                fds = len(os.listdir("/proc/%d/fd" % self.pid))
            except (OSError, IndexError):
                continue
            self.threads, self.fds = max(self.threads, threads), max(self.fds, fds)

    def stop(self):
        self.stopped.set()
        self.thread.join()
        return self


def put(port, path, body, token=TOKEN, timeout=120):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("PUT", path, body=body, headers={"Authorization": "Bearer " + token})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def get(port, path, timeout=30):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Authorization": "Bearer " + TOKEN})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def slow_client(port, report):
    """Send a request head one byte a second; report whether the server hung up before its end."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    cut = False
    try:
        for byte in b"GET /bundles HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"y" * 60:
            sock.sendall(bytes([byte]))
            sock.settimeout(1.0)
            try:
                if sock.recv(1024) == b"":
                    cut = True
                    break
            except socket.timeout:
                continue
    except OSError:
        cut = True
    finally:
        report.append("cut off" if cut else "sent its whole head")
        sock.close()


def test_fifty_uploads_five_hundred_probes_and_a_slow_client_at_once(pyz, tmp_path):
    payload = os.urandom(20 << 20)
    bundle_path = synthetic_bundle(str(tmp_path / "load.zip"), "load", payload)
    with open(bundle_path, "rb") as handle:
        bundle = handle.read()
    srv = Server(pyz, str(tmp_path / "store"), find_python("newest"), TOKEN, "--timeout", "4")
    port = srv.record["port"]
    sampler = Sampler(srv.record["pid"])
    uploads, probes, slow = [], [], []
    try:
        workers = [threading.Thread(target=slow_client, args=(port, slow))]
        workers += [threading.Thread(target=lambda: uploads.append(put(port, "/bundles/load", bundle)[0]))
                    for _ in range(50)]

        def probe_fifty():
            for _ in range(50):
                status, body = get(port, "/migrate?token=" + TOKEN)
                probes.append(status == 200 and b"SERVER_URL = " in body)
        workers += [threading.Thread(target=probe_fifty) for _ in range(10)]
        started = time.time()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(300)
        seconds = time.time() - started
    finally:
        sampler.stop()
        srv.stop()
    print("load: %.1f s; peak %d threads, %d fds; slow client: %s" % (seconds, sampler.threads, sampler.fds, slow))
    assert uploads == [201] * 50
    assert probes == [True] * 500
    assert slow == ["cut off"], "the slow client (90 s of head, a byte a second) was not cut off at --timeout 4"
    revisions = pm.Store(srv.home).revisions("load")
    assert len(revisions) == 50
    digest = hashlib.sha256(bundle).hexdigest()
    assert all(sha256_of(revision) == digest for revision in revisions)
    assert os.listdir(os.path.join(srv.home, ".incoming")) == []
    assert sampler.threads <= 100 + 50 + 10, "threads: %d" % sampler.threads


def test_three_hundred_idle_connections_stay_within_the_cap_and_others_are_served(pyz, tmp_path):
    srv = Server(pyz, str(tmp_path / "store"), find_python("newest"), TOKEN, "--max-connections", "20",
                 "--timeout", "30")
    sampler = Sampler(srv.record["pid"])
    idle = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", srv.record["port"]), timeout=10)
            sock.sendall(b"PUT /bundles/x HTTP/1.1\r\n")  # a head that never ends
            idle.append(sock)
        status, _ = get(srv.record["port"], "/bundles", timeout=5)  # queued behind the 300; raises at 5 s
    finally:
        for sock in idle:
            sock.close()
        sampler.stop()
        srv.stop()
    print("300 idle connections: peak %d threads, %d fds" % (sampler.threads, sampler.fds))
    assert status == 200
    assert sampler.threads <= 20 + 5, "threads: %d" % sampler.threads


def test_kill_9_mid_upload_leaves_no_partial_bundle_and_earlier_ones_intact(pyz, tmp_path):
    first = synthetic_bundle(str(tmp_path / "first.zip"), "crash", b"first")
    second = synthetic_bundle(str(tmp_path / "second.zip"), "crash", os.urandom(8 << 20))
    srv = Server(pyz, str(tmp_path / "store"), find_python("newest"))
    with open(first, "rb") as handle:
        assert put(srv.record["port"], "/bundles/crash", handle.read())[0] == 201
    incoming = os.path.join(srv.home, ".incoming")
    sock = socket.create_connection(("127.0.0.1", srv.record["port"]), timeout=10)
    with open(second, "rb") as handle:
        data = handle.read()
    sock.sendall(b"PUT /bundles/crash HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
                 b"Content-Length: %d\r\n\r\n" % (TOKEN.encode(), len(data)) + data[:len(data) // 2])
    assert wait_until(lambda: os.listdir(incoming), timeout=10), "the upload never reached the store's .incoming folder"
    os.kill(srv.record["pid"], signal.SIGKILL)
    sock.close()
    again = Server(pyz, srv.home, find_python("newest"))
    try:
        assert os.listdir(incoming) == []
        status, body = get(again.record["port"], "/bundles")
        assert status == 200 and json.loads(body.decode())["crash"]["revisions"] == 1
        assert sha256_of(pm.Store(srv.home).revisions("crash")[0]) == sha256_of(first)
    finally:
        again.stop()


def test_two_servers_racing_to_start_leave_exactly_one(pyz, tmp_path):
    home = str(tmp_path / "store")
    env = dict(os.environ, PM_HOME=home)
    command = [find_python("newest"), pyz, "serve", "start", "--port", "0", "--token", TOKEN]
    racers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True) for _ in range(4)]
    results = [(racer.wait(60), racer.stderr.read()) for racer in racers]
    for racer in racers:
        racer.stdout.close()
        racer.stderr.close()
    try:
        codes = sorted(code for code, _ in results)
        assert codes == [0, 2, 2, 2], results
        assert all("already runs" in err for code, err in results if code == 2)
        servers = [pid for pid in os.listdir("/proc") if pid.isdigit() and serves_store(pid, home)]
        assert len(servers) == 1, servers
    finally:
        run_pm(find_python("newest"), pyz, ["serve", "stop"], env)


def serves_store(pid, home):
    try:
        with open("/proc/%s/environ" % pid, "rb") as handle:
            environ = handle.read().split(b"\0")
        with open("/proc/%s/cmdline" % pid, "rb") as handle:
            cmdline = handle.read().split(b"\0")
    except OSError:
        return False
    return ("PM_HOME=" + home).encode() in environ and b"serve" in cmdline


def test_a_stale_pidfile_naming_another_serve_process_is_never_signalled(pyz, tmp_path):
    home = tmp_path / "store"
    home.mkdir()
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "serve"])
    try:
        (home / "server.pid").write_text(json.dumps({"pid": decoy.pid, "port": 9, "host": "127.0.0.1",
                                                     "started": 0, "url": "http://127.0.0.1:9"}))
        env = dict(os.environ, PM_HOME=str(home))
        stopped = run_pm(find_python("newest"), pyz, ["serve", "stop"], env)
        assert stopped.returncode == 1 and "no server runs" in stopped.stderr
        assert run_pm(find_python("newest"), pyz, ["serve", "status"], env).returncode == 1
        srv = Server(pyz, str(home), find_python("newest"))
        srv.stop()
        ended = wait_until(lambda: decoy.poll() is not None, timeout=0.5)  # a signal would end it at once
        assert not ended, "pm signalled a process that is not its server"
    finally:
        decoy.kill()
        decoy.wait()


def test_an_internal_error_answers_an_incident_number_and_only_the_log_has_the_details(pyz, tmp_path):
    srv = Server(pyz, str(tmp_path / "store"), find_python("newest"))
    try:
        os.makedirs(os.path.join(srv.home, "broken"))
        with open(os.path.join(srv.home, "broken", "bundles"), "w") as handle:
            handle.write("a file where the revisions folder belongs\n")
        bundle = synthetic_bundle(str(tmp_path / "broken.zip"), "broken", b"x")
        with open(bundle, "rb") as handle:
            status, body = put(srv.record["port"], "/bundles/broken", handle.read())
        assert get(srv.record["port"], "/bundles")[0] == 200, "the server keeps serving"
    finally:
        srv.stop()
    error = json.loads(body.decode())["error"]
    assert status == 500 and error.startswith("internal error ") and error.endswith("the server's log has the details")
    assert srv.home not in error and "Error" not in error
    incident = error.split()[2].rstrip(":")
    with open(os.path.join(srv.home, "server.log")) as handle:
        log = handle.read()
    assert "internal error %s in PUT /bundles/broken" % incident in log and "NotADirectoryError" in log
