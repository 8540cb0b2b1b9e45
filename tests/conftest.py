"""Shared fixtures: real interpreters, a freshly built pm.pyz, and conda stand-in set-ups."""
import functools
import glob
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

import channels
from bundles import rewrite_bundle  # noqa: F401 (tests import it from here)
import condastandin
import realconda

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)


def pytest_configure(config):
    if not os.path.isdir(channels.REAL_ENVS):
        pytest.exit("the real conda fixtures are not at %s: unset PM_SHARED to use the copies in "
                    "tests/fixtures, or point it at the shared folder" % os.path.abspath(channels.REAL_ENVS),
                    returncode=2)


def once_per_run(tmp_path_factory, name, build):
    """build(folder) -> a JSON value, made once per run in a new folder: alone, the run's own; under
    pytest-xdist, one beside the workers' own that they share (the first builds it holding a lock, the
    others wait and read what it kept; a build that failed leaves nothing, the next worker tries anew)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build(tmp_path_factory.mktemp(name))
    import pathlib
    import tempfile
    shared = tmp_path_factory.getbasetemp().parent  # the run's: its workers' base temps are in it
    kept = shared / (name + ".json")
    with realconda.locked(str(shared / (name + ".lock"))):
        if not kept.is_file():
            value = build(pathlib.Path(tempfile.mkdtemp(prefix=name, dir=str(shared))))
            kept.write_text(json.dumps(value))
        return json.loads(kept.read_text())


@pytest.fixture(scope="session")
def warm_code_cache(tmp_path_factory, pyz):
    """An XDG_CACHE_HOME holding the code pm.pyz (as this tree builds it) keeps for each interpreter
    the tests run it under, filled once per run; own_store copies it for each test."""
    cache = str(tmp_path_factory.mktemp("code-cache") / "cache")
    env = dict((k, v) for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE")
    env["XDG_CACHE_HOME"] = cache
    for version in ("2.7", "3.6", "3.11", "3.12", "newest"):
        for args in (["--help"], ["pack", "--help"]):  # pm_probe alone, under 2.7
            subprocess.run([find_python(version), pyz] + args, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=120)
    return cache


@pytest.fixture(autouse=True)
def own_store(tmp_path, warm_code_cache):
    """Every test has its own PM_HOME, TMPDIR and XDG_CACHE_HOME: none reads or writes the developer's
    ~/.platform_migrator or ~/.cache, and what pm keeps in TMPDIR (a bundle it could not send) goes with
    the test. The code cache starts as a copy of one filled once per run (warm_code_cache). TMPDIR is
    short (Chromium's socket path must fit in 108 bytes) and removed after the test. Python writes and
    reads bytecode as it does for users: a PYTHONDONTWRITEBYTECODE of the developer's is left out, or
    every pm.pyz run would compile pm.py anew (0.15 s of CPU each). (No monkeypatch here: a test's own
    monkeypatching is undone before this teardown runs.)"""
    import tempfile
    saved = dict((key, os.environ.get(key)) for key in ("PM_HOME", "TMPDIR", "XDG_CACHE_HOME",
                                                        "PYTHONDONTWRITEBYTECODE"))
    own_tmp = tempfile.mkdtemp(prefix="pm-t")
    cache = str(tmp_path / "own-cache")
    shutil.copytree(warm_code_cache, cache, symlinks=True)
    os.environ.update(PM_HOME=str(tmp_path / "own-store"), TMPDIR=own_tmp, XDG_CACHE_HOME=cache)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    tempfile.tempdir = None  # tempfile reads TMPDIR anew
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    tempfile.tempdir = None
    shutil.rmtree(own_tmp, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def find_python(version):
    """The interpreter for a version ('2.7', '3.6', 'newest'), from pyenv or PATH; fail if missing."""
    roots = []
    try:
        roots.append(subprocess.run(["pyenv", "root"], stdout=subprocess.PIPE, universal_newlines=True).stdout.strip())
    except OSError:
        pass
    roots.append(os.path.expanduser("~/.pyenv"))
    if version == "newest":
        found = []
        for root in roots:
            for path in glob.glob(os.path.join(root, "versions", "3.*", "bin", "python3")):
                parts = os.path.basename(os.path.dirname(os.path.dirname(path))).split(".")
                if all(p.isdigit() for p in parts):
                    found.append((tuple(int(p) for p in parts), path))
        if found:
            return max(found)[1]
        version = "3"
    for root in roots:
        matches = sorted(glob.glob(os.path.join(root, "versions", version + ".*", "bin", "python" + version)))
        if matches:
            return matches[-1]
    on_path = shutil.which("python" + version)
    if on_path:
        return on_path
    pytest.fail("no Python %s found through pyenv or PATH: install it (pyenv install %s)" % (version, version))


INTERPRETERS = {"2.7": "2.7", "3.6": "3.6", "newest": "newest"}


@pytest.fixture(scope="session")
def pyz(tmp_path_factory):
    """pm.pyz built from this tree."""
    target = str(tmp_path_factory.mktemp("build") / "pm.pyz")
    subprocess.run([sys.executable, os.path.join(ROOT, "build_zipapp.py"), "-o", target],
                   check=True, stdout=subprocess.PIPE)
    return target


class CondaSite(object):
    """A conda stand-in installation: base prefix, channels, and the environment for subprocesses."""

    def __init__(self, base, channel_dirs, home):
        self.root = os.path.join(base, "conda")
        self.bin = os.path.join(base, "bin")
        self.channels = list(channel_dirs)
        self.home = home
        os.makedirs(self.bin, exist_ok=True)
        os.makedirs(os.path.join(self.root, "envs"), exist_ok=True)
        os.makedirs(os.path.join(self.root, "conda-meta"), exist_ok=True)
        wrapper = os.path.join(self.bin, "conda")
        with open(wrapper, "w") as handle:
            handle.write('#!/bin/sh\nexec "%s" "%s" "$@"\n' % (sys.executable, os.path.join(HERE, "condastandin.py")))
        os.chmod(wrapper, 0o755)

    def env(self, **extra):
        env = dict(os.environ)
        for key in ("CONDA_EXE", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "PM_TOKEN"):
            env.pop(key, None)
        env["PATH"] = self.bin + os.pathsep + env.get("PATH", "")
        env["PM_STANDIN_ROOT"] = self.root
        env["PM_STANDIN_CHANNELS"] = ",".join(self.channels)
        env["PM_HOME"] = self.home
        env.update(extra)
        return env

    def create(self, name, specs, requested=None):
        old = dict(os.environ)
        os.environ["PM_STANDIN_ROOT"] = self.root
        try:
            condastandin.create_env(self.prefix(name), specs, requested, self.channels)
        finally:
            os.environ.clear()
            os.environ.update(old)
        return self.prefix(name)

    def prefix(self, name):
        return os.path.join(self.root, "envs", name)


@pytest.fixture(scope="session")
def example_channel(tmp_path_factory):
    """The example channel, written once per run (once_per_run); read-only."""
    return once_per_run(tmp_path_factory, "example-channel", lambda folder: channels.example_channel(str(folder)))


@pytest.fixture(scope="session")
def heatsim_template(tmp_path_factory, real_condas, example_channel):
    """The example project's environment 'heatsim-env', created by real conda 25.11.1 once per run
    (once_per_run); read-only: conda_site copies it."""
    def build(folder):
        site = realconda.RealCondaSite(real_condas["25.11.1"], str(folder / "site"), [example_channel])
        site.create("heatsim-env", channels.EXAMPLE_SPECS)
        return site.base
    base = once_per_run(tmp_path_factory, "heatsim-template", build)
    return realconda.RealCondaSite(real_condas["25.11.1"], base, [example_channel], made=True)


@pytest.fixture
def conda_site(real_site, tmp_path, heatsim_template):
    """A real conda 25.11.1 with the example channel and the example project's environment 'heatsim-env'
    (real conda's, made once and copied here with its records' paths rewritten: tests/realconda.py);
    its own HOME, condarc, envs and package cache."""
    site = real_site("25.11.1", "conda", home=str(tmp_path / "pm-home"))
    realconda.copy_environments(heatsim_template, site)
    return site


@pytest.fixture(scope="session")
def heatsim_packs(tmp_path_factory, pyz, heatsim_template):
    """python ('2.7', 'newest') -> examples/heatsim packed from heatsim-env under it, once per run
    (once_per_run), on first use; read-only: tests take a copy (heatsim_bundle)."""
    made = {}

    def build(python, work):
        software = str(work / "src" / "heatsim")
        shutil.copytree(os.path.join(ROOT, "examples", "heatsim"), software, symlinks=True)
        out = str(work / ("heatsim-%s.zip" % python))
        proc = run_pm(find_python(python), pyz, ["pack", "-d", software, "-e", "heatsim-env", "-o", out, "--yes"],
                      heatsim_template.env(HOME=str(work / "home"), PM_HOME=str(work / "pm-home")))  # the template's are shared
        assert proc.returncode == 0, proc.stderr
        os.chmod(out, 0o444)
        return out

    def packed(python):
        if python not in made:
            made[python] = once_per_run(tmp_path_factory, "heatsim-bundle-" + python,
                                        functools.partial(build, python))
        return made[python]
    return packed


@pytest.fixture
def heatsim_bundle(heatsim_packs, tmp_path):
    """bundle(python='2.7') -> this test's own copy (tmp_path/b.zip) of the example packed under python."""
    def bundle(python="2.7", name="b.zip"):
        target = str(tmp_path / name)
        shutil.copyfile(heatsim_packs(python), target)
        return target
    return bundle


@pytest.fixture(scope="session")
def real_condas():
    """key ('4.3.16-py2.7', '4.3.16-py3.6', '25.11.1') -> a real conda command, built once per run."""
    return realconda.build_all(find_python)


@pytest.fixture
def real_site(tmp_path, real_condas, example_channel):
    """make(key, label='site', channels=None): a real conda site of its own under tmp_path/label."""
    def make(key, label="site", channel_dirs=None, home=None):
        return realconda.RealCondaSite(real_condas[key], str(tmp_path / label), channel_dirs or [example_channel],
                                       home)
    return make


@pytest.fixture
def example_software(tmp_path):
    """A copy of the example project, to pack and migrate."""
    target = str(tmp_path / "src" / "heatsim")
    shutil.copytree(os.path.join(ROOT, "examples", "heatsim"), target, symlinks=True)
    return target


def attempt_dirs(home, name):
    """A software's migration attempts in a store, oldest first."""
    return sorted(glob.glob(os.path.join(home, name, "2*")))


def read_result(attempt):
    with open(os.path.join(attempt, "result.json")) as handle:
        return json.load(handle)


def no_conda_env(tmp_path):
    """A user's environment on a target with no conda at all: system PATH, HOME and PM_HOME of the test's own."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "PM_HOME": str(tmp_path / "store"),
            "LANG": "C.UTF-8"}


def wait_until(predicate, timeout=30, every=0.05):
    """Poll predicate() until it returns something true or timeout seconds pass; return its last value
    (the caller asserts on it, so a test waits only as long as the behaviour takes)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(every)


def read_bytes(path):
    with open(str(path), "rb") as handle:
        return handle.read()


def run_pm(python, pyz_path, args, env, stdin=None, timeout=120):
    """Run pm.pyz under a given interpreter; return the completed process (text)."""
    return subprocess.run([python, pyz_path] + list(args), input=stdin if stdin is not None else "",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                          universal_newlines=True, timeout=timeout)


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 256 KiB filesystem (tmpfs) to fill up (the store's copy of the probe must fit); mounting it needs root, as CI has."""
    mount = tmp_path / "tiny-disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    if proc.returncode != 0:
        pytest.fail("cannot mount a 256 KiB tmpfs (root needed): %s" % proc.stdout.strip())
    try:
        yield str(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)])


@pytest.fixture(scope="session")
def original_tool(tmp_path_factory):
    """platform-migrator 1.1.0 itself, installed offline from its PyPI sdist (tests/fixtures/original,
    with PyYAML 5.3.1) into a throwaway Python 3.6 venv, once per run. Its setup.py writes its
    package-managers.ini into HOME/.platform_migrator/config, as its pip install did for users."""
    work = tmp_path_factory.mktemp("original")
    venv, home = work / "venv", work / "home"
    home.mkdir()
    subprocess.run([find_python("3.6"), "-m", "venv", str(venv)], check=True)
    env = dict(os.environ, HOME=str(home), PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--find-links",
                           os.path.join(HERE, "fixtures", "original"), "platform-migrator==1.1.0"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout
    probe = glob.glob(str(venv / "lib" / "python3.6" / "site-packages" / "platform_migrator" / "base_sys_script.py"))
    config = home / ".platform_migrator" / "config" / "package-managers.ini"
    assert probe and config.is_file(), "the original's install did not go as its users saw it"
    return {"command": str(venv / "bin" / "platform-migrator"), "probe": probe[0], "config": str(config)}


@pytest.fixture(scope="session")
def pip_base(tmp_path_factory, pyz, real_condas):
    """The base, built once: its software folder, its wheel mirror, and bundles packed with
    --with-packages under Python 2.7 and the newest 3.x, and without under 3.x (once_per_run)."""
    return once_per_run(tmp_path_factory, "pip-base", functools.partial(build_pip_base, pyz=pyz, real_condas=real_condas))


def build_pip_base(folder, pyz, real_condas):
    import pipbase
    work = str(folder)
    python = find_python("3.11")
    channel = pipbase.python_channel(os.path.join(work, "channel"), python)
    site = realconda.RealCondaSite(real_condas["25.11.1"], os.path.join(work, "conda"), [channel])
    software = pipbase.build_base(work, site, python)
    bundles, outputs = {}, {}
    for label, interpreter, extra in (("carried-2.7", "2.7", ["--with-packages"]),
                                      ("carried-3", "newest", ["--with-packages"]), ("plain-3", "newest", [])):
        bundles[label] = os.path.join(work, label + ".zip")
        proc = run_pm(find_python(interpreter), pyz, ["pack", "-d", software, "-e", "pipsim-env", "-o", bundles[label],
                                                      "--yes"] + extra, site.env(), timeout=300)
        assert proc.returncode == 0, proc.stderr
        outputs[label] = proc.stderr
    return {"work": work, "software": software, "index": os.path.join(work, "index"), "bundles": bundles,
            "pack_output": outputs, "prefix": site.prefix("pipsim-env")}
