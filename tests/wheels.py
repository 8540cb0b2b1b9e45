"""Tiny pure-Python wheels written by hand, for a local package index that pip really reads."""
import base64
import hashlib
import os
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
