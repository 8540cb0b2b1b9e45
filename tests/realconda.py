"""Real conda for tests: 4.3.16 (on Python 2.7 and 3.6) and 25.11.1, built offline by real-conda/setup.sh
(copied here from the shared folder with its README, conda's license and the 25.11.1 wheel, so a plain
clone tests; PM_SHARED=/path/to/shared uses the shared original), once per machine into .real-conda/
(reused by later runs), and a site per test: its own HOME, condarc, envs and package caches, with a
local file:// channel and no network."""
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SETUP = os.path.join(os.environ["PM_SHARED"], "real-conda", "setup.sh") if os.environ.get("PM_SHARED") \
    else os.path.join(HERE, "real-conda", "setup.sh")
CACHE = os.environ.get("PM_REAL_CONDA") or os.path.join(ROOT, ".real-conda")

# key -> (conda version, Python it runs on)
CONDAS = {
    "4.3.16-py2.7": ("4.3.16", "2.7"),
    "4.3.16-py3.6": ("4.3.16", "3.6"),
    "25.11.1": ("25.11.1", "3.12"),
}


def build_all(find_python, keys=None):
    """Build (or reuse) the real condas (keys of CONDAS, default all), in parallel; return key -> path
    of its conda command."""
    if not os.path.isfile(SETUP):
        raise RuntimeError("no %s: unset PM_SHARED to use tests/real-conda, or point it at the shared folder" % SETUP)
    os.makedirs(CACHE, exist_ok=True)
    with locked(os.path.join(CACHE, "build.lock")):  # another worker (pytest-xdist) or run may be building them
        return build_unlocked(find_python, keys)


def build_unlocked(find_python, keys):
    started, procs = time.time(), {}
    for key in keys or sorted(CONDAS):
        version, python = CONDAS[key]
        env = dict(os.environ, PYTHON=find_python(python))
        for name in ("CONDA_EXE", "CONDA_PREFIX", "CONDARC", "PYTHONPATH"):
            env.pop(name, None)
        procs[key] = subprocess.Popen(["bash", SETUP, os.path.join(CACHE, key), version], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    built = {}
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise RuntimeError("building real conda %s failed: %s" % (key, err.strip()[-2000:]))
        built[key] = out.strip().splitlines()[-1]
    sys.stderr.write("real condas ready in %.1f s\n" % (time.time() - started))
    return built


@contextlib.contextmanager
def locked(path):
    """An exclusive lock (fcntl) on the file at path, held for the block: what the test runs and their
    workers (pytest-xdist) build in a shared place, one builds while the others wait."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class RealCondaSite(object):
    """One real conda as a user has it: conda on PATH, a condarc with local channels, and its own
    HOME, envs dir and package cache (conda writes ~/.conda and ~/.cache whatever the condarc says)."""

    def __init__(self, conda, base, channel_dirs, home=None, made=False):
        """A new site at base; made=True: the site another worker (pytest-xdist) made there, as it is."""
        self.conda_exe = conda
        self.root = os.path.dirname(os.path.dirname(conda))  # conda's base prefix: CACHE/<key>/venv
        self.version = CONDAS[os.path.basename(os.path.dirname(self.root))][0]
        self.base = base
        self.bin = os.path.join(base, "bin")
        self.envs = os.path.join(base, "envs")
        self.user_home = os.path.join(base, "home")
        self.home = home or os.path.join(base, "pm-home")
        self.channels = list(channel_dirs)
        self.condarc = os.path.join(base, "condarc")
        if not made:
            self.make()

    def make(self):
        for folder in (self.bin, self.envs, self.user_home):
            os.makedirs(folder, exist_ok=True)
        os.symlink(self.conda_exe, os.path.join(self.bin, "conda"))
        with open(self.condarc, "w") as handle:
            handle.write("channels:\n%s" % "".join("  - file://%s\n" % c for c in self.channels))
            handle.write("default_channels: []\nenvs_dirs:\n  - %s\npkgs_dirs:\n  - %s\n"
                         "solver: classic\nregister_envs: false\nadd_pip_as_python_dependency: false\n"
                         % (self.envs, os.path.join(self.base, "pkgs")))

    def env(self, **extra):
        env = dict(os.environ)
        for key in ("CONDA_EXE", "CONDA_PREFIX", "CONDA_DEFAULT_ENV", "CONDA_ENVS_PATH", "PM_TOKEN",
                    "CONDA_SHLVL", "PYTHONPATH"):
            env.pop(key, None)
        env["PATH"] = self.bin + os.pathsep + env.get("PATH", "")
        env.update(HOME=self.user_home, CONDARC=self.condarc, PM_HOME=self.home, CONDA_SOLVER="classic")
        # this machine has no GPU: conda 25's CUDA detection (a spawned Python in every command that
        # solves or reports, 0.5 s of CPU) finds none, and conda's own override says the same without it
        env["CONDA_OVERRIDE_CUDA"] = ""
        env.update(extra)
        return env

    def activated(self, prefix, **extra):
        """The environment that activation gives (4.3 installed by pip has no activate script):
        the env's bin first on PATH, CONDA_PREFIX and CONDA_DEFAULT_ENV set."""
        env = self.env(**extra)
        env["PATH"] = os.path.join(prefix, "bin") + os.pathsep + env["PATH"]
        env.update(CONDA_PREFIX=prefix, CONDA_DEFAULT_ENV=os.path.basename(prefix), CONDA_SHLVL="1")
        return env

    def conda(self, *args, check=True, env=None):
        proc = subprocess.run([self.conda_exe] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env or self.env(), universal_newlines=True, timeout=600)
        if check and proc.returncode != 0:
            raise AssertionError("conda %s failed: %s%s" % (" ".join(args), proc.stdout, proc.stderr))
        return proc

    def create(self, name, specs, requested=None):
        """conda create -n NAME (or -p PATH when name is a path)."""
        where = ["-p", name] if os.sep in name else ["-n", name]
        self.conda("create", "-y", "-q", *(where + list(specs)))
        return self.prefix(name)

    def prefix(self, name):
        return name if os.sep in name else os.path.join(self.envs, name)


def copy_environments(template, site):
    """template's environments and package cache, made by real conda, into site (a new site of the
    same conda) as conda would have made them there: every path conda wrote under template.base (its
    records in conda-meta, the cache's urls.txt and *.info.json) is rewritten to site.base. Only for
    packages whose files hold no prefix, as the tests' channels build them."""
    old, new = template.base.encode(), site.base.encode()
    for folder in ("envs", "pkgs"):
        shutil.copytree(os.path.join(template.base, folder), os.path.join(site.base, folder), symlinks=True,
                        dirs_exist_ok=True)
        for parent, _, files in os.walk(os.path.join(site.base, folder)):
            for filename in files:
                path = os.path.join(parent, filename)
                if os.path.islink(path) or not filename.endswith((".json", ".txt", "history")):
                    continue
                with open(path, "rb") as handle:
                    data = handle.read()
                if old in data:
                    with open(path, "wb") as handle:
                        handle.write(data.replace(old, new))


def conda_meta(prefix):
    """name -> (version, build) of an environment's conda-meta records."""
    found = {}
    for filename in os.listdir(os.path.join(prefix, "conda-meta")):
        if filename.endswith(".json"):
            with open(os.path.join(prefix, "conda-meta", filename)) as handle:
                record = json.load(handle)
            found[record["name"]] = (record["version"], record["build"])
    return found
