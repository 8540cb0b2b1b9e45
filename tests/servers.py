"""A pm.pyz server for the tests: started with 'serve start' in a store of its own, asked over
real HTTP on 127.0.0.1, stopped at teardown; and bundles made to measure."""
import hashlib
import json
import os
import socket
import urllib.error
import urllib.request

import pm
from conftest import run_pm

TOKEN = "test-token-123"


class Server(object):
    """A pm.pyz server started in the background with 'serve start', stopped at teardown."""

    def __init__(self, pyz, home, python, token=TOKEN, *extra):
        self.pyz, self.home, self.python, self.token = pyz, home, python, token
        self.env = dict(os.environ, PM_HOME=home)
        args = ["serve", "start", "--port", "0"] + (["--token", token] if token else []) + list(extra)
        self.started = run_pm(python, pyz, args, self.env)
        assert self.started.returncode == 0, self.started.stderr
        with open(os.path.join(home, "server.pid")) as handle:
            self.record = json.load(handle)
        self.url = "http://127.0.0.1:%d" % self.record["port"]

    def request(self, method, path, body=None, headers=None, token=True, timeout=30):
        headers = dict(headers or {})
        if token and self.token:
            headers["Authorization"] = "Bearer " + (self.token if token is True else token)
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def stop(self):
        return run_pm(self.python, self.pyz, ["serve", "stop"], self.env)


def synthetic_bundle(path, name="load", payload=b"", extra=None):
    """A valid bundle written by pm's own BundleWriter: env.yml, min-deps.json and software/NAME/
    with run.sh and data.bin (payload); extra maps more member names to bytes."""
    writer = pm.PROBE.BundleWriter(path)
    members = {"env.yml": b"name: %s\ndependencies:\n  - python=3.12\n" % name.encode(),
               "min-deps.json": b'["python=3.12"]',
               "software/%s/run.sh" % name: b"echo ok\n",
               "software/%s/data.bin" % name: payload}
    members.update(extra or {})
    for member, data in members.items():
        writer.add_bytes(member, data)
    writer.finish(pm.PROBE.make_manifest(name, {}, {"dir": name}))
    return path


def sha256_of(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def exchange(port, raw):
    """Send a request, close the sending side, and read the whole answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    try:
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered and closed before the whole request went
        answer = b""
        while True:
            try:
                block = sock.recv(65536)
            except ConnectionResetError:
                break
            if not block:
                break
            answer += block
        return answer
    finally:
        sock.close()
