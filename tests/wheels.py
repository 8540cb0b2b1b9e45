"""Tiny pure-Python wheels written by hand, for a local package index that pip really reads."""
import base64
import hashlib
import http.server
import os
import re
import threading
import zipfile


def record_hash(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(folder, name, version, files, requires=()):
    """Write NAME-VERSION-py3-none-any.whl holding files (path -> text); return its path."""
    os.makedirs(folder, exist_ok=True)
    dist = "%s-%s" % (name.replace("-", "_"), version)
    meta = ["Metadata-Version: 2.1", "Name: %s" % name, "Version: %s" % version]
    meta += ["Requires-Dist: %s" % r for r in requires]
    contents = dict((p, t.encode()) for p, t in files.items())
    contents["%s.dist-info/METADATA" % dist] = ("\n".join(meta) + "\n").encode()
    contents["%s.dist-info/WHEEL" % dist] = b"Wheel-Version: 1.0\nGenerator: pm-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = "".join("%s,%s,%d\n" % (p, record_hash(d), len(d)) for p, d in sorted(contents.items()))
    contents["%s.dist-info/RECORD" % dist] = (record + "%s.dist-info/RECORD,,\n" % dist).encode()
    path = os.path.join(folder, "%s-py3-none-any.whl" % dist)
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in sorted(contents.items()):
            archive.writestr(member, data)
    return path


def local_index(folder):
    """A wheel folder with tinycalc 1.0 and 1.1 and gridkit 0.5 (needs tinycalc)."""
    make_wheel(folder, "tinycalc", "1.0", {"tinycalc/__init__.py": "VERSION = '1.0'\ndef add(a, b):\n    return a + b\n"})
    make_wheel(folder, "tinycalc", "1.1", {"tinycalc/__init__.py": "VERSION = '1.1'\ndef add(a, b):\n    return a + b\n"})
    make_wheel(folder, "gridkit", "0.5", {"gridkit/__init__.py": "from tinycalc import add\n"}, ["tinycalc"])
    return folder


def pip_env(folder):
    """Environment variables that point pip at the folder and nowhere else."""
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": folder, "PIP_CONFIG_FILE": os.devnull,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def normalized(name):
    return re.sub(r"[-_.]+", "-", name).lower()


class SimpleIndex(object):
    """A PEP 503 'simple' index of a wheel folder, served over HTTP on 127.0.0.1 by a real server
    in a thread, as a site mirror would serve it (pip treats loopback as a secure origin)."""

    def __init__(self, folder):
        self.folder = folder
        self.requests = []
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                index.requests.append(self.path)
                body = index.page(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                wheel = self.path.endswith(".whl")
                self.send_header("Content-Type", "application/octet-stream" if wheel else "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/simple/" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def page(self, path):
        wheels = sorted(n for n in os.listdir(self.folder) if n.endswith(".whl"))
        parts = [p for p in path.split("?")[0].split("/") if p]
        if parts == ["simple"]:
            names = sorted(set(normalized(w.split("-")[0]) for w in wheels))
            return "".join('<a href="%s/">%s</a>\n' % (n, n) for n in names).encode()
        if len(parts) == 2 and parts[0] == "simple":
            links = []
            for wheel in wheels:
                if normalized(wheel.split("-")[0]) == parts[1]:
                    with open(os.path.join(self.folder, wheel), "rb") as handle:
                        digest = hashlib.sha256(handle.read()).hexdigest()
                    links.append('<a href="/files/%s#sha256=%s">%s</a>\n' % (wheel, digest, wheel))
            return "".join(links).encode() if links else None
        if len(parts) == 2 and parts[0] == "files" and parts[1] in wheels:
            with open(os.path.join(self.folder, parts[1]), "rb") as handle:
                return handle.read()
        return None

    def pip_env(self):
        """Environment variables that point pip at this index and nowhere else."""
        return {"PIP_INDEX_URL": self.url, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

    def close(self):
        self.server.shutdown()
        self.server.server_close()
