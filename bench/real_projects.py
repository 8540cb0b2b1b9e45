"""Issue 27's "Done when", measured on real projects.

Five real open-source scientific Python projects, each with its own test suite, in a base made the
way their developers work: a real conda 25.11.1 environment (tests/realconda.RealCondaSite, conda's
'python' a wrapper of a real CPython 3.11 from pyenv, tests/pipbase.python_channel; plus 'oddlib', a
conda package with no Python in it), the project's dependencies and pytest pip-installed into it from
PyPI, and the project itself `pip install -e .` from its unpacked PyPI sdist. The base must pass the
project's tests (a chosen subset where the suite is long) before it is used; it is built once and
reused (bases/NAME/base.json marks it built and checked).

With the pm.pyz given by --pyz, each project is packed three ways: a normal bundle, an "older format"
copy of it (python-dists.json and wheels/ removed, the manifest's sums recomputed, as
tests/bundles.rewrite_bundle does) and a --with-packages bundle. Then:

  pip-normal, pip-older   migrate with package_managers = pip, online (real PyPI), into a fresh target
                          site (its own HOME, PM_HOME, TMPDIR), the project's tests as the test config
  airgap-linker           (three projects) the --with-packages bundle, the base moved away, under
                          `unshare -n` with no index (PIP_CONFIG_FILE=/dev/null, PIP_NO_INDEX=1),
                          migrate --no-conda: pm's own linker
  airgap-conda            the same on a real conda 25.11.1 target site with no channels

For each it records: passed or not; pm's rows (`pm.pyz report NAME --json`) at the base's version,
drifted (with why), not installed (with why); base packages with no row at all; what is really in the
environment afterwards against the base's distributions; the `pip install` calls in commands.log;
wall time. Prints a markdown table; writes WORK/results-LABEL.json.

    .venv/bin/python bench/real_projects.py --pyz /path/to/pm.pyz --label NAME [--work DIR (default .real-projects)] [--jobs 2]
        [--projects boule,sgp4] [--kinds pip-normal,airgap-linker] [--rebuild-bases] [--fresh-pip-cache]

Only the standard library and the repo's tests/ helpers (realconda, pipbase, channels); pip reaches
PyPI. Everything is written under --work (never /tmp). The machine's global pip configuration
(find-links, file:// extra indexes, constraints) is switched off for every pip call here and in pm's
migrations (PIP_CONFIG_FILE=/dev/null, PIP_FIND_LINKS unset), so online means real PyPI only.
"""
import argparse
import concurrent.futures
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESTS = os.path.join(ROOT, "tests")
sys.path.insert(0, TESTS)
os.environ.setdefault("PM_REAL_CONDA", "/work/main/.real-conda")

from bundles import rewrite_bundle  # noqa: E402  (tests/ helpers, from this tree)
from conftest import find_python  # noqa: E402
import pipbase  # noqa: E402
import realconda  # noqa: E402

PYTHON_VERSION = "3.11"
PYTEST = "python -m pytest -q -p no:cacheprovider"

# name, version, field, what pip installs beside the project (and the extras of `pip install -e .[X]`),
# the test command (run in the project's tree), and whether it takes part in the air-gapped runs.
PROJECTS = [
    {"name": "boule", "version": "0.5.0", "field": "geodesy (reference ellipsoids, normal gravity)",
     "pip": ["pytest", "pymap3d"], "extras": "",
     "tests": PYTEST + " boule/tests", "airgap": True},
    {"name": "sgp4", "version": "2.27", "field": "astrodynamics (satellite orbit propagation; C++ extension built in the tree)",
     "pip": ["pytest", "numpy"], "extras": "",
     "tests": PYTEST + " sgp4/tests.py", "airgap": True},
    {"name": "networkx", "version": "3.4.2", "field": "network science (graph algorithms)",
     "pip": [], "extras": "[test]",
     "tests": PYTEST + " -o addopts= networkx/classes networkx/algorithms/shortest_paths"
              " networkx/algorithms/components networkx/algorithms/tests/test_cycles.py", "airgap": False},
    {"name": "pint", "version": "0.24.4", "field": "physical units and quantities (metrology)",
     "pip": [], "extras": "[testbase]",
     "tests": PYTEST + " pint/testsuite/test_quantity.py pint/testsuite/test_systems.py"
              " pint/testsuite/test_definitions.py pint/testsuite/test_converters.py pint/testsuite/test_errors.py"
              " pint/testsuite/test_util.py", "airgap": False},
    {"name": "lmfit", "version": "1.3.4", "field": "data fitting and statistics (non-linear least squares)",
     "pip": [], "extras": "[test]",
     "tests": PYTEST + " -o addopts= tests/test_basicfit.py tests/test_model.py tests/test_parameters.py"
              " tests/test_confidence.py tests/test_builtin_models.py tests/test_lineshapes.py", "airgap": True},
]
KINDS = ["pip-normal", "pip-older", "airgap-linker", "airgap-conda"]

LOCK = threading.Lock()


def say(text):
    with LOCK:
        sys.stderr.write("[%s] %s\n" % (time.strftime("%H:%M:%S"), text))
        sys.stderr.flush()


def normalized(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_env(extra=None, base=None):
    """An environment (this process's, or base) with the machine's pip configuration switched off: real
    PyPI only; then extra."""
    env = dict(os.environ if base is None else base)
    for key in list(env):
        if key.startswith("PIP_") and key not in ("PIP_CERT", "PIP_DEFAULT_TIMEOUT"):
            del env[key]
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.update(extra or {})
    return env


def run(command, log, env=None, cwd=None, timeout=1800):
    """Run a command, its output appended to log; return (exit code, seconds, output)."""
    started = time.time()
    with open(log, "a") as handle:
        handle.write("\n$ %s\n" % " ".join(command))
        handle.flush()
        proc = subprocess.run(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True, timeout=timeout)
        handle.write(proc.stdout)
    return proc.returncode, time.time() - started, proc.stdout


# ---------------------------------------------------------------- sdists and bases

def fetch_sdist(project, folder):
    """The project's sdist from PyPI (its simple index's JSON form), checked against the index's sha256."""
    filename = "%s-%s.tar.gz" % (project["name"], project["version"])
    path = os.path.join(folder, filename)
    if os.path.isfile(path):
        return path
    os.makedirs(folder, exist_ok=True)
    request = urllib.request.Request("https://pypi.org/simple/%s/" % project["name"],
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        files = json.load(answer)["files"]
    found = [f for f in files if f["filename"] == filename]
    if not found:
        raise RuntimeError("no %s on PyPI" % filename)
    with urllib.request.urlopen(found[0]["url"], timeout=300) as answer:
        data = answer.read()
    if hashlib.sha256(data).hexdigest() != found[0]["hashes"]["sha256"]:
        raise RuntimeError("%s does not match PyPI's sha256" % filename)
    with open(path + ".part", "wb") as handle:
        handle.write(data)
    os.rename(path + ".part", path)
    return path


def interpreter(work):
    """A venv of pyenv's Python 3.11 with nothing in it (no pip, no setuptools): the real interpreter the
    conda 'python' package wraps, so the base sees only what conda and pip put in its prefix."""
    venv = os.path.join(work, "py%s" % PYTHON_VERSION.replace(".", ""))
    python = os.path.join(venv, "bin", "python")
    if not os.path.isfile(python):
        subprocess.run([find_python(PYTHON_VERSION), "-m", "venv", "--without-pip", venv], check=True)
    return python


def conda_site(conda, folder, channels):
    """A RealCondaSite, reusable: its conda link is made anew."""
    link = os.path.join(folder, "bin", "conda")
    if os.path.lexists(link):
        os.remove(link)
    return realconda.RealCondaSite(conda, folder, channels)


def site_packages(prefix):
    return os.path.join(prefix, "lib", "python%s" % PYTHON_VERSION, "site-packages")


def installed_dists(prefix):
    """normalized name -> (name, version) of every *.dist-info / *.egg-info in the prefix's site-packages."""
    found = {}
    folder = site_packages(prefix)
    if not os.path.isdir(folder):
        return found
    for entry in os.listdir(folder):
        if not entry.endswith((".dist-info", ".egg-info")):
            continue
        meta = os.path.join(folder, entry, "METADATA" if entry.endswith(".dist-info") else "PKG-INFO")
        if os.path.isfile(os.path.join(folder, entry)):
            meta = os.path.join(folder, entry)
        if not os.path.isfile(meta):
            continue
        name = version = None
        with open(meta, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("Name:") and name is None:
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("Version:") and version is None:
                    version = line.split(":", 1)[1].strip()
                elif not line.strip():
                    break
        if name:
            found[normalized(name)] = (name, version)
    return found


def base_paths(work, project):
    folder = os.path.join(work, "bases", project["name"])
    return {"folder": folder, "away": folder + ".away", "channel": os.path.join(folder, "channel"),
            "site": os.path.join(folder, "conda"), "src": os.path.join(folder, "src", project["name"]),
            "record": os.path.join(folder, "base.json"), "log": os.path.join(folder, "build.log")}


def restore_base(paths):
    if os.path.isdir(paths["away"]) and not os.path.exists(paths["folder"]):
        os.rename(paths["away"], paths["folder"])


def ensure_base(project, work, conda, python, rebuild=False):
    """The base, built and checked once: conda env NAME-env (python, oddlib), pip's installs from PyPI,
    the project editable from its sdist, and its tests passing there."""
    paths = base_paths(work, project)
    restore_base(paths)
    if os.path.isfile(paths["record"]) and not rebuild:
        with open(paths["record"]) as handle:
            record = json.load(handle)
        if record.get("checked") and record.get("tests") != project["tests"]:
            record = check_base(project, paths, conda, record)
        if record.get("checked"):
            say("%s: base reused (%s; tests: %s)" % (project["name"], paths["folder"], record["test_summary"]))
            return record
    say("%s: building the base" % project["name"])
    started = time.time()
    shutil.rmtree(paths["folder"], ignore_errors=True)
    os.makedirs(os.path.dirname(paths["src"]))
    sdist = fetch_sdist(project, os.path.join(work, "sdists"))
    with tarfile.open(sdist) as archive:
        archive.extractall(os.path.dirname(paths["src"]))
    os.rename(os.path.join(os.path.dirname(paths["src"]), "%s-%s" % (project["name"], project["version"])),
              paths["src"])
    pipbase.python_channel(paths["channel"], python)
    site = conda_site(conda, paths["site"], [paths["channel"]])
    prefix = site.create("%s-env" % project["name"], ["python", "oddlib"])
    env = pip_env({"PIP_CACHE_DIR": os.path.join(work, "pip-cache"), "HOME": site.user_home,
                   "TMPDIR": os.path.join(paths["folder"], "tmp")})
    os.makedirs(env["TMPDIR"])
    # pip of pyenv's interpreter installs into the conda prefix; --ignore-installed, as that interpreter's
    # own site-packages are not the environment's
    command = [find_python(PYTHON_VERSION), "-m", "pip", "install", "--prefix", prefix, "--ignore-installed",
               "--no-warn-script-location"] + project["pip"] + ["-e", paths["src"] + project["extras"]]
    code, seconds, out = run(command, paths["log"], env=env, timeout=900)
    if code != 0:
        raise RuntimeError("%s: pip install into the base failed:\n%s" % (project["name"], out[-3000:]))
    shutil.rmtree(env["TMPDIR"], ignore_errors=True)
    dists = installed_dists(prefix)
    record = {"project": project["name"], "version": project["version"], "prefix": prefix, "software": paths["src"],
              "pip_command": " ".join(command), "dists": dict((k, v[1]) for k, v in dists.items()),
              "dist_names": dict((k, v[0]) for k, v in dists.items()),
              "conda": dict((k, v[0]) for k, v in realconda.conda_meta(prefix).items())}
    record = check_base(project, paths, conda, record)
    record["seconds"] = round(time.time() - started, 1)
    with open(paths["record"], "w") as handle:
        json.dump(record, handle, indent=1)
    say("%s: base built in %.0f s, %d distributions; tests: %s" % (project["name"], record["seconds"], len(dists),
                                                                   record["test_summary"]))
    return record


def check_base(project, paths, conda, record):
    """The project's tests in the base (the conda env activated, in the project's tree); they must pass."""
    site = conda_site(conda, paths["site"], [paths["channel"]])
    tmp = os.path.join(paths["folder"], "tmp")
    os.makedirs(tmp, exist_ok=True)
    code, seconds, out = run(["/bin/sh", "-c", project["tests"]], paths["log"],
                             env=site.activated(record["prefix"], TMPDIR=tmp), cwd=paths["src"], timeout=900)
    shutil.rmtree(tmp, ignore_errors=True)
    if code != 0:
        raise RuntimeError("%s: the project's tests fail in the base itself: %s" % (project["name"], out[-3000:]))
    record.update(tests=project["tests"], test_summary=out.strip().splitlines()[-1] if out.strip() else "",
                  test_seconds=round(seconds, 1), checked=True)
    with open(paths["record"], "w") as handle:
        json.dump(record, handle, indent=1)
    return record


# ---------------------------------------------------------------- bundles

def older_format(members, manifest):
    for name in [n for n in members if n == "python-dists.json" or n.startswith("wheels/")]:
        del members[name]
        del manifest["members"][name]


def pack_all(project, base, work, conda, pyz, folder):
    """normal.zip, older.zip and with-packages.zip of the base, packed by this pm.pyz."""
    paths = base_paths(work, project)
    site = conda_site(conda, paths["site"], [paths["channel"]])
    bundles, info = {}, {}
    kinds = [("normal", [])] + ([("with-packages", ["--with-packages"])] if project["airgap"] else [])
    for kind, extra in kinds:
        out = os.path.join(folder, kind + ".zip")
        code, seconds, text = run([sys.executable, pyz, "pack", "-d", base["software"], "-e", base["prefix"], "-o", out,
                                   "--yes"] + extra, os.path.join(folder, "pack.log"),
                                  env=pip_env({"TMPDIR": os.path.join(folder, "tmp")}, base=site.env()), timeout=900)
        info[kind] = {"exit": code, "seconds": round(seconds, 1),
                      "mib": round(os.path.getsize(out) / 1048576.0, 1) if os.path.isfile(out) else None}
        if code != 0:
            info[kind]["error"] = text.strip().splitlines()[-5:]
            say("%s: pack %s FAILED: %s" % (project["name"], kind, " | ".join(info[kind]["error"])))
            continue
        bundles[kind] = out
    if "normal" in bundles:
        bundles["older"] = rewrite_bundle(bundles["normal"], os.path.join(folder, "older.zip"), older_format)
    say("%s: packed %s" % (project["name"], ", ".join("%s %s MiB in %.0f s" % (k, v["mib"], v["seconds"])
                                                     for k, v in sorted(info.items()) if v["exit"] == 0)))
    return bundles, info


# ---------------------------------------------------------------- migrations

CONFIG = """[{name}]
output_dir = {out}
package_managers = {managers}
tests = suite
[test_suite]
exec = {tests}
timeout = 900
"""


def classify(rows, base):
    """pm's rows against the base: at its version, drifted, not installed; and the base's packages with no row."""
    at, drifted, missing = [], [], []
    for row in rows:
        entry = {"name": row["requirement"], "status": row["status"], "base": row.get("base_version"),
                 "version": row.get("version"), "how": row.get("how")}
        if row["status"] == "installed" and row.get("drift"):
            drifted.append(entry)
        elif row["status"] == "installed":
            at.append(entry)
        else:
            missing.append(entry)
    named = set(normalized(r["requirement"]) for r in rows)
    wanted = dict((normalized(n), n) for n in base["conda"])
    wanted.update(dict((k, base["dist_names"][k]) for k in base["dists"]))
    unaccounted = sorted(v for k, v in wanted.items() if k not in named)
    return at, drifted, missing, unaccounted


def actual_against_base(prefix, base):
    """What is really in the environment afterwards against the base's distributions (the software
    is looked for as an importable distribution too, pm links it from the migrated tree)."""
    have = installed_dists(prefix) if prefix else {}
    same, differ, absent = [], [], []
    for key, version in sorted(base["dists"].items()):
        name = base["dist_names"][key]
        if key not in have:
            absent.append(name)
        elif have[key][1] != version:
            differ.append("%s %s -> %s" % (name, version, have[key][1]))
        else:
            same.append(name)
    return {"same": len(same), "differ": differ, "absent": absent, "total": len(base["dists"])}


PROBE = r"""
import importlib, importlib.metadata, importlib.util, json, os, sys
tree, name = os.path.realpath(sys.argv[1]), sys.argv[2]
exposed = []
for entry in sorted(os.listdir(tree)):
    mod = entry[:-3] if entry.endswith(".py") else entry
    if mod == name or not mod.isidentifier() or not (entry.endswith(".py") or os.path.isdir(os.path.join(tree, entry))):
        continue
    try:
        spec = importlib.util.find_spec(mod)
    except Exception:
        continue
    places = list(spec.submodule_search_locations or []) + [spec.origin or ""] if spec else []
    if any(p and os.path.realpath(p).startswith(tree + os.sep) for p in places):
        exposed.append(mod)
dists = [d for d in importlib.metadata.distributions() if (d.metadata["Name"] or "").lower() == name.lower()]
module = importlib.import_module(name)
print(json.dumps({"path": os.path.realpath(module.__file__), "exposed": exposed, "dists": len(dists)}))
"""


def software_probe(project, python, tree, env, cwd):
    """From outside the tree (so not through the working directory): where the environment's python
    imports the software from, which other top-level folders or modules of the tree it can import
    (a flat layout's docs/, tests/ ...), and how many distributions of the software's name it sees."""
    proc = subprocess.run([python, "-c", PROBE, tree, project["name"]], env=env, cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
    if proc.returncode != 0:
        return {"from": "none", "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def software_import(project, prefix, env, target_dir, attempt):
    """software_probe in the migrated environment, against the installed copy: 'tree' (the installed or
    tested copy pm linked), 'release' (site-packages: a copy from an index) or 'elsewhere'."""
    found = software_probe(project, os.path.join(prefix, "bin", "python"),
                           os.path.join(target_dir, "installed", project["name"]), env, os.path.join(target_dir, "tmp"))
    if "path" in found:
        trees = [os.path.realpath(os.path.join(target_dir, "installed")), os.path.realpath(os.path.join(attempt, "work"))]
        found["from"] = "tree" if any(found["path"].startswith(t + os.sep) for t in trees) else \
            "release" if "site-packages" in found["path"] else "elsewhere"
    return found


def migrate(project, base, work, conda, pyz, bundle, kind, folder):
    name = project["name"]
    target_dir = os.path.join(folder, kind)
    shutil.rmtree(target_dir, ignore_errors=True)
    os.makedirs(os.path.join(target_dir, "tmp"))
    site = conda_site(conda, os.path.join(target_dir, "site"), [])  # no channel at all
    config = os.path.join(target_dir, name + ".ini")
    managers = "pip" if kind.startswith("pip") else "conda"
    with open(config, "w") as handle:
        handle.write(CONFIG.format(name=name, out=os.path.join(target_dir, "installed"), managers=managers,
                                   tests=project["tests"]))
    command = [sys.executable, pyz, "migrate", name, config, "--bundle", bundle, "--yes"]
    extra = {"TMPDIR": os.path.join(target_dir, "tmp")}
    if kind.startswith("airgap"):
        command = ["unshare", "-n"] + command + (["--no-conda"] if kind == "airgap-linker" else [])
        extra.update(PIP_NO_INDEX="1")
    elif not FRESH_PIP_CACHE:
        extra.update(PIP_CACHE_DIR=os.path.join(work, "pip-cache"))
    env = pip_env(extra, base=site.env())
    say("%s: migrate %s ..." % (name, kind))
    started = time.time()
    proc = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=2400)
    seconds = time.time() - started
    for stream, text in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        with open(os.path.join(target_dir, "migrate." + stream), "w") as handle:
            handle.write(text)
    attempts = sorted(glob.glob(os.path.join(site.home, name, "2*")))
    outcome = {"kind": kind, "exit": proc.returncode, "seconds": round(seconds, 1), "attempt": None,
               "passed": False, "status": None, "pip_installs": None, "rows": None,
               "stderr_tail": proc.stderr.strip().splitlines()[-12:]}
    if not attempts:
        outcome["error"] = "no attempt folder"
        return outcome
    attempt = attempts[-1]
    outcome["attempt"] = attempt
    try:
        with open(os.path.join(attempt, "result.json")) as handle:
            result = json.load(handle)
    except (OSError, ValueError) as exc:
        result = {"status": "unreadable: %s" % exc}
    outcome["status"] = result.get("status")
    tests = result.get("tests") or []
    outcome["tests"] = [{"name": t.get("name"), "status": t.get("status"), "seconds": t.get("seconds")} for t in tests]
    outcome["passed"] = proc.returncode == 0 and result.get("status") == "passed" and bool(tests) and \
        all(t.get("status") == "passed" for t in tests)
    log = os.path.join(attempt, "commands.log")
    if os.path.isfile(log):
        with open(log, encoding="utf-8", errors="replace") as handle:
            lines = [line for line in handle if re.match(r"(\d\d:\d\d:\d\d )?\$ ", line)]
        outcome["pip_installs"] = len([line for line in lines if re.search(r"\bpip install\b", line)])
    # the test's pytest summary line, from the test log
    for test in tests:
        if test.get("log") and os.path.isfile(test["log"]):
            with open(test["log"], encoding="utf-8", errors="replace") as handle:
                summary = [l.strip() for l in handle if re.search(r"\d+ (passed|failed|error)", l)]
            outcome["test_summary"] = summary[-1] if summary else None
    report = subprocess.run([sys.executable, pyz, "report", name, "--json"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    try:
        rows = json.loads(report.stdout)["requirements"]
    except (ValueError, KeyError):
        rows = None
        outcome["report_error"] = (report.stderr or report.stdout).strip()[-500:]
    if rows is not None:
        at, drifted, missing, unaccounted = classify(rows, base)
        outcome["rows"] = {"total": len(rows), "at_base": len(at), "drifted": drifted, "missing": missing,
                           "unaccounted": unaccounted, "at_base_rows": at}
    prefix = os.path.join(attempt, "venv") if managers == "pip" else result.get("env_prefix")
    if prefix and os.path.isdir(prefix):
        outcome["actual"] = actual_against_base(prefix, base)
        outcome["software"] = software_import(project, prefix, env, target_dir, attempt)
    else:
        outcome["actual"] = outcome["software"] = None
    say("%s: %s %s in %.0f s (%s)" % (name, kind, "PASSED" if outcome["passed"] else "FAILED", seconds,
                                      outcome.get("test_summary") or outcome["status"]))
    return outcome


def one_project(project, work, conda, python, pyz, label, kinds, rebuild):
    record = {"project": project["name"], "version": project["version"], "field": project["field"],
              "tests": project["tests"], "airgap": project["airgap"], "runs": {}}
    started = time.time()
    try:
        base = ensure_base(project, work, conda, python, rebuild)
    except Exception as exc:  # a base that cannot be built is reported, the others go on
        record["error"] = str(exc)[-3000:]
        say("%s: BASE FAILED: %s" % (project["name"], str(exc)[:500]))
        return record
    record["base"] = {"dists": len(base["dists"]), "conda": sorted(base["conda"]), "test_summary": base["test_summary"],
                      "pip_command": base["pip_command"], "dist_versions": base["dists"]}
    if BASES_ONLY:
        return record
    folder = os.path.join(work, "runs", label, project["name"])
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(os.path.join(folder, "tmp"))
    paths = base_paths(work, project)
    record["base"]["software"] = software_probe(
        project, os.path.join(base["prefix"], "bin", "python"), base["software"],
        conda_site(conda, paths["site"], [paths["channel"]]).activated(base["prefix"]), os.path.join(folder, "tmp"))
    bundles, record["pack"] = pack_all(project, base, work, conda, pyz, folder)
    for kind in [k for k in kinds if k.startswith("pip")]:
        bundle = bundles.get(kind.split("-", 1)[1])
        if bundle:
            record["runs"][kind] = migrate(project, base, work, conda, pyz, bundle, kind, folder)
    airgap = [k for k in kinds if k.startswith("airgap")]
    if project["airgap"] and airgap and bundles.get("with-packages"):
        paths = base_paths(work, project)
        os.rename(paths["folder"], paths["away"])  # the base removed: nothing of it can be read
        try:
            for kind in airgap:
                record["runs"][kind] = migrate(project, base, work, conda, pyz, bundles["with-packages"], kind, folder)
        finally:
            restore_base(paths)
    record["seconds"] = round(time.time() - started, 1)
    return record


# ---------------------------------------------------------------- output

def cell_rows(run):
    rows = run.get("rows")
    if rows is None:
        return "no report", "", ""
    return str(rows["at_base"]), str(len(rows["drifted"])), str(len(rows["missing"]) + len(rows["unaccounted"]))


def software_cell(soft, on_base):
    """'tree' / 'release' / 'none', then what differs from the base: other top-level names of the tree
    importable, more distributions of its name visible."""
    if not soft:
        return "-"
    extra = [n for n in soft.get("exposed") or [] if n not in (on_base or {}).get("exposed", [])]
    return soft.get("from", "-") + ("; +%d tree names" % len(extra) if extra else "") + \
        ("; %d dists" % soft["dists"] if soft.get("dists", 1) != (on_base or {}).get("dists", 1) else "")


def done_when(results):
    """Issue 27's two real-project conditions, counted over the runs made."""
    def runs(prefix):
        return [(rec, k, r) for rec in results["projects"] for k, r in sorted(rec.get("runs", {}).items())
                if k.startswith(prefix)]

    def count(items, test):
        return "%d of %d" % (len([1 for item in items if test(*item)]), len(items)) if items else "(not run)"
    pip, gap = runs("pip-"), runs("airgap-")
    every_row = lambda rec, k, r: bool(r.get("rows")) and not r["rows"]["unaccounted"]
    at_base = lambda rec, k, r: bool(r.get("actual")) and r["actual"]["same"] == r["actual"]["total"]
    return "\n".join([
        "Done when, real projects with pip (normal and older bundles): passed %s; software from the migrated tree %s; "
        "every base package with a row %s; every distribution at the base's version %s." % (
            count(pip, lambda rec, k, r: r["passed"]), count(pip, lambda rec, k, r: (r.get("software") or {}).get("from")
                                                             == "tree"), count(pip, every_row), count(pip, at_base)),
        "Done when, air-gapped (--with-packages, base removed, unshare -n, no index, no channel): passed %s; every "
        "distribution at the base's version %s; every base package with a row %s." % (
            count(gap, lambda rec, k, r: r["passed"]), count(gap, at_base), count(gap, every_row))])


def table(results):
    lines = ["| project | bundle / route | passed | tests | rows: at base | drifted | missing / failed | no row |"
             " env: at base / of | software from | pip install calls | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for rec in results["projects"]:
        if rec.get("error"):
            lines.append("| %s %s | base | - | base failed | | | | | | | |" % (rec["project"], rec["version"]))
            continue
        for kind in KINDS:
            run = rec["runs"].get(kind)
            if not run:
                continue
            rows = run.get("rows") or {}
            actual = run.get("actual")
            lines.append("| %s %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.0f |" % (
                rec["project"], rec["version"], kind, "yes" if run["passed"] else "**no**",
                run.get("test_summary") or run.get("status") or "-",
                rows.get("at_base", "-"), len(rows.get("drifted", [])) if rows else "-",
                len(rows.get("missing", [])) if rows else "-", len(rows.get("unaccounted", [])) if rows else "-",
                "%d / %d" % (actual["same"], actual["total"]) if actual else "no env",
                software_cell(run.get("software"), rec["base"].get("software")),
                run.get("pip_installs") if run.get("pip_installs") is not None else "-", run["seconds"]))
            for row in rows.get("drifted", []):
                notes.append("- %s %s drifted: %s %s -> %s (%s)" % (rec["project"], kind, row["name"], row["base"],
                                                                   row["version"], row["how"]))
            for row in rows.get("missing", []):
                notes.append("- %s %s not installed: %s %s [%s] (%s)" % (rec["project"], kind, row["name"],
                                                                        row["base"], row["status"], row["how"]))
            if rows.get("unaccounted"):
                notes.append("- %s %s no row at all for: %s" % (rec["project"], kind, ", ".join(rows["unaccounted"])))
            if actual and (actual["differ"] or actual["absent"]):
                notes.append("- %s %s environment: differ %s; absent %s" % (
                    rec["project"], kind, ", ".join(actual["differ"]) or "none", ", ".join(actual["absent"]) or "none"))
            soft, on_base = run.get("software") or {}, rec["base"].get("software") or {}
            if soft.get("from") not in (None, "tree"):
                notes.append("- %s %s: the software imports from %s" % (rec["project"], kind, soft.get("path")
                                                                        or soft.get("error")))
            if soft.get("exposed") and soft.get("exposed") != on_base.get("exposed"):
                notes.append("- %s %s: the tree's %s importable (base: %s)" % (
                    rec["project"], kind, ", ".join(soft["exposed"]), ", ".join(on_base.get("exposed") or []) or "none"))
            if soft.get("dists", 1) != on_base.get("dists", 1):
                notes.append("- %s %s: %d distributions named %s visible (base: %d)" % (
                    rec["project"], kind, soft["dists"], rec["project"], on_base.get("dists", 1)))
            credited = [r["name"] for r in rows.get("at_base_rows", []) + rows.get("drifted", [])
                        if (r.get("how") or "").startswith("pip:")] if rows and run.get("pip_installs") == 0 else []
            if credited:
                notes.append("- %s %s: %d rows say pip:NAME=... though no pip install ran" % (rec["project"], kind,
                                                                                           len(credited)))
            if not run["passed"]:
                notes.append("- %s %s failed (exit %s, %s); pm's last lines:\n%s" % (
                    rec["project"], kind, run["exit"], run.get("status"),
                    "\n".join("      " + l for l in run.get("stderr_tail") or [])))
    return done_when(results) + "\n\n" + "\n".join(lines) + ("\n\nRows not at the base's version, and failures:\n\n" + "\n".join(notes)
                               if notes else "\n")


FRESH_PIP_CACHE = False
BASES_ONLY = False


def main():
    global FRESH_PIP_CACHE, BASES_ONLY
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pyz", required=True, help="the pm.pyz to measure")
    parser.add_argument("--label", required=True, help="names results-LABEL.json and runs/LABEL/")
    parser.add_argument("--work", default=os.path.join(ROOT, ".real-projects"))
    parser.add_argument("--jobs", type=int, default=2, help="projects at once (default 2)")
    parser.add_argument("--projects", help="comma-separated subset of: " + ",".join(p["name"] for p in PROJECTS))
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset of: " + ",".join(KINDS))
    parser.add_argument("--rebuild-bases", action="store_true", help="build the bases again even if checked")
    parser.add_argument("--fresh-pip-cache", action="store_true",
                        help="online migrations download from PyPI with no pip cache (default: WORK/pip-cache, "
                             "shared with the bases)")
    parser.add_argument("--bases-only", action="store_true", help="build and check the bases, nothing else")
    args = parser.parse_args()
    FRESH_PIP_CACHE, BASES_ONLY = args.fresh_pip_cache, args.bases_only
    work = os.path.abspath(args.work)
    if work == "/tmp" or work.startswith("/tmp/"):
        raise SystemExit("--work must not be under /tmp")
    pyz = os.path.abspath(args.pyz)
    if not os.path.isfile(pyz):
        raise SystemExit("no pm.pyz at %s" % pyz)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise SystemExit("unknown kinds: %s" % ", ".join(unknown))
    chosen = [p for p in PROJECTS if not args.projects or p["name"] in args.projects.split(",")]
    os.makedirs(work, exist_ok=True)
    os.environ["TMPDIR"] = os.path.join(work, "tmp")
    os.makedirs(os.environ["TMPDIR"], exist_ok=True)
    started = time.time()
    conda = realconda.build_all(find_python, ["25.11.1"])["25.11.1"]
    python = interpreter(work)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(one_project, p, work, conda, python, pyz, args.label, kinds, args.rebuild_bases)
                   for p in chosen]
        records = [f.result() for f in futures]
    with open(pyz, "rb") as handle:
        pyz_sha = hashlib.sha256(handle.read()).hexdigest()
    results = {"label": args.label, "pyz": pyz, "pyz_sha256": pyz_sha, "started": time.strftime("%Y-%m-%dT%H:%M:%S",
                                                                                              time.localtime(started)),
               "seconds": round(time.time() - started, 1), "python": PYTHON_VERSION, "conda": "25.11.1",
               "pip_cache": "fresh" if FRESH_PIP_CACHE else os.path.join(work, "pip-cache"), "projects": records}
    out = os.path.join(work, "results-%s.json" % args.label)
    with open(out, "w") as handle:
        json.dump(results, handle, indent=1)
    print("## pm real projects, %s (%.0f s)\n" % (args.label, results["seconds"]))
    for rec in records:
        print("- %s %s: %s; base tests: `%s` (%s)" % (rec["project"], rec["version"], rec["field"], rec["tests"],
                                                    (rec.get("base") or {}).get("test_summary") or rec.get("error")))
    print()
    print(table(results))
    print("\nresults: %s" % out)


if __name__ == "__main__":
    main()
