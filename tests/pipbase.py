"""A base conda environment as real projects have them: conda packages (one of which installs a
Python distribution, with its dist-info, as conda-built packages do; one that installs none), and
what real pip installed on top of it: a wheel from an index, a local wheel file, a git checkout,
and the software itself, editable. The environment's 'python' is a conda package wrapping a real
interpreter (its prefix placeholder relocated, its site-packages added by a sitecustomize), so the
packages pip put there import as they would from a conda-built Python."""
import os
import subprocess

import channels
import wheels

# An in-tree PEP 517 backend (standard library only: the test Pythons have no 'wheel' package, and
# nothing may be downloaded): build_wheel packs the package folder, build_editable a .pth naming it.
BACKEND = r'''
import base64, hashlib, os, zipfile

def _meta():
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "meta.txt")) as handle:
        name, version, root, script = handle.read().split()[:4]
    return name, version, os.path.join(os.path.dirname(os.path.abspath(__file__)), root), script

def _finder():
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "meta.txt")) as handle:
        return handle.read().split()[4:] == ["finder"]

# setuptools' way for a flat layout: a finder that maps the package alone, never the folder around it
FINDER = """import importlib.abc, importlib.util, os, sys
MAPPING = {%r: %r}
class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in MAPPING:
            return importlib.util.spec_from_file_location(name, os.path.join(MAPPING[name], "__init__.py"),
                                                          submodule_search_locations=[MAPPING[name]])
def install():
    sys.meta_path.append(_Finder())
"""

def _hash(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

def _wheel(folder, files):
    name, version, root, script = _meta()
    dist = "%s-%s" % (name, version)
    files["%s.dist-info/METADATA" % dist] = ("Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (name, version)).encode()
    files["%s.dist-info/WHEEL" % dist] = b"Wheel-Version: 1.0\nGenerator: pm-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    if script != "-":
        files["%s.dist-info/entry_points.txt" % dist] = ("[console_scripts]\n%s = %s:main\n" % (script, name)).encode()
    record = "".join("%s,%s,%d\n" % (p, _hash(d), len(d)) for p, d in sorted(files.items()))
    files["%s.dist-info/RECORD" % dist] = (record + "%s.dist-info/RECORD,,\n" % dist).encode()
    out = "%s-py3-none-any.whl" % dist
    with zipfile.ZipFile(os.path.join(folder, out), "w") as archive:
        for path, data in sorted(files.items()):
            archive.writestr(path, data)
    return out

def get_requires_for_build_wheel(config_settings=None):
    return []

get_requires_for_build_editable = get_requires_for_build_wheel

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name, version, root, script = _meta()
    files = {}
    for folder, _, names in os.walk(os.path.join(root, name)):
        for item in names:
            if item.endswith(".py"):
                path = os.path.join(folder, item)
                with open(path, "rb") as handle:
                    files[os.path.relpath(path, root).replace(os.sep, "/")] = handle.read()
    return _wheel(wheel_directory, files)

def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    name, version, root, script = _meta()
    if _finder():
        return _wheel(wheel_directory, {
            "__editable___%s_finder.py" % name: (FINDER % (name, os.path.join(root, name))).encode(),
            "__editable__.%s.pth" % name: ("import __editable___%s_finder; __editable___%s_finder.install()\n"
                                           % (name, name)).encode()})
    return _wheel(wheel_directory, {"__editable__.%s.pth" % name: (root + "\n").encode()})
'''

PYPROJECT = '[build-system]\nrequires = []\nbuild-backend = "pm_test_backend"\nbackend-path = ["."]\n'


def python_project(folder, name, version, root, code, script="-", finder=False):
    """A project pip builds with the in-tree backend: root/name/__init__.py holding code (editable
    through a finder mapping the package alone when finder, as setuptools does for a flat layout)."""
    os.makedirs(os.path.join(folder, root, name), exist_ok=True)
    files = {"pyproject.toml": PYPROJECT, "pm_test_backend.py": BACKEND,
             "meta.txt": "%s %s %s %s%s\n" % (name, version, root, script, " finder" if finder else ""),
             os.path.join(root, name, "__init__.py"): code}
    for path, text in files.items():
        with open(os.path.join(folder, path), "w") as handle:
            handle.write(text)
    return folder


def git_project(folder, name, version, code, script):
    """A project in a git repository with one commit; return its git+file URL at that commit."""
    python_project(folder, name, version, ".", code, script)
    env = dict(os.environ, GIT_AUTHOR_NAME="pm", GIT_AUTHOR_EMAIL="pm@example.org", GIT_COMMITTER_NAME="pm",
               GIT_COMMITTER_EMAIL="pm@example.org", HOME=folder)
    for command in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "gitkit"]):
        subprocess.run(["git"] + command, cwd=folder, env=env, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, env=env, check=True, stdout=subprocess.PIPE,
                            universal_newlines=True).stdout.strip()
    return "git+file://%s@%s" % (folder, commit)


def short_version(python):
    return subprocess.run([python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                          stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout.strip()


def python_channel(channel, python):
    """A channel with 'python' (a wrapper of the real interpreter), 'numlite' (a conda package that
    installs the Python distribution numlite 2.0) and 'oddlib' (no Python in it)."""
    version = short_version(python)
    short = ".".join(version.split(".")[:2])
    site = "lib/python%s/site-packages" % short
    wrapper = ('#!/bin/sh\nPYTHONPATH="%s/lib/pm-site${PYTHONPATH:+:$PYTHONPATH}" exec %s "$@"\n'
               % (channels.PLACEHOLDER, python)).encode()
    custom = ('import site\nsite.addsitedir("%s/%s")\n' % (channels.PLACEHOLDER, site)).encode()
    channels.make_linked_package(channel, "linux-64", "python", version, "h0_0", [],
                                 {"bin/python": wrapper, "lib/pm-site/sitecustomize.py": custom},
                                 {"bin/python": "text", "lib/pm-site/sitecustomize.py": "text"})
    numlite = {site + "/numlite/__init__.py": b"VERSION = '2.0'\n",
               site + "/numlite-2.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: numlite\nVersion: 2.0\n",
               site + "/numlite-2.0.dist-info/INSTALLER": b"conda\n"}
    channels.make_linked_package(channel, "linux-64", "numlite", "2.0", "py%s_0" % short.replace(".", ""),
                                 ["python"], numlite)
    channels.make_linked_package(channel, "noarch", "oddlib", "0.1", "h0_0", [], {"share/oddlib.txt": b"odd\n"},
                                 noarch="generic")
    channels.index_channel(channel)
    return channel


SOFTWARE_CHECK = '''"""pipsim's test: every package the base had, each at the base's version, and pipsim itself
imported from this very tree (never a release of it)."""
import os
import subprocess
import sys

import gitkit
import localkit
import numlite
import pipsim
import tinycalc

try:
    from importlib.metadata import version
except ImportError:  # Python < 3.8
    version = None

here = os.path.dirname(os.path.abspath(__file__))
print("pipsim from", pipsim.__file__, "tinycalc", tinycalc.VERSION, "numlite", numlite.VERSION)
assert os.path.abspath(pipsim.__file__).startswith(here + os.sep), "pipsim is not the migrated tree's"
assert tinycalc.VERSION == "1.0" and numlite.VERSION == "2.0"
assert localkit.VALUE == 42 and gitkit.VALUE == "git"
if version:
    assert version("pipsim") == "0.6.0.post16", version("pipsim")
out = subprocess.run(["gitkit-hello"], stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
assert out.strip() == "hello from gitkit", out
print("all packages as on the base")
'''


def software(folder):
    """pipsim: a src-layout project, its test check.py at the top."""
    python_project(folder, "pipsim", "0.6.0.post16", "src", "VERSION = '0.6.0.post16'\n")
    with open(os.path.join(folder, "check.py"), "w") as handle:
        handle.write(SOFTWARE_CHECK)
    return folder


def index_folder(folder, numlite_versions=("2.0", "2.1")):
    """The site's wheel mirror: tinycalc 1.0 and 1.1 (wheels.local_index) and numlite."""
    wheels.local_index(folder)
    for version in numlite_versions:
        wheels.make_wheel(folder, "numlite", version, {"numlite/__init__.py": "VERSION = %r\n" % version})
    return folder


def pip_into(python, prefix, args, env=None):
    """Real pip of the real interpreter, installing into the conda prefix (--prefix), offline."""
    command = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation",
               "--prefix", prefix] + list(args)
    proc = subprocess.run(command, env=dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1",
                                            **(env or {})),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
    assert proc.returncode == 0, proc.stdout
    return proc


def build_base(work, site, python, editable=True):
    """In a real conda site: the environment pipsim-env (python, numlite, oddlib from conda), then
    with real pip tinycalc 1.0 from the index, localkit from a wheel file, gitkit from a git
    checkout, and pipsim (work/src/pipsim) editable (or, editable=False, installed from its folder as
    a copy). Returns the software folder."""
    index = index_folder(os.path.join(work, "index"))
    local = os.path.join(work, "local-wheels")
    wheels.make_wheel(local, "localkit", "0.2", {"localkit/__init__.py": "VALUE = 42\n"})
    url = git_project(os.path.join(work, "gitkit"), "gitkit", "0.3",
                      "VALUE = 'git'\n\ndef main():\n    print('hello from gitkit')\n", "gitkit-hello")
    soft = software(os.path.join(work, "src", "pipsim"))
    prefix = site.create("pipsim-env", ["python", "numlite", "oddlib"])
    pip_into(python, prefix, ["--find-links", index, "tinycalc==1.0"])
    pip_into(python, prefix, [os.path.join(local, "localkit-0.2-py3-none-any.whl")])
    pip_into(python, prefix, [url])
    pip_into(python, prefix, ["-e", soft] if editable else [soft])
    check = subprocess.run([os.path.join(prefix, "bin", "python"), "check.py"], cwd=soft, env=site.activated(prefix),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    if editable:  # a copy in site-packages is not the tree, which check.py insists on
        assert check.returncode == 0, "the base itself must pass: " + check.stdout
    return soft
