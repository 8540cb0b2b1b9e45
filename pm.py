#!/usr/bin/env python3
"""pm: move scientific software to another machine and prove it works there.

One module, read top to bottom in the order the data travels (standard library only; Python 3.6
and newer, the probe also 2.7):

  Probe              the base machine's program (pack), kept in a string; also the one home of what
                     pm and the probe share: PmError, names, the hash loop, threads, time, the manifest
                     layout, the bundle writer, conda's flags and outputs across versions
  Helpers            version, atomic writes, JSON files, locks, the probe as pm loads it
  Containment        Contained, the one writer of what a bundle makes pm write; the name patterns
  Carried packages   the forms a conda package travels in (FORMS) and their readers; the channel index
  Inputs             the environment file (conda's env.yml, in every shape real conda writes)
  Bundle             the one reader: open, check every field and member once, read, extract safely
  Store              every path of ~/.platform_migrator ($PM_HOME); installs and what they name
  Inputs             the test configuration (INI, the original tool's format)
  Running commands   one runner: log, echo, timeout, process group, kill on any exit
  Package managers   FAMILIES (what pm knows of apt, dnf, pip, spack, ...), INI sections, built in and files
  Resolver           the levels conda tries; requirements, candidates and choices for the managers
  Preflight          can this machine run the bundle's binaries (glibc, libstdc++, ISA, CUDA)
  SBOM               CycloneDX of an attempt, with the tests' evidence
  Reports            RequirementRow; migrate's summary, report, history, report.html (COLOURS); --json
  The attempt        Attempt, its options and result; Provided and Route, what each route hands back
  The base's Python requirements   worked out once per migration (BaseRequirements)
  Carried wheels and the software itself   pm's wheel installer; the software linked from its tree
  pip's resolve      the pins in one resolve, relaxed only where pip says why; uv; the pip route's venv
  The account        a row for every package of the base (installed, drifted, missing, with why)
  Modulefiles        Lmod and Environment Modules files for an install
  Environments pm makes   each install's own environment: marks, activation, removal
  Route: ...         the system's package managers; pm's linker (no conda); conda
  Migrator           migrate(): check, ROUTES, tests, install
  Server (HTTP)      GET /migrate, PUT /bundles/NAME, listings; RequestHandler, connection deadlines
  Server (process)   one server per store: foreground, start, stop, status
  Doctor             what this machine (its Pythons, conda, managers, disk, the server) offers
  platform-migrator 1.1.0 compatibility   its POST protocol, carried zip and broken searches
  Prune, Repair      what the store holds and what no install needs; an install whose environment is gone
  Command line       the VERBS table (help, options, examples of each verb), exit codes
"""
# Start-up imports only what every verb needs; the server's and the original protocol's modules
# (http.server, urllib.request, hmac, base64, ...) are imported where they are used.
import argparse
import contextlib
import errno
import json
import os
import re
import shlex
import signal
import stat
import sys
import time
import types


# == Probe ====================================================================
# The probe runs on base machines (Python 2.7 and up, no packages, maybe no TTY). It is written
# out into pm.pyz as pm_probe.py and served at GET /migrate. It is also the one home of what pm and
# the probe share: names, errors, the hash loop, time stamps, the manifest layout, the bundle writer.

PROBE_SOURCE = r'''
# -*- coding: utf-8 -*-
"""pm probe: pack a conda environment and a software directory into one bundle.

Runs on base machines under Python 2.7 and every Python 3, standard library only.
Written out of pm.py (PROBE_SOURCE) into pm.pyz as pm_probe.py and served by
`pm.pyz serve` at GET /migrate with the server's address filled in.
"""
from __future__ import print_function

import argparse
import errno
import json
import os
import re
import stat
import sys
import time

SERVER_URL = ""    # filled in by GET /migrate
SERVER_TOKEN = ""  # filled in by GET /migrate when the server has a token

PROBE_VERSION = "1.0.0"
BUNDLE_FORMAT = 1
CHUNK = 1 << 20
PACK_LEVEL = 2  # deflate level of unpacked packages (--level): as fast as 1, 2.5% smaller on a real stack
DEFAULT_EXCLUDES = ["__pycache__", "*.pyc", "*.pyo"]
# errors of the disk the bundle goes to, not of the file being read
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
# Already compressed: stored as they are (deflating them again costs time and gains nothing).
STORED_SUFFIXES = (".gz", ".tgz", ".bz2", ".xz", ".zst", ".lz4", ".zip", ".7z", ".whl", ".jar", ".conda",
                   ".jpg", ".jpeg", ".png", ".gif", ".webp", ".mp3", ".mp4", ".mkv", ".pdf")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z"  # patterns stay text: re compiles on first use
STORE_NAMES = ("config", "server.pid", "server.lock", "server.log", "migrate.py")  # files of the store, never software
PY2 = sys.version_info[0] == 2
TEXT_TYPES = (str, unicode) if PY2 else (str,)  # noqa: F821 (Python 2 only)
ZIP_FIRST = time.mktime((1980, 1, 2, 0, 0, 0, 0, 0, -1))  # zip cannot date files before 1980
ZIP_LAST = time.mktime((2107, 12, 30, 0, 0, 0, 0, 0, -1))  # nor after 2107
DASH = u"\u2014"
CONDA_PLACES = ["~/miniconda3", "~/anaconda3", "~/miniforge3", "~/mambaforge",
                "~/miniconda", "~/anaconda", "/opt/conda", "/opt/miniconda3",
                "/opt/anaconda3", "/opt/miniforge3", "/usr/local/miniconda3",
                "/usr/local/anaconda3"]

# -- Messages ---------------------------------------------------------------


def touni(text):
    """Text from text or bytes (Python 2 paths are bytes): UTF-8, undecodable bytes replaced."""
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else text


def native_path(text):
    """A path from conda's JSON as this Python's os functions take it: UTF-8 bytes on Python 2,
    whose os functions would encode text with the locale's codec (ASCII under LANG=C)."""
    return text.encode("utf-8") if PY2 and not isinstance(text, bytes) else text


class PmError(Exception):
    """A problem the user can fix: what went wrong, what to do, and the exit code."""

    def __init__(self, what, fix, code=2):
        Exception.__init__(self, touni(what))
        self.what = touni(what)
        self.fix = touni(fix)
        self.code = code

    def line(self):
        return u"pm: error: %s %s %s" % (self.what, DASH, self.fix)


QUIET = [False]  # -q: only warnings and errors
CONTROL_CHARS = u"[\x00-\x08\x0b-\x1f\x7f-\x9f]"


def printable(text):
    """Text safe for a terminal: control characters (ESC, BEL, ..., from a bundle or the network)
    shown as \\xNN, never executed."""
    return re.sub(CONTROL_CHARS, lambda m: u"\\x%02x" % ord(m.group()), touni(text))


def plural(count, word, many=None):
    """'1 package', '2 packages' (many: the plural when it is not word + 's')."""
    return "%d %s" % (count, word if count == 1 else many or word + "s")


def human_size(size):
    """A size as people read it: MiB from 1 MiB on, else KiB."""
    return "%.1f MiB" % (size / 1048576.0) if size >= 1048576 else "%.1f KiB" % (size / 1024.0)


def say(text):
    """Write one line of progress or diagnostics to stderr (with -q, only warnings and errors);
    control characters are shown, never sent."""
    text = printable(text)
    if QUIET[0] and not text.lstrip().startswith(("warning", "error", "pm: error")):
        return
    if PY2 and isinstance(text, unicode):  # noqa: F821 (Python 2 only)
        text = text.encode("utf-8", "replace")
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def check_name(name, what="software name"):
    """A software name is one safe path component (NAME_PATTERN) that the store does not use itself."""
    if not isinstance(name, TEXT_TYPES) or not re.match(NAME_PATTERN, name):
        raise PmError("bad %s '%s'" % (what, name),
                      "use letters, digits, '.', '_' and '-' (at most 100, starting with a letter or digit)")
    if name.lower() in STORE_NAMES:
        raise PmError("bad %s '%s': the store uses that name itself" % (what, name), "choose another name")
    return name


# -- Asking -----------------------------------------------------------------


def ask(question, default, flag, assume_yes):
    """Ask on stdin (a TTY or a pipe); with --yes take the default or fail naming the flag."""
    if assume_yes:
        if default is None:
            raise PmError("no value for %s" % flag, "pass %s, or drop --yes to be asked" % flag)
        return default
    shown = " [%s]" % default if default is not None else ""
    sys.stderr.write("%s%s: " % (question, shown))
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line or not line.strip() and default is None:
        raise PmError("%s for: %s" % ("an answer is needed" if line else "no answer on stdin", question),
                      "pass %s" % flag)
    return line.strip() or default


def choose(title, options, flag, assume_yes):
    """Show numbered options and return the chosen one."""
    if assume_yes:
        raise PmError("no value for %s" % flag, "pass %s, or drop --yes to choose" % flag)
    say(title)
    for number, option in enumerate(options, 1):
        say("  %d) %s" % (number, option))
    answer = ask("Number", None, flag, False)
    if not answer.isdigit() or not 1 <= int(answer) <= len(options):
        raise PmError("'%s' is not one of the numbers 1-%d" % (answer, len(options)),
                      "run again and type a listed number, or pass %s" % flag)
    return options[int(answer) - 1]


# -- Conda ------------------------------------------------------------------


def which(program):
    """shutil.which, which Python 2.7 lacks."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(folder, program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_conda(required=True):
    """$CONDA_EXE, then $CONDA_HOME/bin/conda and $CONDA_ROOT_DIR/bin/conda (platform-migrator
    1.1.0's variables), then conda on PATH, then the usual install prefixes. None when there is none
    and required is False (pack then reads the environment itself)."""
    exe = os.environ.get("CONDA_EXE")
    if exe and os.access(exe, os.X_OK):
        return exe
    for variable in ("CONDA_HOME", "CONDA_ROOT_DIR"):
        home = os.environ.get(variable)
        if home and os.access(os.path.join(home, "bin", "conda"), os.X_OK):
            return os.path.join(home, "bin", "conda")
    exe = which("conda")
    if exe:
        return exe
    for place in CONDA_PLACES:
        candidate = os.path.join(os.path.expanduser(place), "bin", "conda")
        if os.access(candidate, os.X_OK):
            return candidate
    if not required:
        return None
    raise PmError(NO_CONDA, "activate your conda environment or set CONDA_EXE=/path/to/conda")


NO_CONDA = "no conda found (looked at $CONDA_EXE, $CONDA_HOME, $CONDA_ROOT_DIR, PATH and %s)" % ", ".join(CONDA_PLACES[:4])


def run_conda(conda, args, check=True, extra_env=None):
    """Run conda; return its stdout as text, or None when check is False and it failed."""
    import subprocess
    env = None
    if extra_env:
        env = dict(os.environ)
        env.update(extra_env)
    try:
        proc = subprocess.Popen([conda] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    except OSError as exc:
        raise PmError("cannot run %s: %s" % (conda, exc), "set CONDA_EXE to a working conda")
    out, err = proc.communicate()
    out = out.decode("utf-8", "replace")
    if proc.returncode != 0:
        if not check:
            return None
        last = (err.decode("utf-8", "replace").strip().splitlines() or ["exit %d" % proc.returncode])[-1]
        raise PmError("'conda %s' failed: %s" % (" ".join(args), last),
                      "check that the environment is healthy with 'conda list'")
    return out


def run_conda_json(conda, args):
    out = run_conda(conda, args)
    try:
        return json.loads(out)
    except ValueError:
        raise PmError("'conda %s' did not print JSON" % " ".join(args),
                      "update conda, or set CONDA_EXE to another conda")


def version_numbers(text, limit=6):
    """The one reading of a version's numbers: '4.3.16' -> (4, 3, 16), 'glibc 2.36' -> (2, 36); at most
    limit of them, () when there are none. Callers strip what is not the version first (an epoch)."""
    return tuple(int(n) for n in re.findall(r"\d+", text or ""))[:limit]


def conda_version(info):
    """conda info's version as a tuple of numbers: '4.3.16' -> (4, 3, 16)."""
    return version_numbers(str(info.get("conda_version", "")), 3)


def envs_dirs(info):
    """Where conda looks for environments by name, in its order (conda info --json)."""
    return [native_path(d) for d in info.get("envs_dirs") or []]


def named_env_prefix(info, name):
    """The prefix conda means by '-n NAME': base/root, else the first envs dir holding NAME."""
    if name in ("base", "root"):
        return native_path(info.get("root_prefix") or "") or None
    for folder in envs_dirs(info):
        prefix = os.path.join(folder, name)
        if is_env_prefix(prefix):
            return prefix
    return None


def export_args(conda_info, prefix):
    """Arguments and environment for 'conda env export' of a prefix, as this conda takes them.
    conda 4.3 knows only '-n NAME' (no -p): the prefix's folder goes first in CONDA_ENVS_PATH,
    so that NAME means this prefix even outside envs_dirs."""
    if conda_version(conda_info) >= (4, 4):
        return ["env", "export", "-p", prefix], None
    parent, name = os.path.split(prefix.rstrip(os.sep))
    paths = [parent] + [d for d in os.environ.get("CONDA_ENVS_PATH", "").split(os.pathsep) if d]
    return ["env", "export", "-n", name], {"CONDA_ENVS_PATH": os.pathsep.join(paths)}


def is_env_prefix(path):
    return os.path.isdir(os.path.join(path, "conda-meta"))


def is_venv(path):
    """A virtual environment (venv, virtualenv, uv): its pyvenv.cfg."""
    return os.path.isfile(os.path.join(path, "pyvenv.cfg"))


def find_env(conda, conda_info, wanted, software_dir, assume_yes):
    """Return the prefix of the environment to pack: -e (a prefix with conda-meta/ or pyvenv.cfg, or a
    name conda, micromamba or pixi knows), the active one, or a choice among those known."""
    if wanted:
        if os.sep in wanted or wanted.startswith("."):
            prefix = os.path.abspath(os.path.expanduser(wanted))
            if is_env_prefix(prefix) or is_venv(prefix):
                return prefix
            raise PmError("%s is neither a conda environment (no conda-meta folder) nor a virtual environment "
                          "(no pyvenv.cfg)" % prefix,
                          "pass an environment's prefix, or a name listed by 'conda env list'")
        prefix = named_env_prefix(conda_info, wanted) if conda else None
        if prefix:
            return prefix
        for prefix in known_envs(conda, conda_info, software_dir):
            if os.path.basename(prefix) == wanted:
                return prefix
        if is_env_prefix(wanted) or is_venv(wanted):  # a folder here of that name, e.g. -e venv
            return os.path.abspath(wanted)
        if not conda:
            raise PmError("unknown environment '%s', and %s" % (wanted, NO_CONDA),
                          "pass the environment's prefix with -e, or set CONDA_EXE=/path/to/conda")
        raise PmError("unknown conda environment '%s'" % wanted,
                      "run 'conda env list' to see the names, or pass a prefix path with -e")
    active = active_env()
    if active:
        return active
    pixi = pixi_envs(software_dir)
    if pixi and (len(pixi) == 1 or os.path.basename(pixi[0]) == "default"):
        say("the software is a pixi project: its environment %s (-e PREFIX packs another)" % pixi[0])
        return pixi[0]
    envs = known_envs(conda, conda_info, software_dir)
    if not envs:
        raise PmError("no environment found (none active, none beside the software, and %s)" % (
            "conda knows none" if conda else NO_CONDA), "pass the environment's prefix with -e")
    return choose("Which %senvironment runs the software?" % ("conda " if conda else ""), envs, "-e ENV", assume_yes)


def active_env():
    """The active environment: $VIRTUAL_ENV (a venv) or $CONDA_PREFIX; when both are set, the one
    whose bin comes first on PATH (activated last)."""
    found = []
    venv, conda_prefix = os.environ.get("VIRTUAL_ENV"), os.environ.get("CONDA_PREFIX")
    if venv and is_venv(venv):
        found.append(venv)
    if conda_prefix and is_env_prefix(conda_prefix):
        found.append(conda_prefix)
    path = [os.path.realpath(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]

    def place(prefix):
        folder = os.path.realpath(os.path.join(prefix, "bin"))
        return path.index(folder) if folder in path else len(path)
    return sorted(found, key=place)[0] if found else None


def known_envs(conda, conda_info, software_dir):
    """The environments conda lists, micromamba's ($MAMBA_ROOT_PREFIX, $MAMBA_EXE) and pixi's
    (.pixi/envs/* beside a pixi.toml in the software folder), each once."""
    envs = list_envs(conda, conda_info) if conda else []
    roots = [os.environ.get("MAMBA_ROOT_PREFIX") or ""]
    mamba = os.environ.get("MAMBA_EXE")
    if mamba and os.access(mamba, os.X_OK):
        try:
            envs += [native_path(p) for p in run_conda_json(mamba, ["env", "list", "--json"]).get("envs", [])]
        except PmError:
            pass
    for root in [r for r in roots if r]:
        envs.append(root)
        folder = os.path.join(root, "envs")
        envs += [os.path.join(folder, n) for n in sorted(os.listdir(folder))] if os.path.isdir(folder) else []
    envs += pixi_envs(software_dir)
    out, seen = [], set()
    for prefix in envs:
        if (is_env_prefix(prefix) or is_venv(prefix)) and os.path.realpath(prefix) not in seen:
            seen.add(os.path.realpath(prefix))
            out.append(prefix)
    return out


def pixi_envs(software_dir):
    """pixi's environments of the software: .pixi/envs/* beside its pixi.toml."""
    folder = os.path.join(software_dir or "", ".pixi", "envs")
    if not software_dir or not os.path.isfile(os.path.join(software_dir, "pixi.toml")) or not os.path.isdir(folder):
        return []
    names = sorted(os.listdir(folder), key=lambda n: (n != "default", n))
    return [os.path.join(folder, n) for n in names if is_env_prefix(os.path.join(folder, n))]


def list_envs(conda, conda_info):
    """The environments conda lists, base first (conda 4.3 leaves base out of 'env list')."""
    envs = [native_path(p) for p in run_conda_json(conda, ["env", "list", "--json"]).get("envs", [])]
    root = native_path(conda_info.get("root_prefix") or "")
    if root and is_env_prefix(root):
        envs = [root] + [p for p in envs if p != root]
    return envs


# -- Environment records and the minimal set ------------------------------


def spec_name(spec):
    """The package name of a match spec: 'numpy >=1.2', 'conda-forge::numpy=1.2' -> 'numpy'."""
    spec = spec.strip().split("::")[-1]
    return re.split(r"[\s=<>!~\[;,]", spec, maxsplit=1)[0].strip()


def read_conda_meta(prefix):
    """The package records of an environment, from its conda-meta/*.json files."""
    meta = os.path.join(prefix, "conda-meta")
    if not os.path.isdir(meta):
        raise PmError("%s has no conda-meta folder" % prefix, "pass a real conda environment with -e")
    records = []
    for filename in sorted(os.listdir(meta)):
        if not filename.endswith(".json"):
            continue
        path = os.path.join(meta, filename)
        try:
            with open(path, "rb") as handle:
                record = json.loads(handle.read().decode("utf-8"))
            problem = None if isinstance(record, dict) and record.get("name") and record.get("version") \
                else "no name or version"
        except (IOError, OSError, ValueError) as exc:
            problem = exc
        if problem:
            raise PmError("broken conda record %s: %s" % (path, problem),
                          "repair the environment ('conda install --force-reinstall') or recreate it")
        records.append(record)
    return records


HISTORY_SPECS = r"#\s*(\w+)\s+specs:\s*(.*?)\s*$"


def history_specs(text):
    """The specs of a conda-meta/history line's value, in either format conda writes:
    "['a', 'b >=2']" (4.4 and later) or "a,b >=2,<3" (4.3 and older, joined with commas)."""
    import ast
    if text.startswith("["):
        try:
            return [str(s) for s in ast.literal_eval(text)]
        except (ValueError, SyntaxError):
            return []
    specs = []
    for part in text.split(","):
        part = part.strip()
        if specs and (not part or not re.match(r"[A-Za-z0-9_]", part)):
            specs[-1] += "," + part  # '<3' continues 'b >=2'
        elif part:
            specs.append(part)
    return specs


def read_requested_specs(prefix):
    """What the user asked for, replayed from conda-meta/history: name -> spec."""
    path = os.path.join(prefix, "conda-meta", "history")
    specs = {}
    if not os.path.isfile(path):
        return specs
    with open(path, "rb") as handle:
        lines = handle.read().decode("utf-8", "replace").splitlines()
    for line in lines:
        match = re.match(HISTORY_SPECS, line)
        if not match:
            continue
        action = match.group(1)
        for spec in history_specs(match.group(2)):
            name = spec_name(spec)
            if action == "remove":
                specs.pop(name, None)
            elif action in ("create", "install", "update"):
                specs[name] = spec
    return specs


def dependency_graph(records):
    """name -> sorted names of installed packages it depends on (virtual packages left out)."""
    names = set(r["name"] for r in records)
    graph = {}
    for record in records:
        deps = set()
        for spec in record.get("depends") or []:
            dep = spec_name(spec)
            if dep in names and dep != record["name"]:
                deps.add(dep)
        graph[record["name"]] = sorted(deps)
    return graph


def strongly_connected(graph):
    """Tarjan's algorithm without recursion: the list of components (lists of names)."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    counter = [0]
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = counter[0]
                counter[0] += 1
                stack.append(node)
                on_stack.add(node)
            deps = graph[node]
            if child > 0:
                low[node] = min(low[node], low[deps[child - 1]])
            while child < len(deps) and deps[child] in index:
                if deps[child] in on_stack:
                    low[node] = min(low[node], index[deps[child]])
                child += 1
            if child < len(deps):
                work.append((node, child + 1))
                work.append((deps[child], 0))
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def minimal_set(graph, requested=()):
    """The packages nothing else depends on; one member stands for each root cycle.

    Its closure over the graph is the whole environment and no member reaches another.
    """
    components = strongly_connected(graph)
    component_of = {}
    for number, component in enumerate(components):
        for name in component:
            component_of[name] = number
    depended_on = set()
    for name, deps in graph.items():
        for dep in deps:
            if component_of[dep] != component_of[name]:
                depended_on.add(component_of[dep])
    roots = []
    for number, component in enumerate(components):
        if number not in depended_on:
            roots.append(representative(component, graph, requested))
    return sorted(roots)


def representative(component, graph, requested):
    """The member of a cycle to keep: one the user asked for, else the one with most deps."""
    asked = [name for name in component if name in requested]
    if asked:
        return asked[0]
    return sorted(component, key=lambda name: (-len(graph[name]), name))[0]


def closure(graph, roots):
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph[name])
    return seen


def min_dep_records(minimal, records, listed, requested):
    """min-deps.json: conda-list-style records of the minimal set."""
    by_name = dict((r.get("name"), r) for r in listed if isinstance(r, dict))
    meta = dict((r["name"], r) for r in records)
    out = []
    for name in minimal:
        row = dict(by_name.get(name) or {})
        record = meta[name]
        row.setdefault("name", name)
        row.setdefault("version", record.get("version"))
        row.setdefault("build_string", record.get("build", ""))
        row.setdefault("build_number", record.get("build_number", 0))
        row.setdefault("channel", channel_name(record.get("channel", "")))
        row.setdefault("platform", record.get("subdir", ""))
        row["requested"] = name in requested
        out.append(row)
    return out


def channel_name(url):
    url = (url or "").rstrip("/")
    return url.rsplit("/", 1)[-1] if url else ""


# -- Python distributions -------------------------------------------------------
# What each package puts on the Python path, read from the environment itself: every *.dist-info
# and *.egg-info of its site-packages (name, version, the conda package that owns it) and, for what
# pip installed, how it got there (INSTALLER, direct_url.json: an index, a local path, editable, a
# VCS). A distribution installed from the software's own folder is the software.


def site_packages(prefix):
    """The environment's lib/pythonX.Y/site-packages folders."""
    lib = os.path.join(prefix, "lib")
    found = []
    for name in sorted(os.listdir(lib)) if os.path.isdir(lib) else []:
        folder = os.path.join(lib, name, "site-packages")
        if re.match(r"^python\d+\.\d+$", name) and os.path.isdir(folder):
            found.append(folder)
    return found


def read_small(path, limit=1 << 20):
    """A small text file's text (UTF-8, errors replaced), or None when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", "replace")
    except (IOError, OSError):
        return None


def metadata_fields(text):
    """Name and Version from a METADATA or PKG-INFO header."""
    fields = {}
    for line in (text or "").splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        if key in ("Name", "Version") and key not in fields:
            fields[key] = value.strip()
    return fields.get("Name"), fields.get("Version")


def conda_owned_dirs(records, site_rel):
    """site-packages entry (a dist-info or egg-info name) -> the conda package whose files hold it."""
    owned = {}
    for record in records:
        for path in record.get("files") or []:
            if not path.startswith(site_rel + "/"):
                continue
            entry = path[len(site_rel) + 1:].split("/")[0]
            if entry.endswith((".dist-info", ".egg-info")):
                owned[entry] = record["name"]
    return owned


def inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def url_path(url):
    """The local path of a file:// URL, else None."""
    try:
        from urllib.parse import unquote
    except ImportError:
        from urllib import unquote
    if not url.startswith("file://"):
        return None
    return unquote(url[len("file://"):])


def dist_source(direct_url, installer, owner):
    """How a distribution got there: conda, index, editable, local, vcs or url."""
    if owner:
        return "conda"
    if not direct_url:
        return "index" if installer else "unknown"
    if direct_url.get("vcs_info"):
        return "vcs"
    if (direct_url.get("dir_info") or {}).get("editable"):
        return "editable"
    return "local" if str(direct_url.get("url", "")).startswith("file://") else "url"


def import_roots(site, files, software_dir, fallback):
    """Where an editable install of the software puts the import path, relative to the software
    folder: the paths inside it that its .pth files or editable finder name (a package folder or
    module counts as its parent)."""
    roots = []
    for rel in files:
        if not (rel.endswith(".pth") or (rel.startswith("__editable__") and rel.endswith(".py"))):
            continue
        text = read_small(os.path.normpath(os.path.join(site, rel))) or ""
        for found in re.findall(r"(/[^'\"\n\r]+)", text):
            found = found.strip()
            if not os.path.exists(found) or not inside(found, software_dir):
                continue
            if os.path.isfile(found) or os.path.isfile(os.path.join(found, "__init__.py")):
                found = os.path.dirname(found)
            rel_root = os.path.relpath(os.path.realpath(found), os.path.realpath(software_dir))
            if rel_root not in roots:
                roots.append(rel_root)
    return roots or [fallback]


def editable_packages(site, files, software_dir):
    """The top-level packages and modules that an editable finder (setuptools' __editable___*_finder.py,
    its MAPPING) maps into the software folder: on the base only these were importable, not the folder
    around them. [] when no finder names any."""
    names = []
    for rel in files:
        if not (rel.startswith("__editable__") and rel.endswith(".py")):
            continue
        text = read_small(os.path.normpath(os.path.join(site, rel))) or ""
        for key, found in re.findall(r"['\"]([A-Za-z_][A-Za-z0-9_]*)['\"]\s*:\s*['\"](/[^'\"\n]+)['\"]", text):
            if inside(found, software_dir) and key not in names:
                names.append(key)
    return names


def tree_roots(files, software_dir, fallback):
    """Where the top-level packages and modules that a (non-editable) install of the software put in
    site-packages live in its tree ('src' for a src layout), shallowest first; build/ copies passed over."""
    tops = set()
    for rel in files:
        first = rel.split("/")[0]
        if rel.startswith("..") or first.endswith((".dist-info", ".egg-info", ".pth")) or first == "__pycache__":
            continue
        tops.add(first[:-3] if first.endswith(".py") and "/" not in rel else first)
    found = []
    for folder, dirs, names in os.walk(software_dir):
        depth = os.path.relpath(folder, software_dir).count(os.sep)
        dirs[:] = [d for d in sorted(dirs) if not d.startswith(".") and d not in ("build", "dist", "__pycache__")
                   and depth < 3]
        for top in tops:
            if (top in dirs and os.path.isfile(os.path.join(folder, top, "__init__.py"))) or top + ".py" in names:
                root = os.path.relpath(folder, software_dir)
                if root not in found:
                    found.append(root)
    if not found:
        return [fallback]
    return sorted(found, key=lambda root: (root.count(os.sep), root))


def record_files(dist_path):
    """The paths a dist-info's RECORD lists (relative to site-packages)."""
    import csv
    text = read_small(os.path.join(dist_path, "RECORD"), 64 << 20)
    if text is None:
        return None
    rows = []
    for row in csv.reader(text.splitlines()):
        if row and row[0]:
            rows.append(row)
    return rows


def python_distributions(prefix, records, software_dir):
    """Every Python distribution of the environment: a list of dicts (name, version, site, entry,
    owner, installer, source, url, software, import_roots, metadata)."""
    dists = []
    for site in site_packages(prefix):
        site_rel = os.path.relpath(site, prefix).replace(os.sep, "/")
        owned = conda_owned_dirs(records, site_rel)
        for entry in sorted(os.listdir(site)):
            found = read_distribution(site, site_rel, entry, owned)
            if found is not None:
                dist, path, meta_file = found
                mark_software(dist, site, software_dir, path, meta_file)
                dists.append(dist)
    return dists


def distribution_folder(site, entry):
    """(the folder or file holding an entry's metadata, the source folder of a 'setup.py develop'
    .egg-link or None), or (None, None) when the entry is no distribution."""
    path = os.path.join(site, entry)
    if entry.endswith((".dist-info", ".egg-info")):
        return path, None
    if not entry.endswith(".egg-link"):  # 'setup.py develop': the egg-info lives in the source folder
        return None, None
    first = (read_small(path) or "").splitlines()[:1]
    link_target = first[0].strip() if first else ""
    infos = [n for n in (os.listdir(link_target) if os.path.isdir(link_target) else []) if n.endswith(".egg-info")]
    return (os.path.join(link_target, infos[0]), link_target) if infos else (None, None)


def read_direct_url(path, link_target):
    """PEP 610's direct_url.json of a distribution (a dict), or what an .egg-link stands for, or None."""
    if link_target is not None:
        return {"url": "file://" + link_target, "dir_info": {"editable": True}}
    if not os.path.isfile(os.path.join(path, "direct_url.json")):
        return None
    try:
        direct_url = json.loads(read_small(os.path.join(path, "direct_url.json")) or "")
    except ValueError:
        return None
    return direct_url if isinstance(direct_url, dict) else None


def read_distribution(site, site_rel, entry, owned):
    """(one distribution's dict, its metadata folder, its metadata file) from its site-packages entry,
    or None when the entry is none."""
    path, link_target = distribution_folder(site, entry)
    if path is None:
        return None
    meta_file = os.path.join(path, "METADATA" if path.endswith(".dist-info") else "PKG-INFO") \
        if os.path.isdir(path) else path
    name, version = metadata_fields(read_small(meta_file))
    if not name or not version:
        return None
    installer = (read_small(os.path.join(path, "INSTALLER")) or "").strip() if os.path.isdir(path) else ""
    direct_url = read_direct_url(path, link_target)
    owner = owned.get(entry) or (installer == "conda" and "(conda)") or None
    dist = {"name": touni(name), "version": touni(version), "site": site_rel, "entry": touni(entry),
            "owner": owner, "installer": touni(installer), "source": dist_source(direct_url, installer, owner),
            "software": False}
    if direct_url and isinstance(direct_url.get("url"), TEXT_TYPES):
        dist["url"] = touni(direct_url["url"])
        if direct_url.get("vcs_info"):
            dist["vcs"] = direct_url["vcs_info"]
    return dist, path, meta_file


def mark_software(dist, site, software_dir, path, meta_file):
    """A distribution installed from the software's own folder is the software: record its import roots,
    the packages its finder exposes, its metadata and entry points."""
    local = url_path(dist.get("url", ""))
    if dist["source"] not in ("editable", "local") or not local or not inside(local, software_dir):
        return
    dist["software"] = True
    rel = os.path.relpath(os.path.realpath(local), os.path.realpath(software_dir))
    rows = record_files(path) if path.endswith(".dist-info") else None
    files = [r[0] for r in rows or []] + ([dist["entry"]] if dist["entry"].endswith(".egg-link") else [])
    editable = dist["source"] == "editable"
    dist["import_roots"] = import_roots(site, files, software_dir, rel) if editable \
        else tree_roots(files, software_dir, rel)
    dist["import_packages"] = editable_packages(site, files, software_dir) if editable else []
    dist["metadata"] = read_small(meta_file, 1 << 20) if os.path.isfile(meta_file) else None
    dist["entry_points"] = read_small(os.path.join(path, "entry_points.txt")) if os.path.isdir(path) else None


SOURCE_WORDS = {"index": "from an index or a wheel folder (pip records no URL for either)", "local": "from a path",
                "vcs": "from a VCS", "url": "from a URL", "unknown": "installer unknown"}


def describe_distributions(dists):
    """One line: how many distributions, from where, in the words of what pip really recorded."""
    counts = {}
    for dist in dists:
        counts[dist["source"]] = counts.get(dist["source"], 0) + 1
    return ", ".join("%d %s" % (counts[k], SOURCE_WORDS.get(k, k)) for k in sorted(counts))


# -- Hashing, time and the manifest (pm.py uses these too) --------------------


def utc_time(seconds=None):
    """'2026-12-01T19:00:00Z': the one time format of manifests and listings."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def copy_hashing(reader, writer=None, digest=None):
    """Read reader to its end in CHUNK blocks, hashing each and writing it to writer if given;
    return (sha256 hex, size). digest may be any object with update/hexdigest."""
    import hashlib
    digest = digest or hashlib.sha256()
    size = 0
    while True:
        block = reader.read(CHUNK)
        if not block:
            break
        digest.update(block)
        if writer is not None:
            writer.write(block)
        size += len(block)
    return digest.hexdigest(), size


def file_digest(path):
    with open(path, "rb") as handle:
        return copy_hashing(handle)


# A bundle is one zip: manifest.json (last), env.yml, env-history.yml, conda-list.json, min-deps.json,
# python-dists.json, software/<dir>/..., and with --with-packages channel/<subdir>/... and wheels/...; the manifest holds these fields, with the sha256 and size of every member.
MANIFEST_FIELDS = ("format", "name", "created", "probe_version", "source", "env", "software",
                   "minimal", "requested_specs", "packages", "members", "binaries")


def make_manifest(name, members, software, **fields):
    """The manifest of a bundle: every field of MANIFEST_FIELDS, defaults for those not given."""
    manifest = {"format": BUNDLE_FORMAT, "name": name, "created": utc_time(), "probe_version": PROBE_VERSION,
                "source": {}, "env": {}, "software": software, "minimal": [], "requested_specs": [],
                "members": members}
    manifest.update(fields)
    return manifest


def to_json_bytes(data):
    return json.dumps(data, indent=1, sort_keys=True).encode("utf-8")


def text_bytes(text):
    return text.encode("utf-8") if not isinstance(text, bytes) else text


# -- Writing a bundle ----------------------------------------------------------


def excluded(relpath, patterns):
    import fnmatch
    name = os.path.basename(relpath)
    for pattern in patterns:
        if fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(relpath, pattern):
            return True
    return False


class Progress(object):
    """On a TTY, one line redrawn in place: MiB done (of the total when known), the rate and, with a
    total, the time left. Elsewhere (a pipe, a log) nothing until done() says it in one line."""

    def __init__(self, label, total=None):
        self.label = label
        self.total = total
        self.files = 0
        self.size = 0
        self.started = time.time()
        self.shown = 0.0
        self.tty = sys.stderr.isatty() and not QUIET[0]

    def add(self, size):
        self.files += 1
        self.size += size
        now = time.time()
        if self.tty and now - self.shown > 0.3:
            self.shown = now
            rate = self.size / max(now - self.started, 1e-3) / 1048576.0
            if self.total:
                left = (self.total - self.size) / 1048576.0 / rate if rate else 0
                line = "%s: %.1f of %.1f MiB (%d%%), %.1f MiB/s, ETA %d:%02d" % (
                    self.label, self.size / 1048576.0, self.total / 1048576.0, 100 * self.size // self.total, rate,
                    left // 60, left % 60)
            else:
                line = "%s: %d files, %.1f MiB, %.1f MiB/s" % (self.label, self.files, self.size / 1048576.0, rate)
            sys.stderr.write("\r" + line[:100].ljust(78) + " ")
            sys.stderr.flush()

    def clear(self):
        if self.tty:
            sys.stderr.write("\r" + " " * 80 + "\r")

    def done(self):
        self.clear()
        seconds = time.time() - self.started
        say("%s: %s, %.1f MiB in %.1f s" % (self.label, plural(self.files, "file"), self.size / 1048576.0, seconds))


def tree_size(root):
    """The bytes of the files under root, for the progress line's total (links not followed)."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total or None


def arc_text(relpath):
    """A path as zip entry text: '/'-separated, UTF-8 when the name is, else read as Latin-1."""
    raw = relpath if isinstance(relpath, bytes) else relpath.encode("utf-8", "surrogateescape") \
        if not PY2 else relpath.encode("utf-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace(os.sep, "/")


def zip_mtime(mtime):
    """The nearest time a zip entry can hold (files dated 1970 are common in built trees)."""
    return min(max(mtime, ZIP_FIRST), ZIP_LAST)


def name_clash(arcname, path, claimed, folded):
    """Why path cannot be arcname in the bundle (claimed: arcname -> path so far; folded: the same, names
    lower-cased), or None."""
    if arcname in claimed:
        return "%r and %r are both %s once their names are decoded" % (claimed[arcname], path, arcname)
    if arcname.lower() in folded:
        return ("%r and %r differ only in case, and the target refuses such bundles (on a case-insensitive disk "
                "one would overwrite the other)" % (folded[arcname.lower()], path))
    return None


class BundleWriter(object):
    """The one bundle writer (pack, and pm.py's converter of the original tool's uploads): members
    are streamed into a temp zip beside the target, each hashed on the way; finish() adds the
    manifest and renames the zip into place, abort() removes it."""

    def __init__(self, path):
        import tempfile
        import zipfile
        self.path = path
        handle, self.temp = tempfile.mkstemp(prefix=".pm-", suffix=".part",
                                             dir=os.path.dirname(os.path.abspath(path)))
        os.close(handle)
        self.archive = zipfile.ZipFile(self.temp, "w", zipfile.ZIP_DEFLATED, True)
        self.members = {}

    def write_bytes(self, arcname, data, mode=0o644):
        import zipfile
        info = zipfile.ZipInfo(arcname, date_time=time.gmtime()[:6])
        info.external_attr = (mode & 0xFFFF) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        self.archive.writestr(info, data)

    def add_bytes(self, arcname, data, mode=0o644):
        import hashlib
        self.write_bytes(arcname, data, mode)
        if not stat.S_ISDIR(mode):
            self.members[arcname] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}

    def add_stream(self, info, reader):
        """Python 3: a member from a stream (a file, another zip's member), hashed as it is written."""
        with self.archive.open(info, "w", force_zip64=info.file_size > (1 << 31)) as target:
            digest, size = copy_hashing(reader, target)
        self.members[info.filename] = {"sha256": digest, "size": size}
        return size

    def add_file(self, path, arcname, progress):
        import zipfile
        try:
            method = zipfile.ZIP_STORED if arcname.lower().endswith(STORED_SUFFIXES) else zipfile.ZIP_DEFLATED
            if PY2:
                size = self.add_file_py2(path, arcname, method)
            else:
                st = os.stat(path)
                info = zipfile.ZipInfo(arcname, time.localtime(zip_mtime(st.st_mtime))[:6])
                info.external_attr = (st.st_mode & 0xFFFF) << 16
                info.file_size = st.st_size
                info.compress_type = method
                with open(path, "rb") as source:  # one read per file: the sum always fits the bytes
                    size = self.add_stream(info, source)
        except (IOError, OSError) as exc:
            if exc.errno in WRITE_ERRNOS:
                raise  # write_bundle names the bundle's disk
            raise PmError("cannot read %s: %s" % (path, exc), "fix its permissions or leave it out with --exclude")
        progress.add(size)

    def add_file_py2(self, path, arcname, method):
        """Python 2.7 (whose zipfile cannot stream into a member): the file is copied, hashed on the
        way, beside the bundle, and that copy, which nothing else changes, goes in; so the sum is of
        the bytes written even if the file changes meanwhile, and a full disk is the bundle's disk."""
        import shutil
        import tempfile
        mtime = os.stat(path).st_mtime
        handle, source = tempfile.mkstemp(prefix=".pm-pack-", dir=os.path.dirname(os.path.abspath(self.temp)))
        try:
            with open(path, "rb") as reader, os.fdopen(handle, "wb") as copy:
                digest, size = copy_hashing(reader, copy)
            shutil.copymode(path, source)
            os.utime(source, (zip_mtime(mtime), zip_mtime(mtime)))
            self.archive.write(source, arcname, method)
        finally:
            os.remove(source)
        self.members[arcname] = {"sha256": digest, "size": size}
        return size

    def add_link(self, path, arcname, real_root, progress):
        """In-tree links stay links (an absolute one is written relative, as the target would
        refuse it); a link leading out of the tree is copied if it is a file."""
        target = os.readlink(path)
        real = os.path.realpath(path)
        if real.startswith(real_root + os.sep):
            if os.path.isabs(target):
                target = os.path.relpath(real, os.path.realpath(os.path.dirname(path)))
                say("note: %s points inside the directory by an absolute path; it is kept as %s" % (path, target))
            self.add_bytes(arcname, arc_text(target).encode("utf-8"), stat.S_IFLNK | 0o777)
            progress.add(0)
        elif os.path.isfile(real):
            say("note: %s points outside the directory; its file is copied" % path)
            self.add_file(real, arcname, progress)
        else:
            say("note: %s points outside the directory to %s; left out" % (path, target))

    def add_software(self, root, patterns, skip_unreadable=False):
        """Stream the directory in under software/<dir>/, keeping modes and in-tree links. The
        bundle itself is left out when it is written inside the tree; two names that are one
        entry once decoded, and folders that cannot be read (unless skip_unreadable), are errors."""
        root = os.path.abspath(root)
        real_root = os.path.realpath(root)
        top = "software/" + arc_text(os.path.basename(root))
        progress = Progress("zipping " + os.path.basename(root), tree_size(root) if sys.stderr.isatty() else None)
        own_files = set(os.path.realpath(p) for p in (self.path, self.temp))
        unreadable, claimed, folded = [], {}, {}
        self.add_bytes(top + "/", b"", stat.S_IFDIR | 0o755)
        for folder, dirs, files in os.walk(root, onerror=unreadable.append):
            rel_folder = os.path.relpath(folder, root)
            rel_folder = "" if rel_folder == "." else rel_folder
            kept = []
            for name in sorted(dirs) + sorted(files):
                rel = os.path.join(rel_folder, name)
                path = os.path.join(folder, name)
                if excluded(rel, patterns) or os.path.realpath(path) in own_files:
                    continue
                arcname = top + "/" + arc_text(rel)
                clash = name_clash(arcname, path, claimed, folded)
                if clash:
                    raise PmError(clash, "rename one of them, or leave one out with --exclude")
                claimed[arcname] = folded[arcname.lower()] = path
                if os.path.islink(path):
                    self.add_link(path, arcname, real_root, progress)
                elif name in dirs:
                    kept.append(name)
                    self.add_bytes(arcname + "/", b"", os.lstat(path).st_mode)
                elif os.path.isfile(path):
                    self.add_file(path, arcname, progress)
                else:
                    say("note: %s is not a file, folder or link (a device, fifo or socket); left out" % path)
            dirs[:] = kept
        for error in unreadable:
            if not skip_unreadable:
                raise PmError("cannot read the folder %s: %s" % (error.filename, error.strerror),
                              "fix its permissions, leave it out with --exclude, or pass --skip-unreadable")
            say("note: the folder %s cannot be read (%s); it is left out" % (error.filename, error.strerror))
        progress.done()
        return progress

    def finish(self, manifest):
        """Add manifest.json (its members are this writer's), close, and rename into place."""
        manifest["members"] = self.members
        self.write_bytes("manifest.json", to_json_bytes(manifest))
        self.archive.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.temp, 0o666 & ~umask)  # a file to carry: readable as the user's umask says, not mkstemp's 0600
        os.rename(self.temp, self.path)
        return manifest

    def abort(self):
        try:
            self.archive.close()
        except (IOError, OSError):
            pass  # a full disk: the temp file goes anyway
        if os.path.exists(self.temp):
            os.remove(self.temp)


# -- Capturing the environment --------------------------------------------------


def libc_version():
    """The running C library, e.g. 'glibc 2.36'. (platform.libc_ver reads the interpreter's own
    binary instead: it names the newest glibc symbol the build links to, often an older one.)"""
    import platform
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):
        pass  # Python 2.7 does not know the name; macOS has no glibc
    try:
        import ctypes
        call = ctypes.CDLL(None).gnu_get_libc_version
        call.restype = ctypes.c_char_p
        return "glibc " + call().decode("ascii")
    except (ImportError, AttributeError, OSError, TypeError):
        libc = platform.libc_ver()
        return ("%s %s" % libc).strip() if libc[0] else ""


def source_platform(conda_info):
    import platform
    return {
        "os": platform.system(),
        "os_release": platform.release(),
        "machine": platform.machine(),
        "libc": libc_version(),
        "python": platform.python_version(),
        "conda": conda_info.get("conda_version", ""),
        "conda_platform": conda_info.get("platform", ""),
        "hostname": platform.node(),
    }


def gather_environment(conda, conda_info, prefix, software_dir):
    """Everything the bundle says about the environment, before anything is written: what conda
    says of it (list, env export), and the records, the minimal set and the distributions read here."""
    captured = read_prefix(prefix, software_dir)
    say("asking conda for the environment (list, env export)...")
    args, extra_env = export_args(conda_info, prefix)
    calls = [lambda: run_conda_json(conda, ["list", "--json", "-p", prefix]),
             lambda: run_conda(conda, args, extra_env=extra_env)]
    if conda_version(conda_info) >= (4, 7, 12):  # the first conda with --from-history
        calls.append(lambda: run_conda(conda, args + ["--from-history"], check=False, extra_env=extra_env))
    answers = [answer for _, answer in in_threads(lambda call: call(), calls, len(calls))]  # conda starts slowly
    listed, env_yml, history_yml = (answers + [None])[:3]
    captured.update(listed=listed, env_yml=env_yml, history_yml=history_yml, info=conda_info,
                    kind={"env_kind": "conda %s" % conda_info.get("conda_version", "?"),
                          "env_read": "with conda (list --json, env export) and from conda-meta/*.json"})
    return tell_environment(captured)


def read_prefix(prefix, software_dir):
    """A conda-style prefix read here, with no conda: its conda-meta records, what the user asked for
    (conda-meta/history), the minimal set and the Python distributions."""
    records = read_conda_meta(prefix)
    requested = read_requested_specs(prefix)
    python = [r["version"] for r in records if r["name"] == "python"]
    return {"prefix": prefix, "records": records, "requested": requested, "python": (python or [""])[0],
            "minimal": minimal_set(dependency_graph(records), requested),
            "dists": python_distributions(prefix, records, software_dir)}


def environment_line(prefix, kind):
    """'environment PREFIX: KIND, made by TOOL; read HOW' (text)."""
    return u"environment %s: %s%s; read %s" % (touni(prefix), kind["env_kind"], u", made by %s" % kind["env_made_by"]
                                               if kind.get("env_made_by") else u"", kind["env_read"])


def tell_environment(captured):
    """Say what was read (stderr); return captured."""
    say(environment_line(captured["prefix"], captured["kind"]))
    if captured["records"] or not captured["dists"]:
        say(u"environment %s: %d packages, %d directly required (%d asked for in its history)"
            % (touni(captured["prefix"]), len(captured["records"]), len(captured["minimal"]), len(captured["requested"])))
    dists = captured["dists"]
    if dists:
        say("Python distributions: %d (%s)" % (len(dists), describe_distributions(dists)))
    for dist in dists:
        if dist["software"]:
            say("%s %s is the software itself (installed %s from %s): the target installs the migrated copy, "
                "never a release" % (dist["name"], dist["version"], dist["source"], dist.get("url")))
    return captured


# -- Environments read without conda ---------------------------------------------
# A conda-style prefix (conda-meta/: micromamba, mamba, pixi, rattler, or conda itself when it is not
# here) is read from its records: conda-list.json and env.yml are written as conda would print them.
# A virtual environment (pyvenv.cfg: venv, virtualenv, uv) has no conda records at all: its Python
# version from pyvenv.cfg, every distribution from its site-packages.


def gather_without_conda(prefix, software_dir):
    """A conda-style prefix, read with no conda: what 'conda list --json', 'conda env export' and its
    --from-history form would say, written from the records."""
    captured = read_prefix(prefix, software_dir)
    records, dists, name = captured["records"], captured["dists"], os.path.basename(prefix.rstrip(os.sep))
    channels = []
    for record in records:
        channel = export_channel(record)
        if channel and channel not in channels:
            channels.append(channel)
    deps = ["%s=%s=%s" % (r["name"], r["version"], r.get("build", "")) for r in sorted(records, key=lambda r: r["name"])]
    history = None
    if captured["requested"]:
        history = env_file_text(name, prefix, channels, sorted(captured["requested"].values()), [])
    subdirs = [r.get("subdir") for r in records if r.get("subdir") and r.get("subdir") != "noarch"]
    captured.update(listed=listed_from_records(records, dists), history_yml=history,
                    env_yml=env_file_text(name, prefix, channels, deps, index_pins(dists)),
                    info={"platform": (subdirs or [this_subdir()])[0], "pkgs_dirs": package_caches(prefix, records)},
                    kind={"env_kind": "conda-style prefix read without conda",
                          "env_read": "from conda-meta/*.json and site-packages (no conda here)"})
    maker = conda_style_maker(prefix)
    if maker:
        captured["kind"]["env_made_by"] = maker
    lock = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(prefix))), "pixi.lock")
    if os.sep + os.path.join(".pixi", "envs") + os.sep in prefix and os.path.isfile(lock):
        captured["kind"]["pixi_lock"] = lock
        say("note: pixi's lockfile %s is recorded in the manifest (the bundle holds the environment as "
            "installed)" % lock)
    return tell_environment(captured)


def gather_venv(prefix, software_dir):
    """A virtual environment: its Python version from pyvenv.cfg, every distribution of its
    site-packages; no conda records (env.yml asks for that Python and pip's part)."""
    cfg = read_pyvenv_cfg(prefix)
    python = venv_python_version(prefix, cfg)
    dists = python_distributions(prefix, [], software_dir)
    tool = "uv" if cfg.get("uv") else "virtualenv" if cfg.get("virtualenv") else "venv"
    kind = {"env_kind": tool, "env_read": "from pyvenv.cfg and site-packages (Python %s)" % (python or "unknown")}
    if tool != "venv":
        kind["env_made_by"] = "%s %s" % (tool, cfg[tool])
    if cfg.get("include-system-site-packages", "").lower() == "true":
        say("note: %s also sees the system's site-packages (%s): only its own distributions are packed"
            % (prefix, cfg.get("home", "?")))
    name = os.path.basename(prefix.rstrip(os.sep))
    captured = {"prefix": prefix, "records": [], "requested": {}, "minimal": [], "dists": dists, "python": python,
                "listed": [], "history_yml": None, "kind": kind, "info": {"platform": this_subdir()},
                "env_yml": env_file_text(name, prefix, [], ["python=%s" % python] if python else [],
                                         index_pins(dists))}
    return tell_environment(captured)


def read_pyvenv_cfg(prefix):
    """pyvenv.cfg's KEY = VALUE lines (keys in lower case)."""
    values = {}
    for line in (read_small(os.path.join(prefix, "pyvenv.cfg")) or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip().lower()] = value.strip()
    return values


def venv_python_version(prefix, cfg):
    """'3.11.7': pyvenv.cfg's version (venv) or version_info (virtualenv, uv: '3.11.7.final.0'), else
    the X.Y of its lib/pythonX.Y."""
    for key in ("version", "version_info"):
        match = re.match(r"^(\d+\.\d+(?:\.\d+)?)", cfg.get(key, ""))
        if match:
            return match.group(1)
    for site in site_packages(prefix):
        return os.path.basename(os.path.dirname(site))[len("python"):]
    return ""


def conda_style_maker(prefix):
    """The tool that made a conda-style prefix, when it says: pixi (its .pixi/envs or conda-meta/pixi),
    else the command of conda-meta/history's first '# cmd:' (micromamba, mamba, conda N.N), else None."""
    if os.path.exists(os.path.join(prefix, "conda-meta", "pixi")) or \
            os.sep + os.path.join(".pixi", "envs") + os.sep in prefix:
        return "pixi"
    text = read_small(os.path.join(prefix, "conda-meta", "history")) or ""
    cmd = re.search(r"(?m)^#\s*cmd:\s*(\S+)", text)
    if not cmd:
        return None
    tool = os.path.basename(cmd.group(1))
    tool = "conda" if tool in ("__main__.py", "conda-script.py") else tool
    version = re.search(r"(?m)^#\s*conda version:\s*(\S+)", text)
    return "%s (conda %s)" % (tool, version.group(1)) if version and tool != "conda" else \
        "conda %s" % version.group(1) if version else tool


def export_channel(record):
    """The channel as 'conda env export' names it: conda.anaconda.org's by name, others by URL."""
    url = record_base_url(record)
    if url.startswith(("https://conda.anaconda.org/", "http://conda.anaconda.org/")):
        return channel_name(url)
    return url


def record_base_url(record):
    """A record's channel URL without its subdir (conda records write either form, or a name)."""
    url = str(record.get("channel") or "").rstrip("/")
    if not url and record.get("url"):
        url = str(record["url"]).rsplit("/", 1)[0]
    subdir = record.get("subdir") or ""
    if subdir and url.endswith("/" + subdir):
        url = url[:-len(subdir) - 1]
    return url


def listed_from_records(records, dists):
    """What 'conda list --json' prints, from the records: name, version, build_string, build_number,
    channel, base_url, platform, dist_name; and what pip installed, as conda lists it (channel pypi)."""
    listed = []
    for record in records:
        base_url = record_base_url(record)
        listed.append({"base_url": base_url, "build_number": record.get("build_number", 0),
                       "build_string": record.get("build", ""), "channel": channel_name(base_url),
                       "dist_name": "%s-%s-%s" % (record["name"], record["version"], record.get("build", "")),
                       "name": record["name"], "platform": record.get("subdir", ""), "version": record["version"]})
    for dist in dists:
        if not dist["owner"]:
            name = re.sub(r"[-_.]+", "-", dist["name"]).lower()
            listed.append({"base_url": "https://pypi.org/", "build_number": 0, "build_string": "pypi_0",
                           "channel": "pypi", "dist_name": "%s-%s-pypi_0" % (name, dist["version"]),
                           "name": name, "platform": "pypi", "version": dist["version"]})
    return sorted(listed, key=lambda r: r["name"])


def index_pins(dists):
    """env.yml's pip part: NAME==VERSION of what pip installed from an index (the rest is carried or
    is the software; an index's namesake of a path or VCS install is another thing)."""
    return ["%s==%s" % (d["name"], d["version"]) for d in dists
            if not d["owner"] and not d["software"] and d["source"] == "index" and d["name"].lower() != "pip"]


def yaml_scalar(text):
    """A YAML scalar of an environment file: plain when it can be, else double-quoted."""
    text = touni(text)
    if re.match(r"^[A-Za-z0-9_./:@+<>=!~,-][A-Za-z0-9_./:@+<>=!~,*\- ]*$", text) and not text.endswith(" "):
        return text
    return u'"%s"' % text.replace(u"\\", u"\\\\").replace(u'"', u'\\"')


def env_file_text(name, prefix, channels, deps, pip):
    """An environment file as 'conda env export' writes it."""
    lines = [u"name: %s" % yaml_scalar(name)]
    if channels:
        lines += [u"channels:"] + [u"  - %s" % yaml_scalar(c) for c in channels]
    lines += [u"dependencies:"] + [u"  - %s" % yaml_scalar(d) for d in deps]
    if pip:
        lines += [u"  - pip:"] + [u"    - %s" % yaml_scalar(p) for p in pip]
    lines.append(u"prefix: %s" % yaml_scalar(prefix))
    return u"\n".join(lines) + u"\n"


def this_subdir():
    """This machine's conda platform (linux-64, osx-arm64, ...)."""
    import platform
    system = {"Linux": "linux", "Darwin": "osx", "Windows": "win"}.get(platform.system(), platform.system().lower())
    machine = platform.machine().lower()
    arch = {"x86_64": "64", "amd64": "64", "i686": "32", "i386": "32", "arm64": "arm64"}.get(machine, machine)
    return "%s-%s" % (system, "arm64" if system == "osx" and machine == "aarch64" else arch)


def package_caches(prefix, records=()):
    """Where the packages of a prefix made without conda may be kept extracted: where its records say
    (extracted_package_dir, as rattler and pixi write it), $CONDA_PKGS_DIRS, the root's pkgs/
    (micromamba's $MAMBA_ROOT_PREFIX, or the folder above envs/), rattler's and pixi's caches, ~/.conda/pkgs."""
    places = [os.path.dirname(native_path(r["extracted_package_dir"]).rstrip(os.sep)) for r in records
              if isinstance(r.get("extracted_package_dir"), TEXT_TYPES) and r["extracted_package_dir"]]
    places += [p for p in os.environ.get("CONDA_PKGS_DIRS", "").split(",") if p]
    for root in (os.environ.get("MAMBA_ROOT_PREFIX"), prefix):
        if root:
            places.append(os.path.join(root, "pkgs"))
    parent = os.path.dirname(prefix.rstrip(os.sep))
    if os.path.basename(parent) == "envs":
        places.append(os.path.join(os.path.dirname(parent), "pkgs"))
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    for variable, default in (("PIXI_CACHE_DIR", None), ("RATTLER_CACHE_DIR", os.path.join(cache, "rattler", "cache"))):
        folder = os.environ.get(variable) or default
        if folder:
            places.append(os.path.join(folder, "pkgs"))
    places.append(os.path.expanduser("~/.conda/pkgs"))
    out = []
    for place in places:
        if os.path.isdir(place) and place not in out:
            out.append(place)
    return out


def write_bundle(path, name, software_dir, captured, patterns, skip_unreadable=False, plan=None, level=PACK_LEVEL):
    """Write the bundle: a temp file beside path, renamed into place once complete; plan (from
    plan_packages) carries the packages too, unpacked ones deflated at level."""
    writer = BundleWriter(path)
    try:
        writer.add_bytes("env.yml", text_bytes(captured["env_yml"]))
        if captured["history_yml"]:
            writer.add_bytes("env-history.yml", text_bytes(captured["history_yml"]))
        writer.add_bytes("conda-list.json", to_json_bytes(captured["listed"]))
        min_records = min_dep_records(captured["minimal"], captured["records"], captured["listed"],
                                      captured["requested"])
        writer.add_bytes("min-deps.json", to_json_bytes(min_records))
        progress = writer.add_software(software_dir, patterns, skip_unreadable)
        software = {"dir": arc_text(os.path.basename(os.path.abspath(software_dir))), "files": progress.files,
                    "bytes": progress.size}
        packages, binaries = carry_packages(writer, plan, captured["info"].get("platform") or "noarch", level) \
            if plan else (None, [])
        if plan is not None:  # a venv's plan is empty: its wheels are all it carries
            binaries += carry_wheels(writer, captured["prefix"], captured["dists"])
        binaries.append(BinaryNeeds("software", name).add_folder(software_dir, folder_files(software_dir, patterns)))
        writer.add_bytes("python-dists.json", to_json_bytes({"dists": captured["dists"]}))
        source = source_platform(captured["info"])
        source.update(captured["kind"])
        writer.finish(make_manifest(
            name, None, software, source=source,
            env={"name": os.path.basename(captured["prefix"]), "prefix": captured["prefix"],
                 "packages": len(captured["records"]), "python": captured["python"],
                 "kind": captured["kind"]["env_kind"]},
            minimal=captured["minimal"], requested_specs=sorted(captured["requested"].values()), packages=packages,
            binaries={"rows": [b.to_json() for b in binaries if b.files]}))
    except BaseException as exc:
        writer.abort()
        if isinstance(exc, (IOError, OSError)):
            raise PmError("cannot write the bundle %s: %s" % (path, exc.strerror or exc),
                          "free some space there, or save it elsewhere with -o")
        raise
    return path


# -- Carrying the packages ----------------------------------------------------
# pack --with-packages: every package of the environment goes into the bundle under channel/<subdir>/,
# indexed as a channel, so that a target with no network creates the environment from the bundle
# alone. A package conda keeps extracted in its cache is carried unpacked: its files as one zip
# (<dist>.zip, made by a few threads at once), which every target reads fast with the standard library:
# pm's linker links from it, and a conda target gets the package already extracted in its cache. A
# package with only its archive in the cache is carried as that archive, checked against its record.

REPODATA_KEYS = ("name", "version", "build", "build_number", "depends", "constrains", "subdir", "noarch",
                 "license", "timestamp", "track_features", "features")


def archive_sums(path):
    """md5, sha256 and size of a file, in one read."""
    import hashlib
    md5, sha256, size = hashlib.md5(), hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while True:
            block = handle.read(CHUNK)
            if not block:
                return md5.hexdigest(), sha256.hexdigest(), size
            md5.update(block)
            sha256.update(block)
            size += len(block)


def record_subdir(record):
    """The channel subdir a record came from: its own field, else its url's folder."""
    if record.get("subdir"):
        return record["subdir"]
    url = record.get("url") or ""
    return url.rsplit("/", 2)[-2] if url.count("/") >= 2 else "noarch"


# The archive forms a conda package comes in: (file suffix, the repodata key that lists it). The first is
# the one every conda reads (and pm's linker: bz2 is in every Python). pm.py adds the reader of each form
# (FORMS there); adding a form is one row here and one there, with its reader.
PACKAGE_FORMS = ((".tar.bz2", "packages"), (".conda", "packages.conda"))
EVERY_CONDA_READS = PACKAGE_FORMS[0][0]


def package_form(fn):
    """The (suffix, repodata key) of a package file name, or None when it is no conda package."""
    for form in PACKAGE_FORMS:
        if fn.endswith(form[0]):
            return form
    return None


def package_stem(fn):
    """NAME-VERSION-BUILD: a package file name without its form's suffix."""
    form = package_form(fn)
    return fn[:-len(form[0])] if form else fn


def record_fn(record):
    return record.get("fn") or "%s-%s-%s%s" % (record["name"], record["version"], record.get("build", ""),
                                                EVERY_CONDA_READS)


class CarriedPackage(object):
    """One package of the environment and how it is carried: 'unpacked' (the cache's extracted copy,
    as a zip), 'archive' (the cache's file, checked), 'rebuild' (a .tar.bz2 made from the extracted
    copy, --as-tar-bz2) or 'missing' (why)."""

    def __init__(self, record, kind, source, why="", sums=None):
        self.record, self.kind, self.source, self.why = record, kind, source, why
        self.sums = sums  # (md5, sha256, size) of the cache's archive, read once when it was checked
        self.fn = record_fn(record)
        if kind in ("rebuild", "unpacked"):
            self.fn = package_stem(self.fn) + EVERY_CONDA_READS  # the name every conda reads
        self.dist = package_stem(self.fn)
        self.subdir = record_subdir(record)

    def label(self):
        return "%s %s %s" % (self.record["name"], self.record["version"], self.record.get("build", ""))


def plan_packages(records, pkgs_dirs, as_tar_bz2=False):
    """How each record is carried (CarriedPackage), looking through pkgs_dirs in order: its extracted
    copy unpacked, else its archive; with as_tar_bz2, archives only (.conda ones rebuilt as .tar.bz2)."""
    plan = []
    for record in records:
        fn = record_fn(record)
        stem = package_stem(fn)
        found, why = None, "not in conda's package caches (%s)" % ", ".join(pkgs_dirs)
        for folder in pkgs_dirs:
            archive = os.path.join(folder, fn)
            extracted = os.path.join(folder, stem)
            if not as_tar_bz2 and os.path.isfile(os.path.join(extracted, "info", "index.json")):
                found = CarriedPackage(record, "unpacked", extracted)
                break
            converted = as_tar_bz2 and not fn.endswith(EVERY_CONDA_READS) and os.path.isfile(archive)
            if os.path.isfile(archive) and not converted:
                sums = archive_sums(archive)
                if sums[0] == record.get("md5", sums[0]) and sums[1] == record.get("sha256", sums[1]):
                    found = CarriedPackage(record, "archive", archive, sums=sums)
                    break
                why = "%s does not match its record's md5/sha256" % archive
            if os.path.isfile(os.path.join(extracted, "info", "index.json")):
                found = CarriedPackage(record, "rebuild", extracted, "its .conda is carried as .tar.bz2 (--as-tar-bz2)"
                                       if converted else "it has no archive in the cache")
                break
        plan.append(found or CarriedPackage(record, "missing", None, why))
    return plan


def package_members(folder):
    """[(rel, path)] of an extracted package folder's files and links, info/ first (as conda-build
    writes it: a linker reads it first); the record conda added at extraction
    (info/repodata_record.json) is left out."""
    members = []
    for root, dirs, files in os.walk(folder):
        for name in sorted(dirs) + sorted(files):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            if rel == "info/repodata_record.json" or (name in dirs and not os.path.islink(path)):
                continue
            members.append((not rel.startswith("info/"), rel, path))
    return [(rel, path) for _, rel, path in sorted(members)]


def rebuild_tarball(folder, out):
    """A .tar.bz2 with the contents of an extracted package folder (links kept as links)."""
    import tarfile
    with tarfile.open(out, "w:bz2") as tar:
        for rel, path in package_members(folder):
            tar.add(path, arcname=rel, recursive=False)
    return out


def repodata_entry(package, sums):
    """A package's repodata entry: with the sums of its archive, or for an unpacked one the zip that
    holds it (pm_file) and no sums (the zip's sha256 is in the manifest; conda then takes the extracted
    copy pm puts in its cache for what the entry names)."""
    entry = dict((key, package.record[key]) for key in REPODATA_KEYS if package.record.get(key) is not None)
    entry["subdir"] = package.subdir
    entry.setdefault("depends", [])
    if sums:
        entry["md5"], entry["sha256"], entry["size"] = sums
    else:
        entry["pm_file"] = package.dist + ".zip"
    return entry


WORKERS = 4  # zlib and bz2 release the GIL: packages are zipped, extracted and linked by a few threads at once
ZIP_LINK = stat.S_IFLNK | 0o777
BIG_FILE = 8 << 20  # files over this are streamed into the zip (their time to 2 s); smaller ones keep it exactly


def unix_time_field(mtime):
    """A zip 'UT' extra field holding mtime to the second (a zip's own date is local time to 2 s, and a
    shipped .pyc is valid only for its source's exact mtime)."""
    import struct
    return struct.pack("<HHBl", 0x5455, 5, 1, int(min(max(mtime, 0), 0x7FFFFFFF)))


def zip_package(folder, out, level=PACK_LEVEL):
    """An extracted package folder as one zip at out (package_members): files deflated (at level) with
    their modes and mtimes, links as links. Returns out."""
    import zipfile
    level = {} if sys.version_info < (3, 7) else {"compresslevel": level}  # 2.7 and 3.6: zlib's default (6)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, True, **level) as archive:
        for rel, path in package_members(folder):
            st = os.lstat(path)
            info = zipfile.ZipInfo(rel, time.localtime(zip_mtime(st.st_mtime))[:6])
            info.extra = unix_time_field(st.st_mtime)
            if stat.S_ISLNK(st.st_mode):
                info.external_attr = ZIP_LINK << 16
                archive.writestr(info, os.readlink(path).encode("utf-8") if not PY2 else os.readlink(path),
                                 zipfile.ZIP_STORED)
            elif st.st_size > BIG_FILE:
                archive.write(path, rel)
            else:
                info.external_attr = (st.st_mode & 0xFFFF) << 16
                with open(path, "rb") as source:
                    archive.writestr(info, source.read(), zipfile.ZIP_DEFLATED, **level)
    return out


def in_threads(func, items, workers=WORKERS, on_stop=None):
    """func(item) for every item by a few threads; yields (item, result) in items' order. Python 2.7
    has no concurrent.futures. A failure (or Ctrl-C) stops the rest: on_stop() is called, to tell the
    items under way, and the failure is raised here once no worker runs."""
    import threading
    results, ready, lock, left = {}, [threading.Event() for _ in items], threading.Lock(), list(enumerate(items))
    left.reverse()

    def work():
        while True:
            with lock:
                if not left:
                    return
                index, item = left.pop()
            try:
                results[index] = (True, func(item))
            except BaseException as exc:
                results[index] = (False, exc)
                with lock:
                    del left[:]
            ready[index].set()

    threads = [threading.Thread(target=work) for _ in range(max(1, min(workers, len(items))))]
    for thread in threads:
        thread.daemon = True
        thread.start()
    try:
        for index, item in enumerate(items):
            while not ready[index].wait(0.2):  # a timed wait: Ctrl-C is seen in Python 2.7 too
                pass
            ok, value = results.pop(index)
            if not ok:
                raise value
            yield item, value
    except BaseException:
        if on_stop is not None:
            on_stop()
        raise
    finally:
        with lock:
            del left[:]
        for thread in threads:  # what a worker holds (a temp file, a prefix) is settled before the caller goes on
            while thread.is_alive():
                thread.join(0.2)


def carry_packages(writer, plan, platform, level=PACK_LEVEL):
    """Write the packages into the bundle under channel/<subdir>/ with each subdir's repodata.json
    (and .bz2, which conda 4.3 reads); return the manifest's 'packages' field. Unpacked packages are
    zipped beside the bundle by a few threads while the finished ones go in, in order. Returns that
    field and the BinaryNeeds of each package carried (what its ELF files need)."""
    import bz2
    import shutil
    import tempfile
    indexes = {"noarch": {}, platform: {}}
    carried, binaries = [], []
    total = sum(os.path.getsize(p.source) for p in plan if p.kind == "archive")
    progress = Progress("carrying %s" % plural(len(plan), "package"), None if any(p.kind != "archive" for p in plan) else total)
    scratch = tempfile.mkdtemp(prefix=".pm-packages-", dir=os.path.dirname(os.path.abspath(writer.temp)))

    def prepare(package):
        out = os.path.join(scratch, package.dist + ".zip")
        package.binaries = package_binaries(package)
        if package.kind == "unpacked":
            return zip_package(package.source, out, level)
        return rebuild_tarball(package.source, out[:-4] + ".tar.bz2") if package.kind == "rebuild" else package.source

    largest_first = sorted((p for p in plan if p.kind != "missing"), key=lambda p: -(p.record.get("size") or 0))
    try:  # the largest first (by their archives' size), so that no worker is left with a big one at the end
        for package, source in in_threads(prepare, largest_first):
            name = package.dist + ".zip" if package.kind == "unpacked" else package.fn
            arcname = "channel/%s/%s" % (package.subdir, name)
            writer.add_file(source, arcname, progress)
            key = package_form(package.fn)[1]
            indexes.setdefault(package.subdir, {}).setdefault(key, {})[package.fn] = repodata_entry(
                package, None if package.kind == "unpacked" else package.sums or archive_sums(source))
            binaries.append(package.binaries)
            carried.append({"file": arcname, "name": package.record["name"], "version": package.record["version"],
                            "build": package.record.get("build", ""), "rebuilt": package.kind == "rebuild",
                            "form": "unpacked" if package.kind == "unpacked" else "archive"})
            if source.startswith(scratch + os.sep):
                os.remove(source)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    progress.done()
    carried.sort(key=lambda c: c["file"])
    for subdir, index in sorted(indexes.items()):
        repodata = dict(((key, index.get(key, {})) for _, key in PACKAGE_FORMS), info={"subdir": subdir},
                        repodata_version=1)
        repodata = to_json_bytes(repodata)
        writer.add_bytes("channel/%s/repodata.json" % subdir, repodata)
        writer.add_bytes("channel/%s/repodata.json.bz2" % subdir, bz2.compress(repodata))
    return {"platform": platform, "carried": carried,
            "missing": [{"name": p.record["name"], "version": p.record["version"], "build": p.record.get("build", ""),
                         "why": p.why} for p in plan if p.kind == "missing"]}, binaries


def package_binaries(package):
    """The BinaryNeeds of a carried package: its extracted copy's files, or its .tar.bz2's members
    (a .conda archive is not read: zstd)."""
    import tarfile
    needs = BinaryNeeds("conda", package.record["name"], package.record["version"])
    if package.kind in ("unpacked", "rebuild"):
        return needs.add_folder(package.source, package_members(package.source))
    if package.source.endswith(EVERY_CONDA_READS):
        with tarfile.open(package.source, "r:bz2") as tar:
            for member in tar:
                if member.isfile() and member.size >= 64:
                    needs.add(member.name, elf_stream(tar.extractfile(member), member.size))
    return needs


def check_package_plan(plan, allow_missing):
    missing = [p for p in plan if p.kind == "missing"]
    for package in plan:
        if package.kind == "rebuild":
            say("note: %s: %s; its .tar.bz2 is rebuilt from %s" % (package.label(), package.why, package.source))
    if missing and not allow_missing:
        raise PmError("%d package%s of the environment cannot be carried: %s" % (
            len(missing), "s" * (len(missing) > 1), "; ".join("%s (%s)" % (p.label(), p.why) for p in missing)),
            "download them again on this machine (conda install --force-reinstall NAME), or pass --allow-missing")
    for package in missing:
        say("warning: %s is not carried (%s); the target needs a channel that has it" % (package.label(), package.why))


def print_package_plan(plan, dists=()):
    """--dry-run: what --with-packages would carry, and the total size."""
    carry, left = carried_wheel_plan(dists)
    for dist in carry:
        print("%-10s %-50s %10s  %s" % ("wheel", "%s %s" % (dist["name"], dist["version"]), "-",
                                        "rebuilt from %s/%s/RECORD" % (dist["site"], dist["entry"])))
    for dist, why in left:
        print("%-10s %-50s %10s  %s" % ("missing", "%s %s" % (dist["name"], dist["version"]), "-", why))
    total = 0
    for package in plan:
        size = os.path.getsize(package.source) if package.kind == "archive" else \
            tree_size(package.source) or 0 if package.kind == "unpacked" else 0
        total += size
        carried = package.dist + ".zip" if package.kind == "unpacked" else package.fn
        print("%-10s %-50s %10s  %s" % (package.kind, package.subdir + "/" + carried,
                                        human_size(size) if size else "-",
                                        package.why if package.kind == "missing" else
                                        "%s (%s)" % (package.source, package.why) if package.why else package.source))
    print("%s, %s (archives as they are, unpacked ones as extracted, before deflating), %d missing"
          % (plural(len(plan), "package"), human_size(total), len([p for p in plan if p.kind == "missing"])))


# -- Carrying what pip installed --------------------------------------------------
# pack --with-packages also carries every distribution pip installed: a wheel rebuilt from the
# files its RECORD lists (console scripts are left to the installer, which makes them again from
# entry_points.txt), under wheels/ in the bundle. python-dists.json names each one's wheel.


def wheel_escape(text, version=False):
    """A name or version as a wheel file name writes it (PEP 427: runs of other characters become '_')."""
    return re.sub(r"[^\w\d.+]+" if version else r"[^\w\d.]+", "_", text)


def entry_points_of(text):
    """[(command, module:function)] of an entry_points.txt's console and GUI scripts."""
    points, section = [], None
    for line in (text or "").splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]").strip()
        elif section in ("console_scripts", "gui_scripts") and "=" in line:
            command, target = line.split("=", 1)
            points.append((command.strip(), target.strip()))
    return points


def carried_wheel_plan(dists):
    """(the distributions pip installed that can be carried, [(dist, why not)] for the rest)."""
    carry, left = [], []
    for dist in dists:
        if dist["owner"] or dist["software"] or dist["name"].lower() == "pip":  # every target has its own pip
            continue
        if dist["source"] == "editable":
            left.append((dist, "an editable install from %s, which is not the software" % dist.get("url", "?")))
        elif not dist["entry"].endswith(".dist-info"):
            left.append((dist, "installed as an egg, with no RECORD to rebuild it from"))
        else:
            carry.append(dist)
    return carry, left


def record_hash(data):
    import base64
    import hashlib
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")


def rebuild_wheel(prefix, dist, folder):
    """A wheel of an installed distribution, from the files its RECORD lists; return (path, notes)."""
    import zipfile
    site = os.path.join(prefix, dist["site"])
    info_dir = os.path.join(site, dist["entry"])
    rows = record_files(info_dir)
    if rows is None:
        raise PmError("%s %s has no RECORD to rebuild its wheel from" % (dist["name"], dist["version"]),
                      "reinstall it with pip, or pass --allow-missing")
    tags = [line.split(":", 1)[1].strip() for line in (read_small(os.path.join(info_dir, "WHEEL")) or "").splitlines()
            if line.startswith("Tag:")]
    scripts = [command for command, _ in entry_points_of(read_small(os.path.join(info_dir, "entry_points.txt")))]
    stem = "%s-%s" % (wheel_escape(dist["name"]), wheel_escape(dist["version"], True))
    path = os.path.join(folder, "%s-%s.whl" % (stem, tags[0] if tags else "py3-none-any"))
    notes, written = [], []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for row in rows:
            full = os.path.normpath(os.path.join(site, row[0]))
            if skipped_in_wheel(row[0], full, info_dir):
                continue
            if not inside(full, prefix) or not os.path.isfile(full):
                notes.append("%s is listed in its RECORD but not installed" % row[0])
                continue
            arcname = wheel_arcname(full, site, prefix, stem, scripts)
            if arcname is None:
                continue
            with open(full, "rb") as handle:
                data = handle.read()
            if len(row) > 1 and row[1] and row[1] != record_hash(data):
                notes.append("%s changed since it was installed" % row[0])
            if arcname.startswith(stem + ".data/scripts/"):
                data = portable_script(data)
            st = os.stat(full)
            info = zipfile.ZipInfo(arcname, time.localtime(zip_mtime(st.st_mtime))[:6])
            info.external_attr = (st.st_mode & 0o777 | stat.S_IFREG) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            out.writestr(info, data)
            written.append("%s,%s,%d" % (arcname, record_hash(data), len(data)))
        record = "%s.dist-info/RECORD" % dist["entry"][:-len(".dist-info")]
        written.append("%s,," % record)
        out.writestr(zipfile.ZipInfo(record, time.localtime()[:6]), ("\n".join(written) + "\n").encode("utf-8"))
    return path, notes


def skipped_in_wheel(rel, full, info_dir):
    """Compiled files and what the installer wrote (INSTALLER, REQUESTED, RECORD, direct_url.json)
    do not go into a rebuilt wheel."""
    if rel.endswith((".pyc", ".pyo")) or "__pycache__" in rel.split("/"):
        return True
    return os.path.dirname(full) == info_dir and \
        os.path.basename(rel) in ("INSTALLER", "REQUESTED", "RECORD", "direct_url.json")


def wheel_arcname(full, site, prefix, stem, scripts):
    """Where an installed file goes in its rebuilt wheel (site-packages, NAME.data/scripts or data),
    or None for an entry point's script (the installer writes it again)."""
    if inside(full, site):
        return os.path.relpath(full, site).replace(os.sep, "/")
    in_prefix = os.path.relpath(full, prefix).replace(os.sep, "/")
    if in_prefix.startswith("bin/"):
        base = os.path.basename(full)
        return None if base in scripts else "%s.data/scripts/%s" % (stem, base)
    return "%s.data/data/%s" % (stem, in_prefix)


def portable_script(data):
    """A script's Python shebang as '#!python', which the installer rewrites for its own Python."""
    if not data.startswith(b"#!") or b"python" not in data.split(b"\n", 1)[0]:
        return data
    return b"#!python\n" + data.split(b"\n", 1)[1] if b"\n" in data else b"#!python\n"


def carry_wheels(writer, prefix, dists, progress_label="carrying what pip installed"):
    """Rebuild and add the wheel of every distribution pip installed; mark each dist with its
    wheel (bundle member) or why it is not carried. Returns the BinaryNeeds of the wheels."""
    import shutil
    import tempfile
    carry, left = carried_wheel_plan(dists)
    for dist, why in left:
        dist["not_carried"] = why
        say("warning: %s %s is not carried (%s)" % (dist["name"], dist["version"], why))
    binaries = []
    if not carry:
        return binaries
    progress = Progress("%s: %s" % (progress_label, plural(len(carry), "wheel")))
    scratch = tempfile.mkdtemp(prefix="pm-wheels-")
    try:
        for dist in carry:
            path, notes = rebuild_wheel(prefix, dist, scratch)
            for note in notes:
                say("note: %s %s: %s" % (dist["name"], dist["version"], note))
            arcname = "wheels/" + os.path.basename(path)
            writer.add_file(path, arcname, progress)
            dist["wheel"] = arcname
            binaries.append(BinaryNeeds("wheel", dist["name"], dist["version"]).add_zip(path))
            os.remove(path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    progress.done()
    return binaries


# -- What the binaries need ------------------------------------------------------
# The ELF reader (struct only, every read bounds-checked against the file, a bounded number of
# entries): the glibc and libstdc++ versions a binary needs (.gnu.version_r), the versions a library
# defines (.gnu.version_d) and the x86-64 ISA level of its GNU property note. pack records per package
# (and for the software tree and the carried wheels) the highest needs with the file that needs them;
# the target compares them with what it has before anything is written (pm's preflight).

ELF_MAX_SECTIONS = 32768  # more section headers than any library has: the file is not read
ELF_MAX_ENTRIES = 65536  # version entries (needed and defined) read at most per file
ELF_MAX_TABLE = 64 << 20  # a string table or version section larger than this is not read
SHT_NOTE, SHT_GNU_VERDEF, SHT_GNU_VERNEED = 7, 0x6ffffffd, 0x6ffffffe
GNU_PROPERTY_X86_ISA_1_NEEDED = 0xc0008002
EM_X86_64 = 62


class ElfBroken(Exception):
    """Raised inside the reader only: the file is read as 'not ELF'."""


def elf_read(handle, size):
    """What the ELF file open in handle (seek/read, size bytes) needs and defines: {'needs': {library:
    [version names]}, 'defines': [version names], 'isa': 0 or the x86-64 level 1-4, 'machine': e_machine};
    None when it is not ELF or cannot be read as ELF (nothing beyond size is read, and no exception)."""
    import struct
    try:
        return elf_parse(handle, size)
    except (ElfBroken, struct.error, IOError, OSError, ValueError, OverflowError, MemoryError):
        return None


class ElfReader(object):
    """One ELF file's bytes, every read bounds-checked against its size, every chain bounded."""

    def __init__(self, handle, size):
        self.handle, self.size = handle, size
        self.order, self.sections, self.strings, self.counted = "<", [], {}, 0

    def at(self, offset, length):
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ElfBroken()
        self.handle.seek(offset)
        data = self.handle.read(length)
        if len(data) != length:
            raise ElfBroken()
        return data

    def table(self, offset, length):
        """A version section's or string table's bytes, refused when larger than ELF_MAX_TABLE."""
        if length > ELF_MAX_TABLE:
            raise ElfBroken()
        return self.at(offset, length)

    def name_in(self, link, offset):
        """The NUL-ended string at offset of section link (a string table, read once)."""
        if link not in self.strings:
            if link >= len(self.sections):
                raise ElfBroken()
            self.strings[link] = self.table(self.sections[link][4], self.sections[link][5])
        data = self.strings[link]
        end = data.find(b"\0", offset)
        if offset >= len(data) or end < 0:
            raise ElfBroken()
        return data[offset:end].decode("ascii", "replace")

    def chain(self, data, first, number, fmt, next_field):
        """The entries of a vn_next/vna_next-style chain: at most number (or the bound), ending at 0."""
        import struct
        pos, length = first, struct.calcsize(fmt)
        for _ in range(number if number else ELF_MAX_ENTRIES):
            self.counted += 1
            if self.counted > ELF_MAX_ENTRIES or pos < 0 or pos + length > len(data):
                raise ElfBroken()
            entry = struct.unpack(self.order + fmt, data[pos:pos + length])
            yield pos, entry
            if not entry[next_field]:
                return
            pos += entry[next_field]

    def read_sections(self, wide, shoff, shentsize, shnum):
        """The section headers: (name, type, flags, addr, offset, size, link, info, addralign, entsize)."""
        import struct
        section_format = self.order + ("IIQQQQIIQQ" if wide else "IIIIIIIIII")
        entry_size = struct.calcsize(section_format)
        if shentsize < entry_size:
            raise ElfBroken()
        if shnum == 0:  # more sections than the header holds: section 0's size says how many
            shnum = struct.unpack(section_format, self.at(shoff, entry_size))[5]
        if shnum > ELF_MAX_SECTIONS:
            raise ElfBroken()
        table = self.at(shoff, shnum * shentsize)
        self.sections = [struct.unpack(section_format, table[i * shentsize:i * shentsize + entry_size])
                         for i in range(shnum)]

    def version_needs(self, offset, length, link, info, needs):
        """Add a SHT_GNU_VERNEED section's library → version names to needs."""
        data = self.table(offset, length)
        for pos, need in self.chain(data, 0, info, "HHIII", 4):  # vn_version, vn_cnt, vn_file, vn_aux, vn_next
            names = needs.setdefault(self.name_in(link, need[2]), [])
            if need[1]:
                for _, aux in self.chain(data, pos + need[3], need[1], "IHHII", 4):  # hash, flags, other, name, next
                    names.append(self.name_in(link, aux[3]))

    def version_defines(self, offset, length, link, info, defines):
        """Add a SHT_GNU_VERDEF section's version names to defines."""
        data = self.table(offset, length)
        for pos, define in self.chain(data, 0, info, "HHHHIII", 6):  # version, flags, ndx, cnt, hash, aux, next
            if define[3]:
                for _, aux in self.chain(data, pos + define[5], 1, "II", 1):  # the first verdaux names it
                    defines.append(self.name_in(link, aux[0]))


def elf_parse(handle, size):
    import struct
    if size < 64:
        return None
    elf = ElfReader(handle, size)
    ident = bytearray(elf.at(0, 16))
    if bytes(ident[:4]) != b"\x7fELF" or ident[4] not in (1, 2) or ident[5] not in (1, 2):
        return None
    wide = ident[4] == 2
    elf.order = "<" if ident[5] == 1 else ">"
    header = struct.unpack(elf.order + ("HHIQQQIHHHHHH" if wide else "HHIIIIIHHHHHH"), elf.at(16, 48 if wide else 36))
    machine, shoff, shentsize, shnum = header[1], header[5], header[10], header[11]
    needs, defines, isa = {}, [], 0
    if shoff:
        elf.read_sections(wide, shoff, shentsize, shnum)
    for _, kind, _, _, offset, length, link, info, align, _ in elf.sections:
        if kind == SHT_GNU_VERNEED:
            elf.version_needs(offset, length, link, info, needs)
        elif kind == SHT_GNU_VERDEF:
            elf.version_defines(offset, length, link, info, defines)
        elif kind == SHT_NOTE and machine == EM_X86_64 and 0 < length <= 1 << 16:
            isa = max(isa, note_isa_level(elf.at(offset, length), elf.order, 8 if align == 8 else 4, wide))
    return {"needs": needs, "defines": defines, "isa": isa, "machine": machine}


def note_isa_level(data, order, align, wide):
    """The x86-64 ISA level (1 baseline .. 4 for v4) a GNU property note says is needed, else 0."""
    import struct
    pos, level = 0, 0
    for _ in range(256):
        if pos + 12 > len(data):
            break
        namesz, descsz, kind = struct.unpack(order + "III", data[pos:pos + 12])
        name_end = pos + 12 + namesz
        desc = name_end + (-name_end % align)  # padded to the note's alignment from the section's start
        end = desc + descsz
        if end > len(data):
            break
        if kind == 5 and data[pos + 12:name_end] == b"GNU\0":  # NT_GNU_PROPERTY_TYPE_0
            prop = desc
            for _ in range(256):
                if prop + 8 > end:
                    break
                pr_type, pr_size = struct.unpack(order + "II", data[prop:prop + 8])
                if pr_type == GNU_PROPERTY_X86_ISA_1_NEEDED and pr_size >= 4 and prop + 12 <= end:
                    bits = struct.unpack(order + "I", data[prop + 8:prop + 12])[0] & 0xf
                    level = max([level] + [n + 1 for n in range(4) if bits >> n & 1])
                prop += 8 + pr_size + (-pr_size % (8 if wide else 4))
        pos = end + (-end % align)
    return level


ELF_MAX_READ = 1 << 30  # a member of a zip or tar is read into memory to be parsed up to this size



def highest_version(names, prefix):
    """The highest PREFIX_x.y[.z] among version names ('2.34' for GLIBC), else None."""
    best = None
    for name in names:
        rest = name[len(prefix) + 1:] if name.startswith(prefix + "_") else ""
        if re.match(r"^[0-9]{1,6}(\.[0-9]{1,6}){0,3}$", rest) and (best is None or version_numbers(rest) > version_numbers(best)):
            best = rest
    return best


def elf_file(path):
    """elf_read of a file on disk (None for links, other kinds and what is not ELF)."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        with open(path, "rb") as handle:
            return elf_read(handle, os.fstat(handle.fileno()).st_size)
    except (IOError, OSError):
        return None


def elf_stream(stream, size):
    """elf_read of a stream that cannot seek (a zip or tar member): the first bytes say whether it is
    ELF; only then is it read, up to ELF_MAX_READ."""
    import io
    head = stream.read(4)
    if head != b"\x7fELF" or size > ELF_MAX_READ:
        return None
    data = head + stream.read(size - 4)
    return elf_read(io.BytesIO(data), len(data))


class BinaryNeeds(object):
    """What the ELF files of one package (or the software, or a wheel) need at most, each need with the
    file that needs it: the manifest's 'binaries' rows."""

    def __init__(self, kind, name, version=""):
        self.kind, self.name, self.version = kind, name, version
        self.files = 0
        self.needs = {}  # 'glibc', 'glibcxx', 'isa' -> (value, file)
        self.glibcxx_defined = None  # the highest GLIBCXX version a libstdc++ among the files defines

    def add(self, rel, found):
        if not found:
            return
        self.files += 1
        names = [n for names in found["needs"].values() for n in names]
        for key, prefix in (("glibc", "GLIBC"), ("glibcxx", "GLIBCXX")):
            version = highest_version(names, prefix)
            if version and (key not in self.needs or version_numbers(version) > version_numbers(self.needs[key][0])):
                self.needs[key] = (version, rel)
        if found["isa"] > 1 and found["isa"] > self.needs.get("isa", (1, ""))[0]:
            self.needs["isa"] = (found["isa"], rel)
        defined = highest_version(found["defines"], "GLIBCXX")
        if defined and (not self.glibcxx_defined or version_numbers(defined) > version_numbers(self.glibcxx_defined)):
            self.glibcxx_defined = defined

    def add_folder(self, folder, members=None):
        for rel, path in members if members is not None else folder_files(folder):
            self.add(rel, elf_file(path))
        return self

    def add_zip(self, path):
        import zipfile
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist()[:1 << 20]:
                if info.file_size >= 64 and stat.S_IFMT(info.external_attr >> 16) in (0, stat.S_IFREG):
                    with archive.open(info) as stream:
                        self.add(info.filename, elf_stream(stream, info.file_size))
        return self

    def to_json(self):
        row = {"kind": self.kind, "name": self.name, "version": self.version, "elf_files": self.files}
        for key, (value, rel) in self.needs.items():
            row[key], row[key + "_file"] = value, rel
        if self.glibcxx_defined:
            row["glibcxx_defined"] = self.glibcxx_defined
        return row


def folder_files(folder, patterns=()):
    """(rel, path) of the regular files under folder (links are not followed)."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not excluded(d, patterns)]
        for name in files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder).replace(os.sep, "/")
            if not excluded(rel, patterns):
                yield rel, path


# -- Sending --------------------------------------------------------------


def server_connection(server, timeout):
    """(connection, parts of the URL, http client module) for a pm server's address."""
    if PY2:
        import httplib as http_client
        from urlparse import urlsplit
    else:
        import http.client as http_client
        from urllib.parse import urlsplit
    parts = urlsplit(server if "://" in server else "http://" + server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PmError("bad server address '%s'" % server, "use --server http://HOST:PORT")
    connection_class = http_client.HTTPSConnection if parts.scheme == "https" else http_client.HTTPConnection
    connection = connection_class(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                                  timeout=timeout)
    return connection, parts, http_client


def server_unreachable(server, reason):
    return PmError("no pm server answers at %s (%s)" % (server, reason),
                   "start it with 'python3 pm.pyz serve start' on the target, or save the bundle with -o "
                   "and carry it")


def token_refused(server, token):
    if not token:
        return PmError("the server at %s needs a token" % server,
                       "pass --token with the token 'serve start' printed on the target (or set PM_TOKEN)")
    return PmError("the server at %s refuses the token" % server,
                   "copy the token 'serve start' printed on the target into --token (or PM_TOKEN)")


def check_server(server, token):
    """Before anything is packed or sent: does a pm server answer at server, and take the token?
    One GET /bundles, which every pm server answers with its listing to whoever holds the token."""
    connection, parts, http_client = server_connection(server, 30)
    try:
        connection.putrequest("GET", parts.path.rstrip("/") + "/bundles")
        if token:
            connection.putheader("Authorization", "Bearer " + token)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read(1 << 20).decode("utf-8", "replace")
    except (IOError, OSError, http_client.HTTPException) as exc:
        raise server_unreachable(server, getattr(exc, "strerror", None) or exc)
    finally:
        connection.close()
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise server_unreachable(server, "what answers there is not a pm server: HTTP %d" % response.status)
    if response.status == 401:
        raise token_refused(server, token)
    if response.status != 200:
        raise PmError("the server at %s refuses to take bundles: %s" % (server, answer.get("error", response.reason)),
                      "fix what it names on the target, or save the bundle with -o and carry it")


def send_bundle(path, server, name, token):
    """PUT the bundle to the server, streamed in chunks, with its sha256 in a header."""
    connection, parts, http_client = server_connection(server, 120)
    digest, size = file_digest(path)
    url = parts.path.rstrip("/") + "/bundles/" + name
    progress = Progress("sending to " + parts.netloc, size)
    try:
        connection.putrequest("PUT", url)
        connection.putheader("Content-Type", "application/zip")
        connection.putheader("Content-Length", str(size))
        connection.putheader("X-Content-SHA256", digest)
        if token:
            connection.putheader("Authorization", "Bearer " + token)
        connection.endheaders()
        with open(path, "rb") as handle:
            while True:
                block = handle.read(CHUNK)
                if not block:
                    break
                connection.send(block)
                progress.add(len(block))
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace")
    except (IOError, OSError, http_client.HTTPException) as exc:
        raise PmError("cannot send the bundle to %s: %s" % (server, exc),
                      "check that 'pm.pyz serve' runs there, or save with -o and carry the file")
    finally:
        progress.clear()
        connection.close()
    if response.status == 401:
        raise token_refused(server, token)
    if response.status >= 300:
        try:
            reason = json.loads(body).get("error", body)
        except ValueError:
            reason = body.strip() or response.reason
        raise PmError("the server refused the bundle (%d): %s" % (response.status, reason),
                      "fix what it names, or save with -o and carry the file")
    say("sent %s (%.1f MiB) to %s" % (name, size / 1048576.0, server))


# -- Command line ---------------------------------------------------------


def build_parser():
    parser = argparse.ArgumentParser(
        prog="pm.pyz pack",
        description="Capture the conda environment that runs a piece of software and the software's "
                    "directory into one bundle file, then save it or send it to 'pm.pyz serve'.",
        epilog="examples:\n  python pm.pyz pack -d ~/src/mysim -e mysim-env -o mysim.zip\n"
               "  python pm.pyz pack -n mysim -d . --server http://target:9001 --yes",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--name", help="software name (default: the directory's name)")
    parser.add_argument("-d", "--dir", help="the software directory to pack")
    parser.add_argument("-e", "--env", help="the environment: a conda-style prefix (conda, mamba, micromamba, pixi), "
                                             "a virtual environment (venv, virtualenv, uv), or a name conda or "
                                             "micromamba knows (default: the active one)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("-o", "--output", metavar="FILE", help="save the bundle to FILE, to carry by hand")
    target.add_argument("-z", "--zip", action="store_true",
                        help="save the bundle as NAME.zip here (the original tool's flag)")
    target.add_argument("--server", metavar="URL", help="send the bundle to a pm server, e.g. http://host:9001")
    parser.add_argument("--token", help="the server's access token (or set PM_TOKEN)")
    parser.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                        help="leave out files or folders matching PATTERN (repeatable; "
                             "__pycache__ and *.pyc are always left out)")
    parser.add_argument("--with-packages", action="store_true",
                        help="carry every package in the bundle (unpacked from conda's caches, else its archive), "
                             "so that a target with no network, or no conda, creates the environment from it")
    parser.add_argument("--allow-missing", action="store_true",
                        help="with --with-packages: carry what can be found, and record the rest as missing")
    parser.add_argument("--as-tar-bz2", action="store_true",
                        help="with --with-packages: carry .conda packages as .tar.bz2 rebuilt from conda's extracted "
                             "copies (for a target conda older than 4.7)")
    parser.add_argument("--level", type=int, choices=range(1, 10), default=PACK_LEVEL, metavar="1-9",
                        help="with --with-packages: how hard to deflate the packages carried unpacked (default %d: "
                             "fast; 9: smallest, for a slow link; Python 2.7 and 3.6 always use 6)" % PACK_LEVEL)
    parser.add_argument("--dry-run", action="store_true",
                        help="say what kind of environment would leave and how it is read (with --with-packages: "
                             "what would be carried and the total size); write nothing")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="leave out folders that cannot be read, with a note (default: stop)")
    parser.add_argument("-y", "--yes", action="store_true",
                        help="never ask: take defaults, fail naming the flag when there is none")
    parser.add_argument("-q", "--quiet", action="store_true", help="say only warnings and errors on stderr")
    parser.add_argument("-v", "--verbose", action="store_true", help="show a traceback on an unexpected error")
    parser.add_argument("--version", action="version", version="pm probe " + PROBE_VERSION)
    return parser


def check_output_path(path):
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise PmError("output %s is a directory" % path, "give a file name with -o, e.g. -o %s/bundle.zip" % path)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise PmError("cannot write the output file %s (folder missing or read-only)" % path,
                      "choose a writable place with -o")


def resolve_answers(args):
    """Fill in name, directory and destination, asking where allowed, in platform-migrator 1.1.0's
    order (so answers piped for it work): the name, the directory, then whether to save the zip."""
    name = args.name
    if not name and not args.yes and not args.dir:  # with -d the name is the folder's, as --help says
        name = ask("Software name", None, "-n NAME", False)
    software_dir = args.dir or ask("Software directory", None, "-d DIR", args.yes)
    software_dir = os.path.abspath(os.path.expanduser(software_dir))
    if not os.path.isdir(software_dir):
        raise PmError("software directory %s does not exist" % software_dir, "pass an existing folder with -d")
    if not os.access(software_dir, os.R_OK | os.X_OK):
        raise PmError("software directory %s is not readable" % software_dir, "fix its permissions")
    name = check_name(name or os.path.basename(software_dir))
    output = args.output or (name + ".zip" if args.zip else None)
    server = args.server or (SERVER_URL if not output else None)
    beside = os.path.join(os.path.dirname(software_dir), name + ".zip")  # where the original saved it
    if not output and not args.server and not (args.name and args.dir and not server):
        keep = ask("Save the zip file for emailing later? (y/n)", "n" if server else "y", "-o FILE", args.yes)
        if keep.strip().lower().startswith("y"):
            output, server = beside, None
        elif not server:
            raise PmError("there is no server to send the bundle to", "answer y to save it, or pass --server URL")
    if not server and not output:  # -n and -d given: saved without asking, as the original did
        output = beside
    if output == beside:
        say("saving the bundle beside the software directory (-o FILE saves it elsewhere)")
    if output:
        check_output_path(output)
    if server:
        check_server_url(server)
    return name, software_dir, output, server


def check_server_url(url):
    """A server address pm can send to, checked before anything is zipped."""
    try:
        from urllib.parse import urlsplit
    except ImportError:
        from urlparse import urlsplit
    try:
        parts = urlsplit(url)
        parts.port  # a port that is not a number raises here
        problem = None if parts.scheme in ("http", "https") and parts.hostname else \
            "not an http:// or https:// URL with a host"
    except ValueError as exc:
        problem = "not a URL (%s)" % exc
    if problem:
        raise PmError("the server address %r is %s" % (url, problem), "pass e.g. --server http://target:9001")
    return url


def pack(args):
    import shutil
    import tempfile
    if not args.with_packages and (args.allow_missing or args.as_tar_bz2 or args.level != PACK_LEVEL):
        raise PmError("--allow-missing, --as-tar-bz2 and --level go with --with-packages", "add --with-packages")
    conda = find_conda(required=False)  # none: pack reads the environment itself
    name, software_dir, output, server = resolve_answers(args)
    token = args.token or os.environ.get("PM_TOKEN") or SERVER_TOKEN
    if server and not args.dry_run:
        check_server(server, token)  # before anything is packed
    conda_info = run_conda_json(conda, ["info", "--json"]) if conda else {}
    prefix = find_env(conda, conda_info, args.env, software_dir, args.yes)
    say("packing %s from %s with the environment %s" % (name, software_dir, prefix))
    if is_venv(prefix):
        captured = gather_venv(prefix, software_dir)
    elif conda:
        captured = gather_environment(conda, conda_info, prefix, software_dir)
    else:
        captured = gather_without_conda(prefix, software_dir)
    patterns = DEFAULT_EXCLUDES + list(args.exclude)
    plan = None
    if args.dry_run:
        line = printable(environment_line(prefix, captured["kind"]))
        print(line.encode("utf-8", "replace") if PY2 else line)
    if args.with_packages:
        plan = plan_packages(captured["records"], captured["info"].get("pkgs_dirs") or [], args.as_tar_bz2)
        if args.dry_run:
            print_package_plan(plan, captured["dists"])
            return 0
        check_package_plan(plan, args.allow_missing)
    elif args.dry_run:
        print("%d packages, %d Python distributions; nothing written (--dry-run)"
              % (len(captured["records"]), len(captured["dists"])))
        return 0
    if output:
        write_bundle(output, name, software_dir, captured, patterns, args.skip_unreadable, plan, args.level)
        say("saved %s" % output)
        print(os.path.abspath(output))
    if server:  # never with an output (resolve_answers): the bundle goes through a temp folder
        path = os.path.join(tempfile.mkdtemp(prefix="pm-pack-"), name + ".bundle.zip")
        try:
            write_bundle(path, name, software_dir, captured, patterns, args.skip_unreadable, plan, args.level)
            send_bundle(path, server, name, token)
        except PmError:
            if os.path.exists(path):  # the one thing pack leaves, and it says where
                say("the bundle is kept at %s: send it again with 'python3 pm.pyz send %s --server %s', "
                    "or carry it" % (path, path, server))
            else:
                shutil.rmtree(os.path.dirname(path), ignore_errors=True)
            raise
        except BaseException:  # Ctrl-C: a bundle nobody asked to keep goes
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
            raise
        os.remove(path)
        os.rmdir(os.path.dirname(path))
        print("%s/bundles/%s" % (server.rstrip("/"), name))
    return 0


def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    QUIET[0] = args.quiet
    try:
        return pack(args)
    except PmError as exc:
        say(exc.line())
        return exc.code
    except KeyboardInterrupt:
        say("pm: interrupted")
        return 130
    except Exception as exc:  # one line, never a traceback, unless -v
        if args.verbose:
            raise
        say("pm: error: unexpected %s: %s %s run again with -v for the traceback, and report it"
            % (type(exc).__name__, exc, DASH))
        return 3


if __name__ == "__main__":
    sys.exit(main())
'''.lstrip("\n")


# == Helpers ==================================================================
# Small pieces every section uses: pm's version, atomic writes, JSON files.

VERSION = "1.0.0"
STILL_RUNNING_SECONDS = 30  # how often a long command (conda create, an install) says it is alive


def zip_damage():
    """What reading a damaged zip member raises: a bad header or CRC, a cut file, a corrupt deflate stream."""
    import zipfile
    import zlib
    return zipfile.BadZipFile, EOFError, zlib.error


ZIP_UNREAD_FLAGS = 0x61  # encrypted, compressed patched data, strong encryption: zipfile raises on opening them


def check_zip_readable(infos, where):
    """Every entry stored or deflated and not encrypted, as pm writes them (zipfile raises RuntimeError or
    NotImplementedError, not zip_damage(), on opening any other); where names the zip."""
    import zipfile
    for info in infos:
        if info.flag_bits & ZIP_UNREAD_FLAGS or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise PmError("%s in %s is encrypted or compressed in a way pm does not read" % (info.filename[:200], where),
                          FIX_BAD_BUNDLE)


def read_ini(parser, path):
    """path into parser (a configparser's), one line naming the file when it is not INI or not UTF-8."""
    import configparser
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle, source=path)
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise PmError("cannot read %s: %s" % (path, str(exc).splitlines()[0]), "fix the INI syntax")


def write_atomic(path, data, mode=0o600):
    """Write bytes or text to a temp file beside path, then rename it into place."""
    import tempfile
    if isinstance(data, str):
        data = data.encode("utf-8")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=".pm-", suffix=".part", dir=folder)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            os.fchmod(out.fileno(), mode)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
        fsync_folder(folder)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise
    return path


def fsync_folder(folder):
    """Make a rename in folder last through a power cut."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def append_private(path, binary=False):
    """A file opened for appending, created owner-only (0600) whatever the umask: logs of the store."""
    handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(handle, "ab") if binary else os.fdopen(handle, "a", encoding="utf-8")


def take_lock(path, exclusive=True, wait=True, what=None, mode=0o600):
    """The one way pm takes a lock: an open handle on path (a folder, or a lock file made with mode if it
    is missing, never through a link) holding a flock, exclusive or shared. Taken at once when free;
    else pm waits (saying what the other pm is busy with, when what is given), or with wait=False
    returns None. The lock goes when the handle is closed or the process ends, even by kill -9."""
    import fcntl
    if os.path.isdir(path):
        handle = os.open(path, os.O_RDONLY)
    else:
        handle = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), mode)
    kind = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        fcntl.flock(handle, kind | fcntl.LOCK_NB)
    except OSError:
        if not wait:
            os.close(handle)
            return None
        if what:
            say("waiting for another pm that is busy with %s ..." % what)
        fcntl.flock(handle, kind)
    return handle


class FolderLock(object):
    """An exclusive lock on a folder of the store, or a lock file pm owns there (made owner-only), for
    what two pm processes must not do at once (a software's remembered choices, an install into
    output_dir), as a with block; waits, and says so."""

    def __init__(self, folder, what):
        self.folder, self.what, self.handle = folder, what, None

    def __enter__(self):
        self.handle = take_lock(self.folder, what=self.what)
        return self

    def __exit__(self, *exc):
        os.close(self.handle)


def locked_elsewhere(path, exclusive):
    """True when another process holds a lock on path that keeps this one from taking it (exclusive:
    any lock at all; else an exclusive one); False when path is not there."""
    import fcntl
    try:
        handle = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(handle, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(handle)


def write_json(path, data, mode=0o600):
    return write_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n", mode)


def read_json(path):
    with open(path, "rb") as handle:
        return json.loads(handle.read().decode("utf-8"))


def remove_quietly(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def process_start_time(pid):
    """When a process started (clock ticks since boot, from /proc), or None where /proc cannot say."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


UMASK = []  # the process umask, read once: setting it to 0 and back races with the threads that create files


def current_umask():
    """The process umask, read once (main() asks before any thread starts): from /proc/self/status,
    which changes nothing, else by setting it and back that one time."""
    if not UMASK:
        try:
            with open("/proc/self/status") as status:
                found = [int(line.split()[1], 8) for line in status if line.startswith("Umask:")]
        except (OSError, ValueError, IndexError):
            found = []
        if not found:
            found = [os.umask(0o077)]
            os.umask(found[0])
        UMASK[:] = found[:1]
    return UMASK[0]


def shutil_remove(path):
    import shutil
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


# -- The probe, as pm loads it --------------------------------------------------


def load_probe():
    """The probe as a new module, compiled from PROBE_SOURCE (the one source of truth)."""
    module = types.ModuleType("pm_probe")
    module.__file__ = "<pm_probe>"
    exec(compile(PROBE_SOURCE, "pm_probe.py", "exec"), module.__dict__)
    return module


# What pm and the probe share lives in the probe, once: pm.pyz's __main__ loads pm_probe first;
# from the source tree it is compiled here.
PROBE = sys.modules.get("pm_probe") or load_probe()
PmError, say, check_name = PROBE.PmError, PROBE.say, PROBE.check_name
NAME_PATTERN, CHUNK, BUNDLE_FORMAT, DASH = PROBE.NAME_PATTERN, PROBE.CHUNK, PROBE.BUNDLE_FORMAT, PROBE.DASH
spec_name, copy_hashing, utc_time, printable = PROBE.spec_name, PROBE.copy_hashing, PROBE.utc_time, PROBE.printable
yaml_scalar = PROBE.yaml_scalar  # the one writer of an environment file's scalars (pack's env.yml, migrate's)
plural, human_size = PROBE.plural, PROBE.human_size

# The fix a refusal names, in the same words wherever the same thing went wrong.
FIX_BAD_BUNDLE = "do not use this bundle; pack the software again"  # broken, incomplete, or unsafe to unpack
FIX_NOT_A_BUNDLE = "pass the path of a bundle written by 'pm.pyz pack'"  # no such file, or no bundle at all
FIX_UNSAFE = "do not use this bundle: it reaches outside where it unpacks"  # a link or path out, an overwrite
FIX_DAMAGED = "send or copy the bundle again"  # a member's bytes changed on the way (its sha256)
FIX_ENV_FILE = "use an environment file written by 'conda env export'"


def probe_script(server_url, token=""):
    """The probe with a server address (and token) filled in, for GET /migrate."""
    text = PROBE_SOURCE.replace('SERVER_URL = ""', "SERVER_URL = %r" % server_url, 1)
    return text.replace('SERVER_TOKEN = ""', "SERVER_TOKEN = %r" % token, 1)


# == Containment ==============================================================
# Every file a bundle makes pm write goes through Contained: inside one folder, no link followed out,
# within the caps. The name patterns every field of a bundle is checked against live here too.


MAX_UNPACK_RATIO = 100  # a bundle may unpack to at most this many times its size (--max-ratio) ...


UNPACKED_FLOOR = 64 << 20  # ... once it unpacks to more than this
CONTROL_OR_NEWLINE = r"[\x00-\x1f\x7f]"


def path_problem(path, folder_entry=False):
    """Why path is not a plain relative path, the one rule for every name a bundle gives pm to write
    or read under a folder (None when it is): '/'-separated names, none empty, '.' or '..', no NUL
    or backslash, not absolute, no drive letter, each name at most 255 bytes and the whole at most
    4000 characters. folder_entry: a zip's entry for a folder, which ends in '/'."""
    if not isinstance(path, str) or not path:
        return "an empty path"
    parts = (path[:-1] if folder_entry and path.endswith("/") else path).split("/")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        return "an absolute path"
    if "\0" in path or "\\" in path:
        return "a NUL or a backslash"
    if any(p in ("", ".", "..") for p in parts):
        return "an empty, '.' or '..' part"
    if len(path) > 4000 or any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts):
        return "a name longer than a file system takes"
    return None


def is_plain_path(path):
    return path_problem(path) is None


def is_one_path_component(name):
    return is_plain_path(name) and "/" not in name


def is_plain_line_path(path):
    """A plain path that also goes into a line of a file (a .pth line, a listed folder): no control
    character or newline."""
    return is_plain_path(path) and not re.search(CONTROL_OR_NEWLINE, path)


def safe_member_path(name):
    """A zip entry name that lands inside the folder it is extracted to (path_problem), else refused."""
    problem = path_problem(name, folder_entry=True)
    if problem:
        raise PmError("unsafe path %r in the bundle (%s)" % (name[:200] if isinstance(name, str) else name, problem),
                      FIX_BAD_BUNDLE)
    return name


def lies_inside(path, folder, itself=True):
    """path, its links resolved, is inside folder (folder's own links resolved too), or folder itself
    when itself."""
    real, real_folder = os.path.realpath(path), os.path.realpath(folder)
    return itself and real == real_folder or real.startswith(real_folder.rstrip(os.sep) + os.sep)


class Contained(object):
    """The one containment writer: members of something pm did not make (a carried package, a wheel,
    the software tree) written under root. Every name is plain parts (no absolute name, '..', '.' or
    empty part, no NUL); folders are made one at a time and never reached through a link that leads
    out of root; files are created O_EXCL|O_NOFOLLOW and streamed in CHUNKs; links are checked after
    the fact against the real tree; modes follow the umask, never setuid/setgid; bytes and files are
    capped. Thread-safe: archives are linked by several workers at once."""

    def __init__(self, root, max_bytes=None, max_files=None):
        import threading
        self.root, self.real_root = root, os.path.realpath(root)
        self.max_bytes, self.max_files = max_bytes, max_files
        self.bytes = self.files = 0
        self.umask = current_umask()
        self.lock = threading.Lock()
        self.failed = False  # set when one worker fails: the others stop at their next member
        self.known = set()  # folders (tuples of parts) made or checked: a folder is never replaced by a link

    @classmethod
    def for_carried(cls, root, carried_bytes, max_ratio=None):
        """A writer for what carried_bytes of packages unpack to: at most max_ratio (default
        MAX_UNPACK_RATIO; 0: no limit) times as many bytes, and a number of files for that size."""
        ratio = MAX_UNPACK_RATIO if max_ratio is None else max_ratio
        if not ratio:
            return cls(root)
        return cls(root, max(ratio * carried_bytes, UNPACKED_FLOOR), max(10000, carried_bytes // 16))

    def parts(self, rel, where):
        problem = path_problem(rel)
        if problem:
            raise PmError("unsafe path %r in %s (%s)" % (rel[:200], where, problem), FIX_BAD_BUNDLE)
        return rel.split("/")

    def is_inside(self, path):
        return lies_inside(path, self.real_root)

    def folder(self, parts, where):
        """root/parts..., made one folder at a time; a link on the way must stay inside root."""
        if tuple(parts) in self.known:
            return os.path.join(self.root, *parts)
        folder, real = self.root, True  # real: no link on the way so far (only such folders are remembered)
        for depth, part in enumerate(parts):
            folder = os.path.join(folder, part)
            if real and tuple(parts[:depth + 1]) in self.known:
                continue
            try:
                st = os.lstat(folder)
            except FileNotFoundError:
                try:
                    os.mkdir(folder, 0o777 & ~self.umask)
                except FileExistsError:
                    pass  # another worker made it
                st = os.lstat(folder)
            if stat.S_ISLNK(st.st_mode):
                real = False
                if not self.is_inside(folder) or not os.path.isdir(folder):
                    raise PmError("%s goes through the link %s, which leads out of %s" % (
                        where, os.path.relpath(folder, self.root), self.root), FIX_UNSAFE)
            elif not stat.S_ISDIR(st.st_mode):
                raise PmError("%s needs %s to be a folder, and it is a file" % (
                    where, os.path.relpath(folder, self.root)), FIX_UNSAFE)
            elif real:
                self.known.add(tuple(parts[:depth + 1]))
        return folder

    def count(self, size=0, files=0, where=""):
        if self.failed:
            raise PmError("stopped: another package failed", "read the error above")
        with self.lock:
            self.bytes += size
            self.files += files
            if self.max_bytes is not None and self.bytes > self.max_bytes:
                raise PmError("%s unpacks to more than %d MiB, over %d times what was carried (a bomb, or --max-ratio "
                              "too low)" % (where, self.max_bytes >> 20, MAX_UNPACK_RATIO),
                              "do not use this bundle, or pass --max-ratio 0 if you trust it")
            if self.max_files is not None and self.files > self.max_files:
                raise PmError("%s holds more than %d files for its size (a bomb)" % (where, self.max_files),
                              FIX_BAD_BUNDLE)

    def create(self, rel, where, make):
        """(path, make(path)) for rel: its folder made safely, then make creates it exclusively (O_EXCL,
        a link); when something is there already (not a folder), it goes and make runs again."""
        parts = self.parts(rel, where)
        dest = os.path.join(self.folder(parts[:-1], where), parts[-1])
        self.count(files=1, where=where)
        try:
            return dest, make(dest)
        except FileExistsError:
            pass
        if stat.S_ISDIR(os.lstat(dest).st_mode):
            raise PmError("%s would replace the folder %s" % (where, rel), FIX_UNSAFE)
        os.remove(dest)  # a later package's file wins, as with conda's clobbering
        return dest, make(dest)

    def write(self, rel, source, mode=0o644, mtime=None, where="", transform=None):
        """Stream source (a file object) into root/rel; transform (feed(block, final) -> bytes) may
        rewrite it on the way. Returns the bytes written. The kernel applies the umask to the mode."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        dest, handle = self.create(rel, where, lambda path: os.open(path, flags, mode & 0o777 or 0o644))
        written = 0
        with os.fdopen(handle, "wb") as out:
            while True:
                block = source.read(CHUNK)
                data = transform.feed(block, not block) if transform else block
                if data:
                    self.count(len(data), where=where)
                    out.write(data)
                    written += len(data)
                if not block:
                    break
            if mtime is not None:
                out.flush()
                os.utime(out.fileno(), (mtime, mtime))
        return written

    def check_links(self, root, rels):
        """After the fact: every link among rels still resolves inside root (links made later can move
        where an earlier one leads)."""
        for rel in rels:
            path = os.path.join(root, *rel.split("/"))
            if os.path.islink(path) and not self.is_inside(path):
                raise PmError("the link %s leads out of %s once every package is linked" % (rel, root),
                              FIX_UNSAFE)

    def symlink(self, rel, link, where):
        """root/rel -> link, which must resolve inside root (through the links made before it)."""
        if os.path.isabs(link) or "\0" in link or not link:
            raise PmError("the link %s of %s leads outside (%s)" % (rel, where, link), FIX_UNSAFE)
        dest = self.create(rel, where, lambda path: os.symlink(link, path))[0]
        if not self.is_inside(dest):
            os.remove(dest)
            raise PmError("the link %s of %s leads outside (%s)" % (rel, where, link), FIX_UNSAFE)


def shebang(python, args=""):
    """A script's first line(s) for python: '#!PYTHON ARGS', or where a kernel cannot run that (a blank
    in the path, a line over 127 bytes) /bin/sh starting python on the script, as pip writes them
    (Python reads the second line as a string)."""
    line = "#!%s%s" % (python, args)
    if not re.search(r"\s", python) and len(line.encode("utf-8", "surrogateescape")) <= 127:
        return line + "\n"
    return "#!/bin/sh\n'''exec' %s%s \"$0\" \"$@\"\n' '''\n" % (shlex.quote(python), args)


def write_entry_point(writer, command, target, where):
    """bin/COMMAND running module:function with the prefix's python, through writer (the prefix's
    Contained); names checked first."""
    import io
    command, target = command.strip(), target.strip()
    if not re.match(SCRIPT_NAME, command) or not re.match(ENTRY_TARGET, target):
        raise PmError("the entry point %r = %r of %s is not NAME = module:function" % (command[:80], target[:80], where),
                      FIX_BAD_BUNDLE)
    module, function = target.split(":")
    script = shebang(os.path.join(writer.root, "bin", "python")) + (
        "# -*- coding: utf-8 -*-\nimport re\nimport sys\n\nfrom %s import %s\n\n"
        "if __name__ == '__main__':\n    sys.argv[0] = re.sub(r'(-script\\.pyw?|\\.exe)?$', '', sys.argv[0])\n"
        "    sys.exit(%s())\n" % (module, function.split(".")[0], function))
    writer.write("bin/" + command, io.BytesIO(script.encode("utf-8")), 0o755, None, where)
    return "bin/" + command


SCRIPT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}\Z"


ENTRY_TARGET = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*\Z"


PACKAGE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}\Z"


PACKAGE_VERSION = r"^[A-Za-z0-9][A-Za-z0-9.+!_-]{0,99}\Z"


# NAME-VERSION(-BUILD)?-PYTHON-ABI-PLATFORM.whl (PEP 427), one plain file name under wheels/
WHEEL_FN = r"^[A-Za-z0-9][A-Za-z0-9_.]{0,199}-[A-Za-z0-9_.!+]{1,100}(-[0-9][A-Za-z0-9_.]{0,50})?" \
           r"(-[A-Za-z0-9_.]{1,200}){3}\.whl\Z"


SITE_REL = r"^lib/python[0-9]{1,2}\.[0-9]{1,3}/site-packages\Z"  # as the probe's site_packages finds it


CONDA_SUBDIR = r"^([a-z0-9]+-[a-z0-9_]+|noarch)\Z"  # linux-64, osx-arm64, noarch, ...: a channel's folders


# == Carried packages =========================================================
# The forms a conda package travels in (FORMS: a suffix, the repodata key that lists it, the reader of
# its members), read with the standard library, and the carried channel's index, checked.


OLD_PLACEHOLDER = "/opt/anaconda1anaconda2anaconda3"  # packages without info/paths.json


class PrefixReplacer(object):
    """conda's prefix replacement, streamed in bounded blocks: text replaces every occurrence; binary
    rewrites each NUL-ended string holding the placeholder and pads it with NULs to its old length."""

    MAX_STRING = 1 << 20  # a binary placeholder string longer than this is no path

    def __init__(self, placeholder, prefix, mode, where):
        self.old, self.new = placeholder.encode("utf-8"), prefix.encode("utf-8")
        self.binary, self.where = mode == "binary", where
        if len(self.old) < 8:
            raise PmError("%s names the prefix placeholder %r, too short to be a build prefix" % (where, placeholder),
                          FIX_BAD_BUNDLE)
        if self.binary and len(self.new) > len(self.old):
            raise PmError("the prefix %s (%d characters) is longer than the %d-character placeholder compiled into %s"
                          % (prefix, len(self.new), len(self.old), where), "choose a shorter --prefix")
        self.pending = b""

    def feed(self, block, final):
        data, out, pos = self.pending + block, [], 0
        while True:
            found = data.find(self.old, pos)
            if found < 0 or (not final and found > len(data) - len(self.old)):
                break
            if not self.binary:
                out += [data[pos:found], self.new]
                pos = found + len(self.old)
                continue
            end = data.find(b"\0", found + len(self.old))
            if end < 0 and final:
                break
            if end < 0:
                if len(data) - found > self.MAX_STRING:
                    raise PmError("%s holds a placeholder string over 1 MiB long" % self.where, FIX_BAD_BUNDLE)
                out.append(data[pos:found])
                self.pending = data[found:]
                return b"".join(out)
            out += [data[pos:found], self.new, data[found + len(self.old):end],
                    b"\0" * (len(self.old) - len(self.new) + 1)]
            pos = end + 1
        keep = len(data) if final else max(pos, len(data) - len(self.old) + 1)
        out.append(data[pos:keep])
        self.pending = data[keep:]
        return b"".join(out)


class CarriedArchive(object):
    """One carried package, a .tar.bz2 or an unpacked package's .zip, and its repodata entry; what its
    info/ folder says is read while it is linked, in the same pass (link_archive)."""

    def __init__(self, path, fn, entry):
        self.path, self.fn, self.entry = path, fn, entry
        self.dist = PROBE.package_stem(fn)
        self.info = {}
        self.placeholders = {}
        self.files = []

    def members(self, limit=None, with_info=False):
        """(name, 'file' or 'link', mode, mtime, file object or link text) of each member outside
        info/ (with_info: and in it), info/ read on the way."""
        return carried_form(self.path).members(self, limit, with_info)

    def keep_info(self, name, size, read):
        """Read one member of info/ that pm needs (index, paths, link, has_prefix, files)."""
        if name in INFO_READ:
            check_info_size(name, size, self.fn)
            self.info[name] = read()
            if name in ("info/paths.json", "info/has_prefix"):
                self.placeholders = self.read_placeholders()

    def info_json(self, name):
        try:
            data = json.loads(self.info[name].decode("utf-8")) if name in self.info else None
        except (ValueError, UnicodeDecodeError):
            raise PmError("%s of the carried package %s is not JSON" % (name, self.fn), FIX_BAD_BUNDLE)
        if data is not None and not isinstance(data, dict):
            raise PmError("%s of the carried package %s is not a JSON object" % (name, self.fn),
                          FIX_BAD_BUNDLE)
        return data

    def read_placeholders(self):
        """path -> (placeholder, 'text' or 'binary'), from info/paths.json or old info/has_prefix."""
        found = {}
        paths = self.info_json("info/paths.json")
        if paths:
            if not isinstance(paths.get("paths") or [], list):
                raise PmError("info/paths.json of the carried package %s: its paths are not a list" % self.fn,
                              FIX_BAD_BUNDLE)
            for item in paths.get("paths") or []:
                if isinstance(item, dict) and isinstance(item.get("prefix_placeholder"), str) \
                        and isinstance(item.get("_path"), str):
                    found[item["_path"]] = (item["prefix_placeholder"], str(item.get("file_mode", "text")))
            return found
        for line in self.info.get("info/has_prefix", b"").decode("utf-8", "replace").splitlines():
            try:
                words = shlex.split(line)
            except ValueError:
                words = []
            if len(words) == 3:
                found[words[2]] = (words[0], words[1])
            elif words:
                found[words[0]] = (OLD_PLACEHOLDER, "text")
        return found

    def noarch_python(self):
        return self.entry.get("noarch") == "python"

    def has_post_link(self):
        return "bin/.%s-post-link.sh" % self.entry["name"] in self.files

    def entry_points(self):
        link = self.info_json("info/link.json") or {}
        points = ((link.get("noarch") or {}) if isinstance(link.get("noarch"), dict) else {}).get("entry_points")
        return [p for p in points if isinstance(p, str)] if isinstance(points, list) else []


INFO_READ = ("info/index.json", "info/paths.json", "info/link.json", "info/has_prefix", "info/files")


INFO_LIMITS = {"info/paths.json": 16 << 20}  # bytes, before it is read; the other members of INFO_READ: 1 MiB


def check_info_size(name, size, fn):
    """A member of a carried package's info/ that pm reads and parses, bounded before it is read (real
    ones are far smaller: paths.json of 20,000 files is a few MiB)."""
    limit = INFO_LIMITS.get(name, 1 << 20)
    if size > limit:
        raise PmError("%s of the carried package %s is %.1f MiB, over the %d MiB no real one reaches" % (
            name, fn, size / 1048576.0, limit >> 20), FIX_BAD_BUNDLE)


def tar_members(archive, limit=None, with_info=False):
    """The members of a .tar.bz2 in one streamed pass (BZ2File inflates in bounded steps; tarfile's own
    "r|bz2" would inflate a whole read at once, and a bomb's few bytes of zeros are hundreds of MiB)."""
    import bz2
    import io
    import tarfile
    with bz2.BZ2File(archive.path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            name = member.name[2:] if member.name.startswith("./") else member.name
            if (name == "info" or name.startswith("info/")) and member.isfile() and name in INFO_READ:
                archive.keep_info(name, member.size, tar.extractfile(member).read)
                if with_info:
                    yield name, "file", member.mode, member.mtime, io.BytesIO(archive.info[name])
            elif (name == "info" or name.startswith("info/")) and not with_info:
                continue
            elif member.issym():
                yield name, "link", 0o777, member.mtime, member.linkname
            elif member.isfile():
                yield name, "file", member.mode, member.mtime, tar.extractfile(member)
            elif not member.isdir():
                raise PmError("%s in the carried package %s is not a file or link" % (name, archive.fn),
                              FIX_BAD_BUNDLE)


@contextlib.contextmanager
def reading_carried(archive):
    """Reading a carried package (a .tar.bz2's stream and tar headers, a zip's entries) that turns out
    damaged is refused naming it; a full disk stays a full disk."""
    import tarfile
    try:
        yield
    except (OSError, tarfile.TarError) + zip_damage() as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise PmError("the carried package %s cannot be read (%s)" % (archive.fn, exc), FIX_BAD_BUNDLE)


def zip_member_mtime(info):
    """A zip member's mtime: its 'UT' extra field (to the second, as pack writes it), else its date."""
    import struct
    extra, pos = info.extra, 0
    while pos + 4 <= len(extra):
        kind, size = struct.unpack("<HH", extra[pos:pos + 4])
        if kind == 0x5455 and size >= 5 and extra[pos + 4] & 1:
            return struct.unpack("<l", extra[pos + 5:pos + 9])[0]
        pos += 4 + size
    return time.mktime(info.date_time + (0, 0, -1))


def zip_members(archive, limit=None, with_info=False):
    """The members of an unpacked package's zip: info/ read first (random access), then the rest (and
    with_info, info/ too) as streams. No more than limit entries, only stored or deflated, never
    encrypted."""
    import zipfile
    with zipfile.ZipFile(archive.path) as package:
        entries = package.infolist()
        if limit is not None and len(entries) > limit:
            raise PmError("the carried package %s holds %d entries, more than its size allows (a bomb)"
                          % (archive.fn, len(entries)), FIX_BAD_BUNDLE)
        check_zip_readable(entries, "the carried package %s" % archive.fn)
        for info in entries:
            if info.filename.startswith("info/") and not info.filename.endswith("/"):
                archive.keep_info(info.filename, info.file_size, lambda: package.read(info))
        for info in entries:
            name, kind = info.filename, stat.S_IFMT(info.external_attr >> 16)
            if (name.startswith("info/") and not with_info) or name.endswith("/"):
                continue
            if kind == stat.S_IFLNK:
                if info.file_size > 4096:
                    raise PmError("the link %s in %s is over 4 KiB long" % (name[:200], archive.fn),
                                  FIX_BAD_BUNDLE)
                yield name, "link", 0o777, 0, package.read(info).decode("utf-8", "surrogateescape")
            elif kind in (0, stat.S_IFREG):
                with package.open(info) as source:
                    yield name, "file", (info.external_attr >> 16) & 0o777, zip_member_mtime(info), source
            else:
                raise PmError("%s in the carried package %s is not a file or link" % (name[:200], archive.fn),
                              FIX_BAD_BUNDLE)


class CarriedForm(object):
    """A form a carried conda package travels in: its file suffix, the repodata key that lists it (None for
    pm's own unpacked form, which an entry names as its pm_file), and the reader of its members (None:
    pm cannot read it with this Python, conda can), oldest_conda: the first conda that reads it."""

    def __init__(self, suffix, repodata_key, members, oldest_conda=(0,)):
        self.suffix, self.repodata_key, self.members, self.oldest_conda = suffix, repodata_key, members, oldest_conda


# Every form pm meets, the archives in the probe's order (PROBE.PACKAGE_FORMS). A new form (e.g. .conda
# through compression.zstd on Python 3.14) is a row here with its member reader, and one in the probe.
FORMS = (
    CarriedForm(".tar.bz2", "packages", tar_members),
    CarriedForm(".conda", "packages.conda", None, oldest_conda=(4, 7)),  # zstd inside: no reader in the stdlib
    CarriedForm(".zip", None, zip_members),  # pm's unpacked package (pack --with-packages; pm_file)
)
UNPACKED = FORMS[2]
REPODATA_KEYS = tuple(form.repodata_key for form in FORMS if form.repodata_key)
CARRIED_FN = r"^[A-Za-z0-9_][A-Za-z0-9._+!-]{0,200}-[A-Za-z0-9._+!]{1,100}-[A-Za-z0-9._+!]{1,100}(%s)\Z" % "|".join(
    re.escape(form.suffix) for form in FORMS if form.repodata_key)


def carried_form(fn):
    """The CarriedForm of a carried file name (its suffix), or None."""
    return next((form for form in FORMS if fn.endswith(form.suffix)), None)


def carried_entries(subdir, repodata):
    """The (file name, entry) pairs of a carried channel/<subdir>/repodata.json, checked (Bundle.open
    and carried_archives): every file name a plain package file name NAME-VERSION-BUILD.tar.bz2 or
    .conda, its entry's name and version text, its subdir the folder it sits in, its unpacked package
    (pm_file) <dist>.zip."""
    def refuse(fn, what):
        raise PmError("channel/%s/repodata.json lists %r, %s" % (subdir, str(fn)[:100], what),
                      FIX_BAD_BUNDLE)
    if not isinstance(repodata, dict):
        refuse("", "and is not a repodata object")
    entries = []
    for key in REPODATA_KEYS:
        packages = repodata.get(key) or {}
        if not isinstance(packages, dict):
            refuse(key, "which is not an object of packages")
        for fn, entry in sorted(packages.items()):
            if not re.match(CARRIED_FN, fn) or not isinstance(entry, dict) or \
                    not isinstance(entry.get("name"), str) or not isinstance(entry.get("version"), str):
                refuse(fn, "which is not a package file (NAME-VERSION-BUILD.tar.bz2 or .conda)")
            if entry.get("subdir") != subdir or not re.match(CONDA_SUBDIR, subdir):
                refuse(fn, "whose subdir %r is not the folder it is in" % (str(entry.get("subdir"))[:60],))
            unpacked = entry.get("pm_file")
            if unpacked is not None and (key != REPODATA_KEYS[0] or unpacked != PROBE.package_stem(fn) + UNPACKED.suffix):
                refuse(fn, "with %r, which is not its unpacked package (pm_file)" % (str(unpacked)[:100],))
            entries.append((fn, entry))
    return entries


def carried_archives(channel_dir, conda_reads=False):
    """The bundle's carried packages (unzipped at channel_dir) as CarriedArchives, their repodata checked
    before anything is installed: every file name one plain .tar.bz2 name of the folder it is listed in,
    or that name's unpacked package (<dist>.zip)."""
    archives, unreadable = [], []
    for subdir in sorted(os.listdir(channel_dir)):
        try:
            if os.path.getsize(os.path.join(channel_dir, subdir, "repodata.json")) > 64 << 20:
                raise ValueError("over 64 MiB")
            repodata = read_json(os.path.join(channel_dir, subdir, "repodata.json"))
        except (OSError, ValueError) as exc:
            raise PmError("the carried channel's %s/repodata.json cannot be read (%s)" % (subdir, exc),
                          FIX_BAD_BUNDLE)
        for fn, entry in carried_entries(subdir, repodata):
            if carried_form(fn).members is None:  # conda reads it, pm cannot
                if not conda_reads:
                    unreadable.append(fn)
                continue
            path = os.path.join(channel_dir, subdir, entry.get("pm_file") or fn)
            if not os.path.isfile(path) or os.path.islink(path):
                raise PmError("the carried channel lists %s, and the bundle does not hold it" % fn,
                              FIX_BAD_BUNDLE)
            archives.append(CarriedArchive(path, fn, entry))
    if unreadable:
        readable = " and ".join(form.suffix for form in FORMS if form.repodata_key and form.members)
        kinds = " and ".join(sorted(set(carried_form(fn).suffix for fn in unreadable)))
        raise PmError("without conda, pm reads %s packages only (this Python has no reader of %s), and the bundle "
                      "carries %d %s: %s" % (readable, kinds, len(unreadable), kinds, ", ".join(unreadable)),
                      "pack again on the base with --with-packages --as-tar-bz2")
    return archives


# == Inputs: the environment file =============================================
# conda's env-file YAML, read with the standard library in every shape real conda writes.

CONDA_OWN_PACKAGES = frozenset(["conda", "conda-env", "conda-build", "conda-libmamba-solver",
                                "conda-package-handling", "conda-package-streaming", "conda-content-trust",
                                "conda-index", "conda-verify"])


class EnvFile(object):
    """A conda environment file: name, channels, conda dependencies, pip dependencies."""

    def __init__(self, name=None, channels=(), dependencies=(), pip=(), variables=None):
        self.name = name
        self.channels = list(channels)
        self.dependencies = list(dependencies)
        self.pip = list(pip)
        self.variables = dict(variables or {})

    def to_yaml(self):
        lines = ["name: %s" % yaml_scalar(self.name or "env")]
        if self.channels:  # an empty 'channels:' crashes conda 25's env create
            lines.append("channels:")
            lines += ["  - %s" % yaml_scalar(c) for c in self.channels]
        lines.append("dependencies:")
        lines += ["  - %s" % yaml_scalar(d) for d in self.dependencies]
        if self.pip:
            lines.append("  - pip:")
            lines += ["    - %s" % yaml_scalar(p) for p in self.pip]
        if self.variables:
            lines.append("variables:")
            lines += ["  %s: %s" % (k, yaml_scalar(v)) for k, v in sorted(self.variables.items())]
        return "\n".join(lines) + "\n"


def strip_comment(line):
    """Drop a '#' comment that is not inside quotes."""
    quote = None
    for at, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (at == 0 or line[at - 1] in " \t"):
            return line[:at]
    return line


# Tags that only say "a string": PyYAML on Python 2 writes !!python/unicode (conda 4.3 does).
STRING_TAGS = ("!!python/unicode", "!!python/str", "!!str")
LIST_TAGS = ("!!python/tuple", "!!python/list", "!!seq")  # a list follows, whatever Python type it was


def parse_scalar(text, where):
    text = text.strip()
    tag = text.split(None, 1)[0] if text.startswith("!!") else None
    if tag in STRING_TAGS:
        text = text[len(tag):].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        inner = text[1:-1]
        return inner.replace("''", "'") if text[0] == "'" else inner.replace('\\"', '"').replace("\\\\", "\\")
    if text[:1] in ("&", "*", "!", "{", "[", "|", ">", "%", "@", "`"):
        raise PmError("%s: %r is YAML beyond a conda environment file" % (where, text),
                      "write it as a plain list entry, as 'conda env export' does")
    return text


def logical_lines(text, source):
    """(line number, indent, text) of the lines that say something, comments dropped, with YAML's
    folded continuations joined: a deeper line that is neither a list item nor 'key:' continues the
    value above it (ruamel.yaml wraps long values so: conda 25 writes 'name:' and a path below)."""
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = strip_comment(raw).rstrip()
        if not line.strip() or line.strip() in ("---", "..."):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if line[indent:indent + 1] == "\t":
            raise PmError("%s line %d: tab indentation" % (source, number), "indent with spaces")
        body = line.strip()
        is_item = body == "-" or body.startswith("- ")
        if lines and indent > lines[-1][1] and not is_item and not re.match(r"^[A-Za-z_][\w-]*\s*:(\s|$)", body):
            lines[-1][2] = lines[-1][2] + " " + body
            continue
        lines.append([number, indent, body])
    return lines


def flow_list(text, where):
    """The items of a one-line YAML flow list, '[a, "b", c]' (quotes kept together)."""
    inner = text.strip()[1:-1]
    items, current, quote = [], "", None
    for char in inner:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == ",":
            items.append(current)
            current = ""
            continue
        current += char
    items.append(current)
    return [parse_scalar(item, where) for item in items if item.strip()]


def list_value(value, where):
    """A key's value that opens a list: empty or a list tag (the items follow), or a flow list."""
    if not value or value in LIST_TAGS:
        return []
    if value.startswith("[") and value.endswith("]"):
        return flow_list(value, where)
    raise PmError("%s: expected a list, got %r" % (where, value), "write one '  - item' per line")


KEY_LINE = r"^([A-Za-z_][\w-]*)\s*:(?:\s+(.*))?$"  # 'key: value' (or 'key:'), and '- pip:' inside a list


class EnvYmlReader(object):
    """parse_env_yml's state, line by line: the document so far, the top-level key whose lines
    follow, and the installer (- pip:) whose items follow."""

    def __init__(self):
        self.doc = {"channels": [], "dependencies": [], "pip": [], "variables": {}}
        self.key, self.sub_list, self.sub_indent = None, None, None  # key "": an unknown one, passed over

    def line(self, indent, body, where):
        is_item = body == "-" or body.startswith("- ")
        if self.sub_list and is_item and indent > self.sub_indent:
            if self.sub_list == "pip":
                self.doc["pip"].append(parse_scalar(body[1:].strip(), where))
            return
        self.sub_list = None
        unindented_item = self.key in ("channels", "dependencies", "") and is_item
        if indent == 0 and not unindented_item:  # conda <= 4.5 writes list items at indent 0
            self.top_level(body, where)
        elif not self.key:
            return
        elif is_item:
            self.item(body[1:].strip(), indent, where)
        elif self.key == "variables" and re.match(r"^[A-Za-z_]\w*\s*:", body):
            name, value = body.split(":", 1)
            self.doc["variables"][name.strip()] = parse_scalar(value, where)
        else:
            raise PmError("%s: cannot read %r" % (where, body), FIX_ENV_FILE)

    def top_level(self, body, where):
        match = re.match(KEY_LINE, body)
        if not match:
            raise PmError("%s: expected 'key:' at the top level, got %r" % (where, body), FIX_ENV_FILE)
        self.key, value = match.group(1), (match.group(2) or "").strip()
        if self.key in ("name", "prefix"):
            self.doc[self.key] = parse_scalar(value, where)
        elif self.key in ("channels", "dependencies"):
            self.doc[self.key].extend(list_value(value, where))
        elif self.key == "variables" and value and value != "{}":
            raise PmError("%s: variables must be a block of NAME: value lines" % where,
                          "write one '  NAME: value' per line")
        elif self.key != "variables":
            say("warning: %s: ignoring the unknown key %r" % (where, self.key))
            self.key = ""

    def item(self, item, indent, where):
        if self.key not in ("channels", "dependencies"):
            raise PmError("%s: a list item under %r" % (where, self.key), "only channels and dependencies are lists")
        installer = re.match(KEY_LINE, item) if self.key == "dependencies" else None
        if not installer:
            self.doc[self.key].append(parse_scalar(item, where))
            return
        self.sub_list, self.sub_indent = installer.group(1), indent
        items = list_value((installer.group(2) or "").strip(), where)
        if self.sub_list == "pip":
            self.doc["pip"].extend(items)
        else:
            say("warning: %s: ignoring the %s: entries (pm installs conda and pip packages)" % (where, self.sub_list))


def parse_env_yml(text, source="env.yml"):
    """Parse conda's env-file YAML: name, channels, dependencies (with a pip: list), prefix,
    variables; block or flow lists, indented or not, quotes, comments, CRLF, a BOM, Python 2's
    tags. Other installers' lists (- npm: ...) are left out with a warning."""
    reader = EnvYmlReader()
    for number, indent, body in logical_lines(text.lstrip("\ufeff"), source):
        reader.line(indent, body, "%s line %d" % (source, number))
    doc = reader.doc
    if not doc["dependencies"] and not doc["pip"]:
        raise PmError("%s lists no dependencies" % source, "pack the software again from its conda environment")
    return EnvFile(doc.get("name"), doc["channels"], doc["dependencies"], doc["pip"], doc["variables"])


def without_conda_itself(specs):
    return [s for s in specs if spec_name(s) not in CONDA_OWN_PACKAGES]


def strip_build(spec):
    """'numpy=1.26.4=py312h' -> 'numpy=1.26.4'; wildcard builds ('*openblas') and other specs stay."""
    parts = spec.split("=")
    if len(parts) == 3 and all(parts) and "*" not in parts[2]:
        return "%s=%s" % (parts[0], parts[1])
    return spec


def local_channels_missing_here(channels):
    """The env file's local channels (file://) that do not exist on this machine. conda 25 refuses
    an env file naming one (4.3 passes over it); the channels of this conda's condarc serve instead."""
    from urllib.parse import unquote, urlsplit
    missing = []
    for channel in channels:
        if channel.startswith("file://") and not os.path.isdir(unquote(urlsplit(channel).path)):
            missing.append(channel)
    return missing


# == Bundle ===================================================================
# Reading a bundle (the probe writes them): open it, check every member against the manifest,
# read members, extract the software safely. Every consumer goes through Bundle.

PARSED_LIMITS = {"env.yml": 2 << 20, "env-history.yml": 2 << 20}  # bytes; other parsed members: 16 MiB
MANIFEST_LIMIT = 8 << 20  # manifest.json, read before anything is checked: 2,000 members make ~300 KB


class Manifest(object):
    """What a bundle says about itself (manifest.json; its layout: the probe's MANIFEST_FIELDS)."""

    FIELDS = PROBE.MANIFEST_FIELDS

    def __init__(self, **values):
        for field in self.FIELDS:
            setattr(self, field, values.get(field))

    @classmethod
    def from_json(cls, data):
        if not isinstance(data, dict) or not isinstance(data.get("members"), dict):
            raise PmError("the bundle's manifest.json is not a pm manifest", FIX_BAD_BUNDLE)
        if not isinstance(data.get("format"), int) or data["format"] > BUNDLE_FORMAT:
            raise PmError("bundle format %r is newer than this pm understands" % data.get("format"),
                          "use a newer pm.pyz on this machine")
        check_name(data.get("name"), "software name in the manifest")
        check_manifest_fields(data)
        software_dir = (data.get("software") or {}).get("dir") if isinstance(data.get("software"), dict) else None
        if software_dir is not None and not is_one_path_component(software_dir):
            raise PmError("the manifest's software dir %r is not one plain folder name" % (software_dir,),
                          FIX_BAD_BUNDLE)
        for name, entry in data["members"].items():
            safe_member_path(name)
            if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) \
                    or not isinstance(entry.get("size"), int):
                raise PmError("manifest entry for %s has no sha256/size" % name, FIX_BAD_BUNDLE)
        return cls(**data)

    def to_json(self):
        return dict((field, getattr(self, field)) for field in self.FIELDS)

    def software_dir(self):
        return (self.software or {}).get("dir") or self.name


def check_manifest_fields(data):
    """The manifest's fields that migrate and report read, each of the type they expect: source, env,
    software and packages objects; minimal and requested_specs lists of text; each carried package a
    file under channel/ and a name."""
    for field in ("source", "env", "software", "packages"):
        check_manifest_field(field, data.get(field), lambda value: isinstance(value, dict), "an object")
    for field in ("minimal", "requested_specs"):
        check_manifest_field(field, data.get(field), is_text_list, "a list of specs")
    packages = data.get("packages") or {}
    check_manifest_field("packages.platform", packages.get("platform"), lambda value: isinstance(value, str),
                         "a platform name")
    for field in ("carried", "missing"):
        check_manifest_field("packages." + field, packages.get(field), is_named_list, "a list of packages with names")
    for carried in packages.get("carried") or []:
        check_manifest_field("packages.carried file %r" % (carried.get("file"),), carried.get("file") or 0,
                             lambda value: isinstance(value, str) and value.startswith("channel/"),
                             "a member under channel/")


def check_manifest_field(field, value, fits, what):
    """A field absent (None) or of the type its readers expect."""
    if value is not None and not fits(value):
        raise PmError("the manifest's %s is not %s" % (field, what), FIX_BAD_BUNDLE)


def is_text_list(value):
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def is_named_list(value):
    return isinstance(value, list) and all(isinstance(item, dict) and isinstance(item.get("name"), str)
                                           for item in value)


def open_bundle_file(path, where):
    """path opened for reading, or the one refusal of a file that cannot be read (where names it)."""
    try:
        return open(path, "rb")
    except OSError as exc:
        raise PmError("%s is not a readable bundle (%s)" % (where, exc.strerror), FIX_NOT_A_BUNDLE)


def open_bundle(path, label=None):
    """Open a bundle and read its manifest; one clear error for anything that is not a bundle.

    label names the bundle in messages (an upload's temp path means nothing to its sender)."""
    import zipfile
    label = label or path
    try:
        archive = zipfile.ZipFile(path)
    except (OSError,) + zip_damage() as exc:
        raise PmError("%s is not a readable bundle (%s)" % (label, exc), FIX_NOT_A_BUNDLE)
    try:
        check_zip_readable(archive.infolist(), label)
        size = archive.getinfo("manifest.json").file_size
    except KeyError:
        archive.close()
        raise PmError("%s has no manifest.json" % label, FIX_NOT_A_BUNDLE)
    except PmError:
        archive.close()
        raise
    if size > MANIFEST_LIMIT:
        archive.close()
        raise PmError("the manifest.json of %s is %.1f MiB, over the %d MiB no real one reaches" % (
            label, size / 1048576.0, MANIFEST_LIMIT >> 20), FIX_BAD_BUNDLE)
    try:
        data = json.loads(archive.read("manifest.json").decode("utf-8"))
    except KeyError:
        archive.close()
        raise PmError("%s has no manifest.json" % label, FIX_NOT_A_BUNDLE)
    except (ValueError, UnicodeDecodeError, OSError) + zip_damage() as exc:
        archive.close()
        raise PmError("%s has a broken manifest.json (%s)" % (label, exc), FIX_BAD_BUNDLE)
    try:
        return archive, Manifest.from_json(data)
    except PmError:
        archive.close()
        raise


class BackgroundHasher(object):
    """sha256 on a second thread (hashlib releases the GIL), so hashing overlaps receiving.

    At most a few blocks wait in the queue, so memory stays bounded."""

    def __init__(self):
        import hashlib
        import threading
        self.digest = hashlib.sha256()
        import queue
        self.blocks = queue.Queue(maxsize=8)
        self.thread = threading.Thread(target=self.work, daemon=True)
        self.thread.start()

    def work(self):
        while True:
            block = self.blocks.get()
            if block is None:
                return
            self.digest.update(block)

    def update(self, block):
        self.blocks.put(block)

    def hexdigest(self):
        if self.thread.is_alive():
            self.blocks.put(None)
            self.thread.join()
        return self.digest.hexdigest()


def member_digest(archive, name):
    """sha256 and size of one member; large members hash on a second thread while zip reads."""
    import hashlib
    big = archive.getinfo(name).file_size > 8 * CHUNK
    digest = BackgroundHasher() if big else hashlib.sha256()
    try:
        with archive.open(name) as handle:
            return copy_hashing(handle, digest=digest)
    finally:
        digest.hexdigest()  # ends the hashing thread, also when reading failed


class Bundle(object):
    """The one bundle reader: Bundle.open checks every member against the manifest (names, sizes,
    sha256) before anything is used; read_text, read_json and extract_software read from it."""

    def __init__(self, path, manifest, handle=None):
        self.path, self.manifest = path, manifest
        self.handle = handle  # the file Bundle.open checked: every later read is of it, even if path is replaced
        self._environment = None  # (EnvFile, min-deps), once read
        self._conda_list = None  # conda-list.json's records, once read
        self.dists, self.dists_read = None, False  # python-dists.json's records, once read (base_distributions)
        self.max_ratio = None  # --max-ratio, as Bundle.open was given it: also bounds what its wheels unpack to

    def source(self):
        return self.handle if self.handle is not None else self.path

    @classmethod
    def open(cls, path, label=None, max_ratio=None):
        """A bundle checked member by member; label names it in messages (an upload's temp path
        means nothing to its sender); max_ratio bounds its unpacked size (check_unpacked_size)."""
        where = label or path
        handle = open_bundle_file(path, where)
        archive, manifest = open_bundle(handle, where)
        with archive:
            check_entry_kinds_and_names(archive.infolist())
            check_unpacked_size(archive.infolist(), os.fstat(handle.fileno()).st_size, where, max_ratio)
            check_members(archive, manifest)
        bundle = cls(path, manifest, handle)
        bundle.max_ratio = max_ratio
        bundle.environment(label)  # what migrate will read is read now: a bundle is refused whole, up front
        bundle.conda_list(label)
        base_distributions(bundle)
        bundle.check_carried_channel(where)
        return bundle

    def check_carried_channel(self, where):
        """Each carried channel's repodata.json, read as the migration will read it."""
        for member in sorted(self.manifest.members):
            parts = member.split("/")
            if parts[0] == "channel" and parts[2] == "repodata.json":
                try:
                    repodata = self.read_json(member)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise PmError("%s in %s is not JSON (%s)" % (member, where, exc), FIX_BAD_BUNDLE)
                carried_entries(parts[1], repodata)

    @classmethod
    def stored(cls, path):
        """A bundle of the store, checked when it was stored: only its manifest is read."""
        archive, manifest = open_bundle(path)
        archive.close()
        return cls(path, manifest)

    def read_text(self, member):
        """A member pm parses, bounded (PARSED_LIMITS): real ones are far smaller."""
        import zipfile
        with zipfile.ZipFile(self.source()) as archive:
            limit = PARSED_LIMITS.get(member, 16 << 20)
            if archive.getinfo(member).file_size > limit:
                raise PmError("%s in %s is over %d MiB, far more than any real one" % (member, self.path, limit >> 20),
                              FIX_BAD_BUNDLE)
            return archive.read(member).decode("utf-8")

    def read_json(self, member):
        return json.loads(self.read_text(member))

    def environment(self, label=None):
        """(EnvFile, min-deps records): env.yml read by the one env-file reader, and min-deps.json;
        read once (Bundle.open reads them to check the bundle, migrate uses what it read)."""
        if self._environment is None:
            self._environment = self.read_environment(label or self.path)
        return self._environment

    def conda_list(self, label=None):
        """The base's conda packages as conda-list.json records them (dicts with a string name; [] when the
        bundle has none: older bundles, the original tool's store); read and checked once, at Bundle.open."""
        if self._conda_list is None:
            where, listed = label or self.path, []
            if "conda-list.json" in (self.manifest.members or {}):
                listed = self.read_list("conda-list.json", where)
            self._conda_list = [r for r in listed if isinstance(r, dict) and isinstance(r.get("name"), str)]
        return self._conda_list

    def read_list(self, member, where):
        """A JSON member that must be a list (min-deps.json, conda-list.json): refused, naming it, when not."""
        try:
            listed = self.read_json(member)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PmError("%s in %s is not JSON (%s)" % (member, where, exc), FIX_BAD_BUNDLE)
        if not isinstance(listed, list):
            raise PmError("%s in %s is not a list" % (member, where), FIX_BAD_BUNDLE)
        return listed

    def read_environment(self, where):
        min_deps = self.read_list("min-deps.json", where)
        for record in min_deps:  # names and versions become conda's words (the direct level, its dry runs)
            if isinstance(record, dict):
                name, version = record.get("name"), record.get("version")
                bad = not (isinstance(name, str) and re.match(PACKAGE_NAME, name)) or not (
                    version in (None, "") or isinstance(version, str) and re.match(PACKAGE_VERSION, version))
                shown = (name, version)
            else:
                bad = not isinstance(record, str) or not re.match(r"^[A-Za-z0-9_]", record) \
                    or re.search(CONTROL_OR_NEWLINE, record)
                shown = record
            if bad:
                raise PmError("min-deps.json in %s lists %r, which is not a package name and version"
                              % (where, str(shown)[:100]), FIX_BAD_BUNDLE)
        try:
            env_text = self.read_text("env.yml")
        except UnicodeDecodeError:
            raise PmError("env.yml in %s is not UTF-8" % where, FIX_BAD_BUNDLE)
        env_file = parse_env_yml(env_text, "env.yml in %s" % where)
        for spec in env_file.dependencies:
            if not re.match(r"^[A-Za-z0-9_]", spec) or re.search(CONTROL_OR_NEWLINE, spec):
                raise PmError("env.yml in %s lists %r, which is not a package spec" % (where, spec[:80]),
                              FIX_BAD_BUNDLE)
        return env_file, min_deps

    def extract_channel(self, dest):
        """Unzip the carried packages (channel/<subdir>/<file>, plain files only) into dest, a new folder."""
        return self.extract_folder("channel", dest)

    def extract_folder(self, top, dest):
        """Unzip the carried files under top/ (channel/<subdir>/<file> or wheels/<file>, plain files
        only) into dest, a new folder."""
        import shutil
        os.mkdir(dest, 0o700)
        try:
            self.extract_folder_into(top, dest, 3 if top == "channel" else 2)
        except BaseException:  # a full disk, a refused entry, Ctrl-C: no truncated package is left behind
            shutil.rmtree(dest, ignore_errors=True)
            raise
        return dest

    def extract_folder_into(self, top, dest, depth):
        import shutil
        import zipfile
        with zipfile.ZipFile(self.source()) as archive:
            for info in archive.infolist():
                parts = info.filename.split("/")
                if parts[0] != top or info.filename.endswith("/"):
                    continue
                if len(parts) != depth or not all(is_one_path_component(p) for p in parts[1:]) \
                        or stat.S_IFMT(info.external_attr >> 16) not in (0, stat.S_IFREG):
                    raise PmError("bundle entry %s is not a carried package" % info.filename,
                                  FIX_BAD_BUNDLE)
                folder = os.path.join(dest, *parts[1:-1])
                if not os.path.isdir(folder):
                    os.mkdir(folder, 0o700)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                with archive.open(info) as source, os.fdopen(os.open(os.path.join(folder, parts[-1]), flags, 0o600),
                                                             "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)

    def extract_software(self, dest):
        """Unzip software/<dir>/ into dest; return dest/<dir>. Safe against crafted entries: every
        name is one tree of plain components; directories and files are written first, through real
        directories only and never onto an existing path; links come last, and every link must
        resolve (through the links before it) strictly inside the tree. Anything else removes what
        was written and is refused."""
        import shutil
        import zipfile
        top = self.manifest.software_dir() if self.manifest else None
        os.makedirs(dest, exist_ok=True)
        with zipfile.ZipFile(self.source()) as archive:
            entries = software_entries(archive, top)
            if not entries:
                raise PmError("the bundle holds no software files", "pack the software directory again")
            top = entries[0][0][0]
            root = os.path.join(dest, top)
            try:
                links = write_entries(archive, entries, dest)
                for parts, link in links:
                    try:
                        os.symlink(link, os.path.join(dest, *parts))
                    except FileExistsError:
                        raise PmError("bundle entry software/%s is a link and also a file or folder" % "/".join(parts),
                                      FIX_BAD_BUNDLE)
                for parts, link in links:
                    if not lies_inside(os.path.join(dest, *parts), root, itself=False):  # a loop, at best
                        raise PmError("bundle link %s points outside the software (%s)"
                                      % ("software/" + "/".join(parts), link), FIX_BAD_BUNDLE)
            except BaseException:
                if os.path.lexists(root):
                    shutil.rmtree(root, ignore_errors=True)
                raise
        return root


def check_members(archive, manifest):
    """Each member listed in the manifest, in its place, and of its size and sha256; none missing,
    env.yml and min-deps.json among them."""
    listed = set(manifest.members)
    for info in archive.infolist():
        safe_member_path(info.filename)
        if info.filename == "manifest.json" or info.filename.endswith("/"):
            continue
        if info.filename not in listed:
            raise PmError("%s is in the bundle but not in its manifest" % info.filename, FIX_BAD_BUNDLE)
        check_member_place(info.filename)
        check_member_digest(archive, info.filename, manifest.members[info.filename])
        listed.discard(info.filename)
    if listed:
        raise PmError("the bundle lacks %s, listed in its manifest" % sorted(listed)[0], FIX_BAD_BUNDLE)
    for required in ("env.yml", "min-deps.json"):
        if required not in manifest.members:
            raise PmError("the bundle has no %s" % required, FIX_BAD_BUNDLE)


def check_member_place(name):
    """A carried package is channel/SUBDIR/FILE, a wheel wheels/ and a plain wheel file name."""
    parts = name.split("/")
    if parts[0] == "channel" and (len(parts) != 3 or not re.match(CONDA_SUBDIR, parts[1])
                                  or not is_one_path_component(parts[2])):
        raise PmError("bundle member %r is not channel/SUBDIR/FILE of a carried package (SUBDIR as "
                      "linux-64 or noarch)" % name[:200], FIX_BAD_BUNDLE)
    if name.startswith("wheels/") and not re.match(WHEEL_FN, name[len("wheels/"):]):
        raise PmError("bundle member %r is not a plain wheel file name (wheels/NAME-VERSION-PY-ABI-"
                      "PLATFORM.whl)" % name[:200], FIX_BAD_BUNDLE)


def check_member_digest(archive, name, entry):
    """The member's bytes are the ones the manifest lists (size and sha256)."""
    try:
        digest, size = member_digest(archive, name)
    except (OSError,) + zip_damage() as exc:
        raise PmError("bundle member %s is damaged (%s)" % (name, exc), FIX_DAMAGED)
    if digest != entry["sha256"] or size != entry["size"]:
        raise PmError("bundle member %s does not match its sha256 in the manifest" % name, FIX_DAMAGED)


def check_entry_kinds_and_names(infos):
    """Refuse device files, fifos and sockets, and two names that differ only in case (one would
    overwrite the other on a case-insensitive disk), naming the entries."""
    kinds = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a fifo",
             stat.S_IFSOCK: "a socket"}
    seen = {}
    for info in infos:
        kind = kinds.get(stat.S_IFMT(info.external_attr >> 16))
        if kind:
            raise PmError("bundle entry %s is %s, which pm never unpacks" % (info.filename, kind),
                          FIX_BAD_BUNDLE)
        folded = info.filename.rstrip("/").lower()
        if folded in seen and seen[folded] != info.filename.rstrip("/"):
            raise PmError("bundle entries %s and %s differ only in case: on a case-insensitive disk one "
                          "would overwrite the other" % (seen[folded], info.filename),
                          "rename one of them on the base machine and pack again")
        seen[folded] = info.filename.rstrip("/")


def check_unpacked_size(infos, packed_bytes, label, max_ratio=None):
    """Refuse a zip bomb: a bundle of more than UNPACKED_FLOOR unpacked bytes whose unpacked size is
    over max_ratio (default MAX_UNPACK_RATIO; 0: no limit) times its own. The sizes are the ones
    the entries declare, which zip reading holds them to."""
    max_ratio = MAX_UNPACK_RATIO if max_ratio is None else max_ratio
    unpacked = sum(info.file_size for info in infos)
    if max_ratio and unpacked > UNPACKED_FLOOR and unpacked > max_ratio * max(packed_bytes, 1):
        raise PmError("%s unpacks to %.0f MiB, %d times its %.1f MiB: over the limit of %d times (a zip bomb, "
                      "or very repetitive data)" % (label, unpacked / 1048576.0, unpacked // max(packed_bytes, 1),
                                                   packed_bytes / 1048576.0, max_ratio),
                      "if you trust it, pass --max-ratio %d (or 0 for no limit)"
                      % (unpacked // max(packed_bytes, 1) + 1))


def software_entries(archive, top):
    """The software/ entries as (path components, ZipInfo), checked: plain components only (no '',
    '.', '..'), one tree named top (the manifest's software dir), no name twice."""
    entries, seen = [], set()
    for info in archive.infolist():
        name = safe_member_path(info.filename)
        if not name.startswith("software/") or name == "software/":
            continue
        parts = tuple(name[len("software/"):].rstrip("/").split("/"))
        top = top or parts[0]
        if parts[0] != top:
            raise PmError("bundle entry %s is outside the software directory %s" % (name, top),
                          FIX_BAD_BUNDLE)
        if parts in seen:
            raise PmError("bundle entry %s appears twice" % name, FIX_BAD_BUNDLE)
        seen.add(parts)
        entries.append((parts, info))
    return entries


def write_entries(archive, entries, dest):
    """Write the directories and files of entries under dest by the containment writer (Contained),
    onto no existing path; return the links, (parts, target), for the caller to make last."""
    writer = Contained(dest)
    links = []
    progress = PROBE.Progress("unzipping %s" % entries[0][0][0], sum(info.file_size for _, info in entries) or None)
    for parts, info in entries:
        mode = info.external_attr >> 16
        where = "bundle entry " + info.filename
        if stat.S_ISLNK(mode):
            writer.folder(parts[:-1], where)
            links.append((parts, archive.read(info).decode("utf-8", "replace")))
        elif info.filename.endswith("/"):
            folder = writer.folder(parts, where)
            if mode & 0o777:
                os.chmod(folder, ((mode & 0o777) | 0o700) & ~writer.umask)
        else:
            if os.path.lexists(os.path.join(dest, *parts)):
                raise PmError("%s is written twice" % where, FIX_BAD_BUNDLE)
            stamp = time.mktime(info.date_time + (0, 0, -1))
            with archive.open(info) as source:
                writer.write("/".join(parts), source, mode & 0o777 or 0o644, stamp, where)
            progress.add(info.file_size)
    progress.clear()
    return links


def base_distributions(bundle):
    """python-dists.json's records (checked), or None for a bundle packed before pm recorded them; read
    once per bundle (every route, and drop_foreign_wheels, use the one list)."""
    if not bundle.dists_read:
        bundle.dists, bundle.dists_read = read_distributions(bundle), True
    return bundle.dists


def read_distributions(bundle):
    if "python-dists.json" not in bundle.manifest.members:
        return None
    try:
        data = bundle.read_json("python-dists.json")
    except (ValueError, UnicodeDecodeError) as exc:
        raise PmError("python-dists.json in %s is not JSON (%s)" % (bundle.path, exc), FIX_BAD_BUNDLE)
    dists = []
    for dist in (data.get("dists") if isinstance(data, dict) else None) or []:
        if not isinstance(dist, dict) or not all(isinstance(dist.get(k), str) for k in ("name", "version", "site")):
            raise PmError("python-dists.json in %s has a record without name, version or site" % bundle.path,
                          FIX_BAD_BUNDLE)
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}\Z", dist["name"]) or \
                not re.match(r"^[A-Za-z0-9][A-Za-z0-9.+!_-]{0,99}\Z", dist["version"]):
            raise PmError("python-dists.json in %s names %r %r, which is not a distribution name and version"
                          % (bundle.path, dist["name"][:60], dist["version"][:60]), FIX_BAD_BUNDLE)
        check_dist_paths(dist, "python-dists.json in %s" % bundle.path)
        dists.append(dist)
    return dists


def check_dist_paths(dist, where):
    """The fields of a python-dists.json record that become paths or lines: site (where pm writes its
    dist-info, .pth and wheels), the software's import roots (lines of its .pth) and the carried wheel."""
    if not re.match(SITE_REL, dist["site"]):
        refuse_dist_field(where, dist, "the site %r, which is not lib/pythonX.Y/site-packages" % dist["site"][:100])
    check_import_roots(dist, where)
    packages = dist.get("import_packages")
    if packages is not None and not (isinstance(packages, list) and all(
            isinstance(p, str) and re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,199}\Z", p) for p in packages)):
        refuse_dist_field(where, dist, "import_packages that are not Python names")
    wheel = dist.get("wheel")
    if wheel is not None and wheel != "" and not (isinstance(wheel, str) and wheel.startswith("wheels/")
                                                  and re.match(WHEEL_FN, wheel[len("wheels/"):])):
        refuse_dist_field(where, dist, "the wheel %r, which is not a plain wheel file name (wheels/NAME-VERSION-PY-ABI-"
                          "PLATFORM.whl)" % (wheel if not isinstance(wheel, str) else wheel[:100],))


def check_import_roots(dist, where):
    """import_roots: a list of plain relative paths inside the software's tree (each a line of its .pth)."""
    roots = dist.get("import_roots")
    if roots is not None and not isinstance(roots, list):
        refuse_dist_field(where, dist, "import_roots that are not a list")
    for root in roots or []:
        if root != "." and not is_plain_line_path(root):
            refuse_dist_field(where, dist, "the import root %r, which is not a plain relative path inside its tree"
                              % (root if not isinstance(root, str) else root[:100],))


def refuse_dist_field(where, dist, what):
    raise PmError("%s gives %s %s" % (where, dist["name"], what), FIX_BAD_BUNDLE)


# == Store ====================================================================
# One object owns every path of the store (~/.platform_migrator, or $PM_HOME).

_attempt_counter = [0]


def attempt_process_alive(record):
    """Whether the pm that runs an attempt (its result.json's pid, started when it says) still runs."""
    pid = record.get("pid")
    if not isinstance(pid, int):
        return True  # an older record: nothing to tell by
    started = process_start_time(pid)
    if started is None and record.get("pid_started") is None:  # no /proc here: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            pass
        return True
    return started is not None and started == record.get("pid_started", started)


class Store(object):
    """The store and every path in it: NAME/bundles/NNNN.zip (revisions), NAME/<attempt id>/
    (migrations), NAME/original-parts/ (the original protocol's parts), NAME/choices.json (remembered
    package choices), config/package-managers.ini, .incoming/ (uploads being received), and the
    server's server.pid, server.log and migrate.py (the probe it serves)."""

    def __init__(self, home):
        self.home = os.path.abspath(home)
        self.pidfile = os.path.join(self.home, "server.pid")
        self.lockfile = os.path.join(self.home, "server.lock")
        self.server_log = os.path.join(self.home, "server.log")
        self.probe_copy = os.path.join(self.home, "migrate.py")
        self.managers_config = os.path.join(self.home, "config", "package-managers.ini")

    @classmethod
    def default(cls):
        return cls(os.environ.get("PM_HOME") or os.path.expanduser("~/.platform_migrator"))

    def software(self, name):
        return os.path.join(self.home, check_name(name))

    def install_lock(self, output_dir):
        """The lock file of installs into output_dir, in the store (.locks/<sha256 of its real path>):
        pm's own, which no one who can only read output_dir can hold."""
        import hashlib
        folder = os.path.join(self.home, ".locks")
        os.makedirs(folder, 0o700, exist_ok=True)
        key = hashlib.sha256(os.fsencode(os.path.realpath(output_dir))).hexdigest()
        return os.path.join(folder, key + ".lock")

    def bundles_dir(self, name):
        return os.path.join(self.software(name), "bundles")

    def original_parts_dir(self, name):
        return os.path.join(self.software(name), "original-parts")

    def choices_path(self, name):
        return os.path.join(self.software(name), "choices.json")

    def read_choices(self, name):
        path = self.choices_path(name)
        return read_json(path) if os.path.isfile(path) else {}

    def remember_choices(self, name, decisions):
        """Add this attempt's choices to the remembered ones, under the software's lock, so that two
        migrations at once lose neither's choices (nor those of requirements neither had)."""
        with FolderLock(self.software(name), "the remembered choices of %s" % name):
            write_json(self.choices_path(name), dict(self.read_choices(name), **decisions))

    def make_folder(self, path):
        """A folder in the store, owner-only (0700) like everything in it, with the ones above it."""
        missing = []
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for folder in reversed(missing):
            try:
                os.mkdir(folder, 0o700)
            except FileExistsError:
                pass
        return missing[0] if missing else path

    def incoming(self):
        folder = os.path.join(self.home, ".incoming")
        self.make_folder(folder)
        return folder

    def names(self, with_bundles=False):
        """The software kept here (folders named as software is), sorted."""
        if not os.path.isdir(self.home):
            return []
        return sorted(n for n in os.listdir(self.home) if re.match(NAME_PATTERN, n) and n.lower() not in
                      PROBE.STORE_NAMES and os.path.isdir(os.path.join(self.home, n, "bundles") if with_bundles
                                                          else os.path.join(self.home, n)))

    def revisions(self, name):
        """Stored revisions of a software's bundle, oldest first."""
        folder = self.bundles_dir(name)
        if not os.path.isdir(folder):
            return []
        numbered = [(int(f[:-4]), f) for f in os.listdir(folder) if re.match(r"^\d{4,}\.zip$", f)]
        return [os.path.join(folder, f) for _, f in sorted(numbered)]  # 10000.zip comes after 9999.zip

    def latest_bundle(self, name, max_ratio=None):
        revisions = self.revisions(name) or self.import_original(name, max_ratio)
        if not revisions:
            raise PmError("no bundle stored for '%s'" % name,
                          "send one with 'pm.pyz pack --server', import one with 'pm.pyz unpack', or pass --bundle")
        return revisions[-1]

    def import_original(self, name, max_ratio=None):
        """platform-migrator 1.1.0 kept NAME/env.yml, NAME/min-deps.json and NAME/pkg.zip: turn them
        into a first revision, checked as an upload is; return the revisions."""
        import tempfile
        folder = self.software(name)
        parts = dict((part, os.path.join(folder, part)) for part in ("env.yml", "min-deps.json", "pkg.zip"))
        revisions = self.revisions(name)
        if revisions or not (os.path.isfile(parts["env.yml"]) and os.path.isfile(parts["pkg.zip"])):
            return revisions
        handle, temp = tempfile.mkstemp(prefix="original-", suffix=".part", dir=self.incoming())
        os.close(handle)
        try:
            bundle_from_original(name, parts, parts["pkg.zip"], temp, max_ratio)
            Bundle.open(temp, "the original tool's store entry %s" % folder, max_ratio)
            target = self.add_revision(temp, name)
        finally:
            if os.path.exists(temp):
                os.remove(temp)
        say("note: %s holds platform-migrator 1.1.0's files: they are now its bundle %s" % (folder, target))
        return self.revisions(name)

    def add_revision(self, temp_path, name):
        """Move a checked bundle into the store as the next revision (atomic; never overwrites)."""
        folder = self.bundles_dir(name)
        self.make_folder(folder)
        os.chmod(temp_path, 0o600)
        while True:
            revisions = self.revisions(name)
            number = int(os.path.basename(revisions[-1])[:-4]) + 1 if revisions else 1
            target = os.path.join(folder, "%04d.zip" % number)
            try:
                os.link(temp_path, target)  # fails if another upload took this number
            except FileExistsError:
                continue
            os.remove(temp_path)
            return target

    def new_attempt_dir(self, name):
        """A fresh, never reused attempt directory: time to the microsecond plus a counter."""
        folder = self.software(name)
        while True:
            now = time.time()
            _attempt_counter[0] += 1
            attempt = "%s.%06d-%03d" % (time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)), int(now % 1 * 1e6),
                                        _attempt_counter[0] % 1000)
            path = os.path.join(folder, attempt)
            self.make_folder(folder)
            try:
                os.mkdir(path, 0o700)
                return path
            except FileExistsError:
                continue

    def attempts(self, name):
        """A software's attempts, oldest first: result.json with its id, or just the id (one_attempt picks one)."""
        folder = self.software(name)
        attempts = []
        for entry in sorted(os.listdir(folder)):
            result = os.path.join(folder, entry, "result.json")
            if not re.match(r"^\d{8}T", entry):
                continue
            try:
                record = read_json(result) if os.path.isfile(result) else {}
            except (OSError, ValueError) as exc:
                record = {"status": "unreadable", "error": "result.json cannot be read (%s)" % exc}
            record = dict(record if isinstance(record, dict) else {}, id=entry)
            if record.get("status") == "running" and not attempt_process_alive(record):
                record.update(status="interrupted", error=record.get("error") or
                              "pm stopped before the attempt ended (killed, or the machine went down)")
            attempts.append(record)
        return attempts

    def has_original_files(self, name):
        """platform-migrator 1.1.0's NAME/env.yml and NAME/pkg.zip, not yet converted (import_original)."""
        folder = self.software(name)
        return os.path.isfile(os.path.join(folder, "env.yml")) and os.path.isfile(os.path.join(folder, "pkg.zip"))


def install_mark(target):
    """The file beside an install that says pm made it (so --force may replace it): output_dir/.DIR.pm-installed."""
    return os.path.join(os.path.dirname(target), ".%s.pm-installed" % os.path.basename(target))


def attempt_install_in_use(attempt):
    """Whether an attempt's install is still there and still its own (the install mark names it)."""
    installed = attempt.get("installed_to")
    if not installed or not os.path.isdir(installed):
        return False
    try:
        mark = read_json(install_mark(installed))
    except (OSError, ValueError):
        return True  # pm cannot tell: keep it
    return mark.get("attempt") in (None, attempt["id"])


def one_attempt(attempts, name, attempt_id):
    """The one attempt (of store.attempts) whose id starts with attempt_id, else refused."""
    chosen = [a for a in attempts if a["id"].startswith(attempt_id)]
    if len(chosen) != 1:
        raise PmError("%s attempt of %s matches %r" % ("no" if not chosen else "more than one", name, attempt_id),
                      "pass an id from 'pm.pyz history %s'" % name)
    return chosen[0]


# == Inputs: the test configuration ===========================================
# The INI files a migration runs with (the original tool's format): one [NAME] section per software,
# its [test_X] sections.


TEST_KEYS = ("exec", "timeout", "env", "workdir", "runner")


TEST_CONFIG_COPY = "test-config.ini"  # in the attempt's folder: the test configuration it ran with


SOFTWARE_KEYS = ("output_dir", "package_managers", "tests", "modulefiles")


class TestSpec(object):
    """One [test_X] section."""

    def __init__(self, name, command, timeout=None, env=None, workdir=None, runner=None):
        self.name, self.command, self.timeout = name, command, timeout
        self.env, self.workdir, self.runner = dict(env or {}), workdir, runner


class MigrationConfig(object):
    """The merged test configuration for one software."""

    def __init__(self, output_dir, package_managers, tests, paths=(), modulefiles=None):
        self.output_dir, self.package_managers, self.tests = output_dir, package_managers, tests
        self.modulefiles = modulefiles  # the folder an install writes its modulefiles into (None: none)
        self.paths = list(paths)  # the files it was read from, in order (the attempt keeps a copy)

    def copy_text(self):
        """The files as they were read, one after the other: what the attempt keeps as test-config.ini."""
        parts = []
        for path in self.paths:
            with open(path, encoding="utf-8") as handle:
                parts.append("# pm: the test configuration %s, as this attempt read it\n%s" % (path, handle.read()))
        return "\n".join(parts)


def read_test_config(paths, name):
    """Merge INI test configurations in order; one clear error naming file, section and key.
    Read as platform-migrator 1.1.0 reads them, with ConfigParser's defaults: '%(key)s' and '%%'
    interpolate, and ';' or '#' start a comment only at the start of a line (`exec = a ; b` runs both)."""
    import configparser
    try:
        return read_test_config_values(configparser.ConfigParser(), paths, name)
    except configparser.InterpolationError as exc:
        raise PmError("cannot read %s: %s" % (", ".join(paths), " ".join(str(exc).split())),
                      "write a literal '%' as '%%'")


def read_test_config_values(parser, paths, name):
    origin = {}
    for path in paths:
        if not os.path.isfile(path):
            raise PmError("test configuration %s does not exist" % path, "pass the path of an INI file")
        before = dict((s, dict(parser[s])) for s in parser.sections())
        read_ini(parser, path)
        for section in parser.sections():
            for key, value in parser[section].items():
                if before.get(section, {}).get(key) != value:
                    origin[(section, key)] = path
    files = ", ".join(paths)

    def need(section, key):
        if not parser.has_section(section):
            raise PmError("no [%s] section in %s" % (section, files), "add it (see 'pm.pyz migrate --help')")
        value = parser[section].get(key, "").strip()
        if not value:
            raise PmError("no '%s' in [%s] of %s" % (key, section, files), "add '%s = ...' there" % key)
        return value

    output_dir = need(name, "output_dir")
    if not os.path.isabs(os.path.expanduser(output_dir)):
        raise PmError("output_dir %r in [%s] of %s is not absolute" % (output_dir, name, origin[(name, "output_dir")]),
                      "give a full path such as /opt/%s" % name)
    warn_unknown(parser, name, SOFTWARE_KEYS, origin)
    managers = [m.strip() for m in parser[name].get("package_managers", "conda").split(",") if m.strip()]
    tests = []
    for test in [t.strip() for t in need(name, "tests").split(",") if t.strip()]:
        section = "test_" + test
        warn_unknown(parser, section, TEST_KEYS, origin)
        command = need(section, "exec")
        runner = parser[section].get("runner")
        try:
            shlex.split(runner or "")
        except ValueError as exc:
            raise PmError("runner %r in [%s] of %s is not shell words (%s)" % (runner, section,
                                                                             origin.get((section, "runner")), exc),
                          "close the quote, e.g. runner = srun -n1")
        tests.append(TestSpec(test, command, test_timeout(parser, section, origin),
                              test_env_vars(parser[section].get("env", ""), section),
                              parser[section].get("workdir"), runner))
    modulefiles = parser[name].get("modulefiles", "").strip() or None
    if modulefiles:
        check_modulefiles_dir(modulefiles, "modulefiles %r in [%s] of %s" % (modulefiles, name,
                                                                             origin[(name, "modulefiles")]))
    return MigrationConfig(os.path.expanduser(output_dir), managers, tests, paths,
                           modulefiles and os.path.expanduser(modulefiles))


def warn_unknown(parser, section, known, origin):
    if parser.has_section(section):
        for key in parser[section]:
            if key not in known and key not in parser.defaults():
                say("warning: unknown key '%s' in [%s] of %s (known: %s)" % (key, section, origin.get((section, key)),
                                                                          ", ".join(known)))


def test_timeout(parser, section, origin):
    value = parser[section].get("timeout")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1
    if seconds <= 0:
        raise PmError("timeout %r in [%s] of %s is not a positive number" % (value, section, origin[(section, "timeout")]),
                      "give seconds, e.g. timeout = 600")
    return seconds


def test_env_vars(text, section):
    env = {}
    for item in re.split(r"[,\n]", text):
        if item.strip():
            if "=" not in item:
                raise PmError("env entry %r in [%s] is not NAME=VALUE" % (item.strip(), section),
                              "write env = NAME=VALUE, OTHER=VALUE")
            key, value = item.split("=", 1)
            env[key.strip()] = value.strip()
    return env


def check_modulefiles_dir(folder, where):
    if not os.path.isabs(os.path.expanduser(folder)):
        raise PmError("%s is not an absolute folder" % where, "give a full path such as /opt/modulefiles")
    return folder


# == Running commands =========================================================
# One way to run a command, for conda, the package managers and the tests alike.


def kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class CommandRun(object):
    """What a command came to: its exit code (None: it could not start), its output (when
    captured), whether it ran out of time, and the processes it left running (stopped by pm)."""

    def __init__(self, code, output="", timed_out=False, leftovers=()):
        self.code, self.output, self.timed_out, self.leftovers = code, output, timed_out, list(leftovers)


def leftover_processes(group, marker):
    """Processes still running from a command that has ended: those of its process group, and (where
    /proc tells) any that carry its marker in their environment, such as a daemon that left the group.
    Returns 'PID command' lines."""
    found = []
    if not os.path.isdir("/proc"):
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as handle:
                ours = marker in handle.read().split(b"\0")
            if not ours and os.getpgid(int(entry)) != group:
                continue
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                found.append("%s %s" % (entry, handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()))
        except (OSError, ProcessLookupError):
            continue
    return found


LEFTOVER_GRACE = 2.0


def stop_leftovers(leftovers):
    """SIGTERM, a second to go, then SIGKILL."""
    pids = [int(line.split()[0]) for line in leftovers]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.time() + 1
        while sig == signal.SIGTERM and time.time() < deadline and any(os.path.exists("/proc/%d" % p) for p in pids):
            time.sleep(0.05)


def ask(command, timeout, environ=None, data=None):
    """A short question to a program (its version, a listing, an environment dump): its output as bytes,
    or None when it cannot start, fails, or takes over timeout seconds. stdin is data, else nothing;
    stderr is dropped. Work worth a log goes through run_command."""
    import subprocess
    given = {"input": data} if data is not None else {"stdin": subprocess.DEVNULL}
    try:
        proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=environ,
                              timeout=timeout, **given)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def run_command(command, log_path, cwd=None, environ=None, timeout=None, echo=False, heartbeat=None,
                capture=True):
    """The one way pm runs a command (conda, package managers, tests): in a process group of its own,
    stdin closed, output appended to log_path as it comes (`tail -f` shows it) and echoed to stderr
    with echo; a line every STILL_RUNNING_SECONDS naming heartbeat while it lasts; the whole group
    killed at timeout seconds and on any exception (Ctrl-C, a full disk); processes it leaves
    running when it ends are named in the log and stopped. Returns a CommandRun."""
    import subprocess
    import threading
    run_id = "%d-%s" % (os.getpid(), os.urandom(6).hex())
    environ = dict(os.environ if environ is None else environ, PM_RUN_ID=run_id)
    started, finished, timed_out, proc = time.time(), threading.Event(), [], None

    def watch():
        next_note = started + STILL_RUNNING_SECONDS
        while True:
            ends = ([next_note] if heartbeat else []) + ([started + timeout] if timeout else [])
            if not ends or finished.wait(max(0.0, min(ends) - time.time())):
                return
            now = time.time()
            if timeout and now >= started + timeout:
                timed_out.append(now)
                kill_group(proc.pid)
                return
            if heartbeat and now >= next_note:
                say("    ... %s still running after %d s (output: %s)" % (heartbeat, now - started, log_path))
                next_note += STILL_RUNNING_SECONDS

    marker, leftovers = ("PM_RUN_ID=" + run_id).encode(), []

    def reap():
        """Once the command ends, stop what it left running: a daemon would hold its output open. What
        ends by itself within LEFTOVER_GRACE seconds (a multiprocessing helper) is no leftover."""
        proc.wait()
        deadline = time.time() + LEFTOVER_GRACE
        found = leftover_processes(proc.pid, marker)
        while found and time.time() < deadline:
            time.sleep(0.05)
            found = leftover_processes(proc.pid, marker)
        leftovers.extend(found)
        stop_leftovers(leftovers)

    lines = []
    try:  # from before the child starts: a Ctrl-C at any moment stops what it started
        try:
            proc = subprocess.Popen(command, cwd=cwd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            with append_private(log_path) as log:
                log.write("cannot start: %s\n" % exc)
            return CommandRun(None, str(exc))
        threading.Thread(target=watch, daemon=True).start()
        reaper = threading.Thread(target=reap, daemon=True)
        reaper.start()
        with append_private(log_path) as log, proc.stdout:
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace")
                if capture:
                    lines.append(line)
                log.write(line)
                log.flush()
                if echo:
                    sys.stderr.write("    " + line)
            code = proc.wait()
            reaper.join()
            if timed_out:
                log.write("\npm: timeout after %s s\n" % timeout)
            if leftovers:
                log.write("\npm: the command left %d process%s running; pm stopped them:\n%s\n"
                          % (len(leftovers), "es" * (len(leftovers) > 1), "\n".join(leftovers)))
    except BaseException:
        if proc is None:  # cut off while the child started: it may run already, known by its marker
            stop_leftovers(leftover_processes(-1, marker))
        else:
            kill_group(proc.pid)
            proc.wait()
            stop_leftovers(leftover_processes(proc.pid, marker))
        raise
    finally:
        finished.set()
    return CommandRun(code, "".join(lines), bool(timed_out), leftovers)


# == Package managers =========================================================
# Sections of INI files (the original tool's format): name, exec, search, install,
# install_version, result_fmt; %e exec, %p package, %v version, %s search expression, %% a '%'.
# Built-ins below; the store's config/package-managers.ini and --pck-mgr-configs add or override.


# conda name -> PyPI name, only where the two differ beyond case and punctuation.
PIP_RENAMES = {"pyqt": "PyQt5", "pyqt5-sip": "PyQt5-sip", "pyqtwebengine": "PyQtWebEngine",
               "python-build": "build", "dask-core": "dask", "pytables": "tables", "matplotlib-base": "matplotlib",
               "pytorch": "torch", "msgpack-python": "msgpack", "py-opencv": "opencv-python",
               "opencv": "opencv-python", "numpy-base": "numpy", "python-tzdata": "tzdata",
               "python-fastjsonschema": "fastjsonschema", "python-gmsh": "gmsh", "python-kaleido": "kaleido",
               "python-lmdb": "lmdb", "python-xxhash": "xxhash", "python-flatbuffers": "flatbuffers",
               "python-graphviz": "graphviz", "brotli-python": "Brotli", "ruamel_yaml": "ruamel.yaml",
               "py-xgboost": "xgboost", "py-lief": "lief", "tensorflow-base": "tensorflow",
               "importlib_resources": "importlib-resources", "prompt_toolkit": "prompt-toolkit",
               "typing_extensions": "typing-extensions", "geopandas-base": "geopandas", "nbconvert-core": "nbconvert",
               "pyct-core": "pyct", "cachecontrol-with-filecache": "CacheControl", "python-installer": "installer",
               "antlr-python-runtime": "antlr4-python3-runtime", "python-stratify": "stratify",
               "geoviews-core": "geoviews", "googleapis-common-protos-grpc": "googleapis-common-protos",
               "jupyterhub-base": "jupyterhub", "pyarrow-core": "pyarrow", "python-duckdb": "duckdb",
               "redis-py": "redis", "qscintilla2": "QScintilla"}


PIP_SEARCH = ("{ %e index versions %s 2>/dev/null || %e install --no-deps %s== 2>&1; } | awk -v n=%s "
              "'/^Available versions:/ {sub(/^Available versions: /, \"\"); k = split($0, v, \", \"); "
              "for (i = 1; i <= k; i++) print n, v[i]} "
              "/from versions:/ {s = $0; sub(/.*from versions: /, \"\", s); sub(/\\).*/, \"\", s); "
              "k = split(s, v, \", \"); for (i = 1; i <= k; i++) if (v[i] != \"none\") print n, v[i]}'")
APT_SEARCH = ("{ echo %s; apt-cache search --names-only -- %s | cut -d' ' -f1 | head -n 60; } | "
              "xargs -r apt-cache show --no-all-versions 2>/dev/null | "
              "awk '/^Package:/ {p = $2} /^Version:/ {print p, $2}'")


def pip_section(key, exec_name, note):
    return ("[%s]\nname = %s (into the software's own virtual environment)\nexec = %s\nsearch = %s\n"
            "result_fmt = %%p %%v\ninstall = %%e install %%p\ninstall_version = %%e install %%p==%%v\n\n"
            % (key, note, exec_name, PIP_SEARCH))


BUILTIN_MANAGERS = """
[apt]
name = APT (Debian, Ubuntu)
exec = apt-get
search = APT_SEARCH
result_fmt = %p %v
install = %e install -y --no-install-recommends %p
install_version = %e install -y --no-install-recommends %p=%v

[apt-get]
name = apt-get (Debian, Ubuntu)
exec = apt-get
search = APT_SEARCH
result_fmt = %p %v
install = %e install -y --no-install-recommends %p
install_version = %e install -y --no-install-recommends %p=%v

[aptitude]
name = Aptitude (Debian, Ubuntu)
exec = aptitude
search = %e search --disable-columns -F '%%p %%V' -- %s
result_fmt = %p %v
install = %e -y install %p
install_version = %e -y install %p=%v

[dnf]
name = DNF (Fedora, RHEL 8+)
exec = dnf
search = %e repoquery -q --qf '%%{name} %%{version}\\n' '*'%s'*'
result_fmt = %p %v
install = %e install -y %p
install_version = %e install -y %p-%v

[yum]
name = YUM (RHEL/CentOS 7)
exec = yum
search = repoquery -q --qf '%%{name} %%{version}' '*'%s'*'
result_fmt = %p %v
install = %e install -y %p
install_version = %e install -y %p-%v

[zypper]
name = Zypper (openSUSE, SLES)
exec = zypper
search = %e --quiet search -s %s | awk -F'|' 'NF > 4 && $3 ~ /package/ {gsub(/ /, "", $2); gsub(/ /, "", $4); print $2, $4}'
result_fmt = %p %v
install = %e --non-interactive install %p
install_version = %e --non-interactive install %p=%v

[pacman]
name = Pacman (Arch Linux)
exec = pacman
search = %e -Ss -- %s | awk '/^[^ ]/ {sub(/^[^\\/]*\\//, "", $1); print $1, $2}'
result_fmt = %p %v
install = %e -S --noconfirm %p

[brew]
name = Homebrew (macOS, Linux)
exec = brew
search = %e search -- %s 2>/dev/null | grep -v '^==>' | tr ' ' '\\n' | grep -v '^$'
result_fmt = %p
install = %e install %p
install_version = %e install %p@%v

[spack]
name = Spack (HPC)
exec = spack
search = %e list %s | tr -s ' ' '\\n'
result_fmt = %p
install = %e install %p
install_version = %e install %p@%v

""".replace("APT_SEARCH", APT_SEARCH) + "".join(pip_section(k, e, n) for k, e, n in [
    ("pip", "pip", "pip"), ("pip-root", "pip", "pip"), ("pip2", "pip2", "pip2"), ("pip2-root", "pip2", "pip2"),
    ("pip3", "pip3", "pip3"), ("pip3-root", "pip3", "pip3")])


# conda name -> other managers' names, for common scientific packages
NAME_MAP = {
    "zlib": {"apt": "zlib1g-dev", "rpm": "zlib-devel", "brew": "zlib", "spack": "zlib", "pacman": "zlib"},
    "libzlib": {"apt": "zlib1g-dev", "rpm": "zlib-devel", "brew": "zlib", "spack": "zlib", "pacman": "zlib"},
    "bzip2": {"apt": "libbz2-dev", "rpm": "bzip2-devel", "brew": "bzip2", "spack": "bzip2"},
    "xz": {"apt": "liblzma-dev", "rpm": "xz-devel", "brew": "xz", "spack": "xz"},
    "zstd": {"apt": "libzstd-dev", "rpm": "libzstd-devel", "brew": "zstd", "spack": "zstd"},
    "lz4-c": {"apt": "liblz4-dev", "rpm": "lz4-devel", "brew": "lz4", "spack": "lz4"},
    "openssl": {"apt": "libssl-dev", "rpm": "openssl-devel", "brew": "openssl@3", "spack": "openssl"},
    "libffi": {"apt": "libffi-dev", "rpm": "libffi-devel", "brew": "libffi", "spack": "libffi"},
    "libcurl": {"apt": "libcurl4-openssl-dev", "rpm": "libcurl-devel", "brew": "curl", "spack": "curl"},
    "libpng": {"apt": "libpng-dev", "rpm": "libpng-devel", "brew": "libpng", "spack": "libpng"},
    "libjpeg-turbo": {"apt": "libjpeg-dev", "rpm": "libjpeg-turbo-devel", "brew": "jpeg-turbo", "spack": "libjpeg-turbo"},
    "jpeg": {"apt": "libjpeg-dev", "rpm": "libjpeg-turbo-devel", "brew": "jpeg", "spack": "libjpeg"},
    "libtiff": {"apt": "libtiff-dev", "rpm": "libtiff-devel", "brew": "libtiff", "spack": "libtiff"},
    "freetype": {"apt": "libfreetype-dev", "rpm": "freetype-devel", "brew": "freetype", "spack": "freetype"},
    "libxml2": {"apt": "libxml2-dev", "rpm": "libxml2-devel", "brew": "libxml2", "spack": "libxml2"},
    "sqlite": {"apt": "libsqlite3-dev", "rpm": "sqlite-devel", "brew": "sqlite", "spack": "sqlite"},
    "hdf5": {"apt": "libhdf5-dev", "rpm": "hdf5-devel", "brew": "hdf5", "spack": "hdf5"},
    "libnetcdf": {"apt": "libnetcdf-dev", "rpm": "netcdf-devel", "brew": "netcdf", "spack": "netcdf-c"},
    "netcdf4": {"apt": "python3-netcdf4", "rpm": "python3-netcdf4", "spack": "py-netcdf4"},
    "fftw": {"apt": "libfftw3-dev", "rpm": "fftw-devel", "brew": "fftw", "spack": "fftw"},
    "gsl": {"apt": "libgsl-dev", "rpm": "gsl-devel", "brew": "gsl", "spack": "gsl"},
    "openblas": {"apt": "libopenblas-dev", "rpm": "openblas-devel", "brew": "openblas", "spack": "openblas"},
    "libopenblas": {"apt": "libopenblas-dev", "rpm": "openblas-devel", "brew": "openblas", "spack": "openblas"},
    "libblas": {"apt": "libblas-dev", "rpm": "blas-devel", "brew": "openblas", "spack": "openblas"},
    "liblapack": {"apt": "liblapack-dev", "rpm": "lapack-devel", "brew": "lapack", "spack": "netlib-lapack"},
    "boost": {"apt": "libboost-all-dev", "rpm": "boost-devel", "brew": "boost", "spack": "boost"},
    "boost-cpp": {"apt": "libboost-all-dev", "rpm": "boost-devel", "brew": "boost", "spack": "boost"},
    "eigen": {"apt": "libeigen3-dev", "rpm": "eigen3-devel", "brew": "eigen", "spack": "eigen"},
    "gdal": {"apt": "gdal-bin", "rpm": "gdal", "brew": "gdal", "spack": "gdal"},
    "libgdal": {"apt": "libgdal-dev", "rpm": "gdal-devel", "brew": "gdal", "spack": "gdal"},
    "proj": {"apt": "libproj-dev", "rpm": "proj-devel", "brew": "proj", "spack": "proj"},
    "geos": {"apt": "libgeos-dev", "rpm": "geos-devel", "brew": "geos", "spack": "geos"},
    "cairo": {"apt": "libcairo2-dev", "rpm": "cairo-devel", "brew": "cairo", "spack": "cairo"},
    "pkg-config": {"apt": "pkg-config", "rpm": "pkgconf-pkg-config", "brew": "pkg-config", "spack": "pkgconf"},
    "make": {"apt": "make", "rpm": "make", "brew": "make", "spack": "gmake"},
    "python-build": {"apt": "python3-build", "rpm": "python3-build", "spack": "py-build"},
    "dask-core": {"apt": "python3-dask", "rpm": "python3-dask", "spack": "py-dask"},
    "cmake": {"apt": "cmake", "rpm": "cmake", "brew": "cmake", "spack": "cmake"},
    "gcc": {"apt": "gcc", "rpm": "gcc", "brew": "gcc", "spack": "gcc"},
    "compilers": {"apt": "build-essential", "rpm": "gcc-c++", "brew": "gcc", "spack": "gcc"},
    "c-compiler": {"apt": "gcc", "rpm": "gcc", "brew": "gcc", "spack": "gcc"},
    "cxx-compiler": {"apt": "g++", "rpm": "gcc-c++", "brew": "gcc", "spack": "gcc"},
    "fortran-compiler": {"apt": "gfortran", "rpm": "gcc-gfortran", "brew": "gcc", "spack": "gcc"},
    "gfortran": {"apt": "gfortran", "rpm": "gcc-gfortran", "brew": "gcc", "spack": "gcc"},
    "openmpi": {"apt": "libopenmpi-dev", "rpm": "openmpi-devel", "brew": "open-mpi", "spack": "openmpi"},
    "mpich": {"apt": "libmpich-dev", "rpm": "mpich-devel", "brew": "mpich", "spack": "mpich"},
    "r-base": {"apt": "r-base", "rpm": "R", "brew": "r", "spack": "r"},
    "python": {"apt": "python3", "rpm": "python3", "brew": "python", "spack": "python"},
    "pip": {"apt": "python3-pip", "rpm": "python3-pip", "brew": "python", "spack": "py-pip"},
    "git": {"apt": "git", "rpm": "git", "brew": "git", "spack": "git"},
    "nodejs": {"apt": "nodejs", "rpm": "nodejs", "brew": "node", "spack": "node-js"},
    "pytables": {"apt": "python3-tables", "rpm": "python3-tables", "spack": "py-tables"},
    "matplotlib-base": {"apt": "python3-matplotlib", "rpm": "python3-matplotlib",
                        "spack": "py-matplotlib"},
    "pytorch": {"apt": "python3-torch", "spack": "py-torch"},
    "scikit-learn": {"apt": "python3-sklearn", "rpm": "python3-scikit-learn",
                     "spack": "py-scikit-learn"},
    "pyyaml": {"apt": "python3-yaml", "rpm": "python3-pyyaml", "spack": "py-pyyaml"},
    "msgpack-python": {"apt": "python3-msgpack", "spack": "py-msgpack"},
    "scikit-image": {"apt": "python3-skimage", "rpm": "python3-scikit-image",
                     "spack": "py-scikit-image"},
    "pillow": {"apt": "python3-pil", "rpm": "python3-pillow", "spack": "py-pillow"},
    "beautifulsoup4": {"apt": "python3-bs4", "rpm": "python3-beautifulsoup4",
                       "spack": "py-beautifulsoup4"},
    "opencv": {"apt": "python3-opencv", "rpm": "python3-opencv", "spack": "opencv"},
}


class Family(object):
    """What pm knows of a family of package managers beyond the commands of their sections:
    keys: the section keys and commands of the family (versioned: also a key that starts with one, or
      a command of one with a version: pip3, pip3.11, pip-root);
    variants: the names a conda package often has there, in the order tried (%s: its name without
      conda's r-/python-/py- prefix); python_form, r_form: the one tried first for a conda 'python-x',
      'r-x'; search_variants: each variant is searched for (else only the name without the prefix);
    python_prefixes: how its Python packages are named, where it mixes them with libraries (a Python
      requirement then matches only those: 'panel' is not 'libpanel-dev');
    needs_root: it installs system packages; renames: its curated names (conda -> its own), else
      NAME_MAP's column of the family;
    pip_like: the base's Python distributions go to it, in one pinned resolve into the software's venv."""

    def __init__(self, keys=(), versioned=False, variants=(), python_form=None, r_form=None,
                 search_variants=False, python_prefixes=(), needs_root=False, renames=None, pip_like=False):
        self.keys, self.versioned, self.variants = keys, versioned, variants
        self.python_form, self.r_form, self.search_variants = python_form, r_form, search_variants
        self.python_prefixes, self.needs_root, self.renames, self.pip_like = python_prefixes, needs_root, renames, pip_like


SYSTEM_PYTHON = ("python3-", "python-", "py3-")
FAMILIES = {
    "pip": Family(("pip",), versioned=True, variants=("%s",), search_variants=True, renames=PIP_RENAMES,
                  pip_like=True),
    "apt": Family(("apt", "apt-get", "aptitude"), variants=("lib%s-dev", "lib%s", "%s-dev", "python3-%s", "r-cran-%s"),
                  python_form="python3-%s", r_form="r-cran-%s", python_prefixes=SYSTEM_PYTHON, needs_root=True),
    "rpm": Family(("dnf", "yum", "zypper"), variants=("%s-devel", "lib%s-devel", "python3-%s", "R-%s"),
                  python_form="python3-%s", python_prefixes=SYSTEM_PYTHON, needs_root=True),
    "pacman": Family(("pacman",), python_prefixes=SYSTEM_PYTHON, needs_root=True),
    "brew": Family(("brew",), search_variants=True),
    "spack": Family(("spack",), variants=("py-%s", "r-%s"), search_variants=True),
}
OTHER_FAMILY = Family()  # a section of no family above (a site's own manager): its key is its family


def manager_family(key, exec_name):
    """The family (a key of FAMILIES, else the section's own key) of a section and its command."""
    program = os.path.basename(exec_name or "")
    for name, family in FAMILIES.items():
        if family.versioned and any(key.startswith(k) or re.match(r"^%s[0-9.]*$" % re.escape(k), program)
                                    for k in family.keys):
            return name
    by_key = dict((k, name) for name, family in FAMILIES.items() for k in family.keys)
    return by_key.get(key, by_key.get(program, key))


def family_of(manager):
    """The Family of a PackageManager (OTHER_FAMILY for a site's own)."""
    return FAMILIES.get(manager.family, OTHER_FAMILY)


def mapped_name(conda_name, manager):
    """The curated name of a conda package under a manager: its family's renames, else NAME_MAP's column."""
    renames = family_of(manager).renames
    return renames.get(conda_name) if renames is not None else NAME_MAP.get(conda_name, {}).get(manager.family)


class PackageManager(object):
    """One configured package manager: how to search, parse results and install."""

    REQUIRED = ("name", "search", "install", "result_fmt")

    def __init__(self, key, values, source):
        self.key, self.source = key, source
        for option in self.REQUIRED:
            if not values.get(option, "").strip():
                raise PmError("no '%s' in [%s] of %s" % (option, key, source), "add '%s = ...' to that section" % option)
        self.name = values["name"]
        self.exec = values.get("exec", "").strip() or values["name"]
        self.search_cmd = values["search"]
        if self.search_cmd.strip() in BROKEN_ORIGINAL_SEARCHES:
            self.search_cmd = builtin_values(BROKEN_ORIGINAL_SEARCHES[self.search_cmd.strip()])["search"]
            self.result_fmt = "%p %v"
        else:
            self.result_fmt = values["result_fmt"]
        self.install_cmd = values["install"]
        self.install_version_cmd = values.get("install_version", "").strip() or None
        if "%p" not in self.result_fmt:
            raise PmError("result_fmt in [%s] of %s has no %%p" % (key, source), "describe a search line, e.g. %p %v")
        if self.install_version_cmd and ("%p" not in self.install_version_cmd or "%v" not in self.install_version_cmd):
            raise PmError("install_version in [%s] of %s needs both %%p and %%v" % (key, source),
                          "e.g. install_version = %e install %p==%v")
        self.family = manager_family(key, self.exec.split()[0] if self.exec.split() else "")
        try:
            self.pattern = result_regex(self.result_fmt)
        except re.error as exc:
            raise PmError("result_fmt in [%s] of %s is not a regexp: %s" % (key, source, exc),
                          "write a Python regexp in which %p and %v stand for the package and its version")

    def available(self):
        import shutil
        return bool(shutil.which(self.exec.split()[0])) if self.exec.split() else False

    def command(self, template, package=None, version=None, expr=None, exec_override=None):
        """Fill in %e, %p, %v, %s (values shell-quoted) and %% in a template."""
        values = {"e": exec_override or self.exec, "p": shlex.quote(package or ""),
                  "v": shlex.quote(version or ""), "s": shlex.quote(expr or ""), "%": "%"}
        text = re.sub(r"%([epvs%])", lambda m: values[m.group(1)], template)
        if "%p" not in template and package is not None:
            text += " " + values["p"]
        if "%s" not in template and expr is not None:
            text += " " + values["s"]
        return text

    def search(self, expr, log_path=None):
        """Run the search through the one runner (logged to log_path, its whole process group stopped
        after SEARCH_SECONDS); return [(package, version or None)] from stdout lines matching result_fmt."""
        command = self.command(self.search_cmd, expr=expr)
        log_path = log_path or os.devnull
        with append_private(log_path) as log:
            log.write("%s search: %s\n" % (time.strftime("%H:%M:%S"), command))
        stderr_to = shlex.quote(log_path)
        run = run_command(["/bin/sh", "-c", "{ %s\n} 2>>%s" % (command, stderr_to)], log_path, timeout=SEARCH_SECONDS)
        if run.timed_out:
            say("note: %s search for %s took over %d s; counted as nothing found" % (self.key, expr, SEARCH_SECONDS))
            return []
        return parse_search_output(run.output, self.pattern)


SEARCH_SECONDS = 300


def result_regex(fmt):
    """result_fmt as platform-migrator 1.1.0 documents it: a Python regexp in which %p and %v stand
    for the package and its version ('(' and ')' are literal, as they were there); a space matches
    any run of blanks. The whole (stripped) search line must match."""
    pattern = fmt.strip().replace("(", r"\(").replace(")", r"\)").replace(" ", r"\s+")
    return re.compile("^" + pattern.replace("%p", r"(?P<pck>\S+)").replace("%v", r"(?P<ver>\S+)") + "$")


def parse_search_output(text, pattern):
    found = []
    for line in text.splitlines():
        match = pattern.match(line.strip())
        if match:
            item = (match.group("pck"), match.groupdict().get("ver"))
            if item not in found:
                found.append(item)
    return found


def builtin_sections():
    """The built-in package-manager sections: key -> values (parsed once)."""
    import configparser
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(BUILTIN_MANAGERS, source="<built-in>")
    return dict((key, dict(parser[key])) for key in parser.sections())


def builtin_values(key):
    return dict(builtin_sections()[key])


def load_managers(store, paths=()):
    """Built-ins, then the store's config/package-managers.ini, then each file given; later wins."""
    import configparser
    sections = dict((key, (dict(values), "<built-in>")) for key, values in builtin_sections().items())
    user_file = store.managers_config
    for path in ([user_file] if os.path.isfile(user_file) else []) + list(paths):
        if not os.path.isfile(path):
            raise PmError("package-manager configuration %s does not exist" % path, "pass an existing INI file")
        parser = configparser.ConfigParser(interpolation=None)
        read_ini(parser, path)
        as_shipped = []
        for key in parser.sections():
            if key in sections and is_original_shipped_section(parser[key]):
                as_shipped.append(key)  # the built-in of that name works where the shipped one no longer does
            else:
                sections[key] = (dict(parser[key]), path)
        if as_shipped:
            say("note: %s holds platform-migrator 1.1.0's sections %s as it shipped them, which no longer work "
                "(pip search is off, apt-get versions are no package names): pm uses its own of those names; "
                "edit a section to have yours used" % (path, ", ".join(as_shipped)))
    return dict((key, PackageManager(key, values, source)) for key, (values, source) in sections.items())


# == Resolver =================================================================
# What a migration asks for: the levels conda tries (exact builds, builds stripped, direct
# requirements), and for the package managers each requirement's candidates and the choice made.


def direct_specs(min_deps, env_file):
    """Direct requirements as specs: min-deps.json records (name=version), else env.yml's names."""
    specs = []
    for record in min_deps or []:
        if isinstance(record, dict) and record.get("name"):
            specs.append("%s=%s" % (record["name"], record["version"]) if record.get("version") else record["name"])
    return without_conda_itself(specs) or [spec_name(s) for s in without_conda_itself(env_file.dependencies)]


def migration_levels(env_file, min_deps):
    """The environment files to try, in order: (level name, EnvFile)."""
    exact = without_conda_itself(env_file.dependencies)
    levels = [("exact", exact), ("no-builds", [strip_build(s) for s in exact]),
              ("direct", direct_specs(min_deps, env_file))]
    out, seen = [], []
    for name, deps in levels:
        if deps not in seen:
            seen.append(deps)
            out.append((name, EnvFile(env_file.name, env_file.channels, deps, env_file.pip, env_file.variables)))
    return out


# Conda packages that carry Python but install no distribution pip knows of, whatever their metadata.
NOT_DISTRIBUTIONS = frozenset(["python", "python_abi", "python-gil", "python-freethreading", "cpython", "pypy",
                               "pypy3.9", "pypy3.10", "backports"])


def python_build(build):
    """True for a build string conda gives Python packages: 'py312h...', 'pyhd8ed1ab_0', 'py_0',
    'pymin310_h...', 'np2py312h...', 'cpu_py312h...' (a hash is hex, so 'py' is never part of one)."""
    return bool(re.search(r"py(min)?(\d|h[0-9a-f]|_)", build or ""))


def conda_pypi_name(name, build="", depends=None, noarch=None, channel=None):
    """The PyPI name of a conda package that installs a Python distribution, else None. Decided from
    conda's own metadata: pip's own entries (channel 'pypi'), 'noarch: python', a Python build string,
    or (when its dependencies are known) a dependency on python with a Python package's name
    ('petsc4py', 'python-gmsh'); never from a name alone ('hdf5' is a C library, 'glib' has tools)."""
    if not name or name in NOT_DISTRIBUTIONS or name in CONDA_OWN_PACKAGES or name.startswith("_"):
        return None
    depends_on_python = depends is not None and any(str(d).split()[0] == "python" for d in depends if str(d).strip())
    if channel == "pypi" or str(build or "").startswith("pypi") or noarch == "python" or python_build(build) or \
            (depends_on_python and re.search(r"(^py|4py$|^python-)", name)):
        return PIP_RENAMES.get(name, name)
    return None


class Requirement(object):
    """A direct requirement from the base machine: conda name, version, and whether it is a
    Python package (conda_pypi_name: from its build string), which steers relaxed matches."""

    def __init__(self, name, version=None, build="", python=None, channel=None):
        self.name, self.version = name, version
        self.python = python if python is not None else conda_pypi_name(name, build, channel=channel) is not None

    def label(self):
        return "%s %s" % (self.name, self.version) if self.version else self.name


class Candidate(object):
    """A package some manager offers for a requirement, and why it matched."""

    def __init__(self, manager, package, versions, why, rank):
        self.manager, self.package, self.versions, self.why, self.rank = manager, package, versions, why, rank

    def best_version(self, wanted):
        known = [v for v in self.versions if v]
        if not known:
            return None
        return sorted(known, key=lambda v: version_distance(v, wanted))[0]

    def choice(self, wanted):
        """This candidate as what to install: its version closest to the base machine's."""
        return Choice(self.manager.key, self.package, self.best_version(wanted))


def version_parts(version):
    version = re.sub(r"^\d+:", "", version or "")      # Debian epoch
    version = re.sub(r"-[^-]*$", "", version) if "-" in version else version  # package revision
    return list(PROBE.version_numbers(version))


def version_distance(version, wanted):
    """Sort key: equal first, then the longest common prefix, then the smallest gap."""
    have, want = version_parts(version), version_parts(wanted)
    if not want:
        return (0, 0, [-p for p in have])
    common = 0
    while common < min(len(have), len(want)) and have[common] == want[common]:
        common += 1
    if common == len(want) == len(have):
        return (0, 0, [])
    gap = abs(have[common] - want[common]) if common < min(len(have), len(want)) else 0
    return (1, -common, [gap])


def requirements_of(min_deps, env_file):
    """Direct requirements: min-deps.json records (else env.yml's conda entries), then what pip
    installed into the environment (env.yml's pip: list; conda's records do not hold it)."""
    reqs = []
    for record in min_deps or []:
        if isinstance(record, dict) and record.get("name"):
            reqs.append(Requirement(record["name"], record.get("version"), str(record.get("build_string") or ""),
                                    channel=record.get("channel")))
    if not reqs:
        for spec in env_file.dependencies:
            parts = spec.split("=")
            reqs.append(Requirement(spec_name(spec), parts[1] if len(parts) > 1 and parts[1] else None))
    known = set(pip_name(r.name) for r in reqs)
    for spec in env_file.pip:
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?:==\s*([A-Za-z0-9.+!_-]+))?\s*$", spec)
        if not match:
            say("note: the pip entry %r is not NAME==VERSION; it is left out (install it by hand)" % spec)
        elif pip_name(match.group(1)) not in known:
            known.add(pip_name(match.group(1)))
            reqs.append(Requirement(match.group(1), match.group(2), python=True))
    safe = []
    for req in reqs:
        if req.name in CONDA_OWN_PACKAGES or req.name.startswith("_"):
            continue
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._+-]*\Z", req.name):
            say("warning: ignoring the requirement %r: not a package name" % req.name)
            continue
        safe.append(req)
    return safe


def pip_name(name):
    """A Python project name as PyPI compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def name_variants(name, family):
    """Names a package often has under a family of managers (FAMILIES: its variants; conda 'r-x' and
    'python-x' lose their prefix, and are tried first as the family names R and Python packages)."""
    base = name
    for prefix in ("r-", "python-", "py-"):
        if name.startswith(prefix) and len(name) > len(prefix):
            base = name[len(prefix):]
    base = base.replace("_", "-").lower()
    entry = FAMILIES.get(family, OTHER_FAMILY)
    first = [entry.python_form] if entry.python_form and name.startswith(("python-", "py-")) else []
    first += [entry.r_form] if entry.r_form and name.startswith("r-") else []
    variants = [form % base for form in first + list(entry.variants)]
    unique = []
    for variant in variants:
        if variant != name and variant not in unique:
            unique.append(variant)
    return unique


AFFIX_PREFIXES = ("", "lib", "python3-", "python-", "py3-", "py-", "r-cran-", "r-")
AFFIX_SUFFIX = r"^(\d+[a-z]?)?(-(dev|devel|bin|tools|utils|libs|common|static|headers|runtime|\d+))*$"


def name_inside(name, package):
    """True when package is name with a packaging affix around it: 'zlib' in 'zlib1g-dev' or
    'python3-numpy', not in 'libcoq-zlib' or 'zlib-server'."""
    name, package = name.lower().replace("_", "-"), package.lower()
    for prefix in AFFIX_PREFIXES:
        if package.startswith(prefix + name) and re.match(AFFIX_SUFFIX, package[len(prefix + name):]):
            return True
    return False


def search_base(name):
    """The name without conda's 'r-'/'python-'/'py-' prefix, with '-' for '_' ('email_validator')."""
    return (name.split("-", 1)[1] if re.match(r"^(r|python|py)-.", name) else name).replace("_", "-")


def fits_python(req, manager, package):
    """A Python requirement matches only Python packages of system managers ('panel' is not 'libpanel-dev'):
    those of families that name them with a prefix (FAMILIES' python_prefixes)."""
    prefixes = family_of(manager).python_prefixes
    if not req.python or not prefixes:
        return True
    package = package.lower()
    return package.startswith(prefixes) or package == search_base(req.name) + "3"


def find_candidates(req, managers, log_path=None):
    """Search strictly (exact name), then relaxed (naming patterns, the name inside longer names), and the
    mapping table; rank the curated mapping first, then exact, pattern, inside; then the closest version."""
    candidates = []
    for manager in managers:
        found = {}
        searches = [req.name]
        mapped = mapped_name(req.name, manager)
        if mapped:
            searches.append(mapped)
        variants = name_variants(req.name, manager.family)
        if family_of(manager).search_variants:
            searches += variants
        elif search_base(req.name) != req.name:
            searches.append(search_base(req.name))
        searched = []
        for expr in searches:
            if expr in searched:  # the mapping or a variant can repeat the name
                continue
            searched.append(expr)
            for package, version in manager.search(expr, log_path):
                found.setdefault(package, []).append(version)
        for package, versions in found.items():
            if mapped and package.lower() == mapped.lower():
                why, rank = "mapping table (conda %s)" % req.name, 0
            elif not fits_python(req, manager, package):
                continue
            elif package.lower() == req.name.lower():
                why, rank = "exact name", 1
            elif package.lower() in variants:
                why, rank = "naming pattern", 2 + variants.index(package.lower()) / 100.0
            elif name_inside(req.name, package) or (req.name != search_base(req.name)
                                                    and name_inside(search_base(req.name), package)):
                why, rank = "name inside %s" % package, 3
            else:
                continue
            candidates.append(Candidate(manager, package, versions, why, rank))
    candidates.sort(key=lambda c: (c.rank, version_distance(c.best_version(req.version) or "", req.version or ""),
                                   len(c.package), c.package))
    return candidates[:12]


class Choice(object):
    """What to install for one requirement: a manager and package (and version), or skip."""

    def __init__(self, manager_key=None, package=None, version=None):
        self.manager_key, self.package, self.version = manager_key, package, version

    @classmethod
    def parse(cls, text, where):
        text = (text or "").strip()
        if text == "skip":
            return cls()
        match = re.match(r"^([A-Za-z0-9._-]+):([A-Za-z0-9][A-Za-z0-9._+@-]*)(?:=([A-Za-z0-9._+:~-]+))?$", text)
        if not match:
            raise PmError("%s: %r is not 'manager:package[=version]' or 'skip'" % (where, text),
                          "write e.g. \"apt:zlib1g-dev\" or \"pip:numpy=1.26.4\"")
        return cls(match.group(1), match.group(2), match.group(3))

    def to_text(self):
        if not self.manager_key:
            return "skip"
        return "%s:%s%s" % (self.manager_key, self.package, "=" + self.version if self.version else "")


def read_answers(path):
    if not path:
        return {}
    try:
        data = read_json(path)
    except (OSError, ValueError) as exc:
        raise PmError("cannot read the answers file %s: %s" % (path, exc), "give a JSON object: requirement -> choice")
    if not isinstance(data, dict):
        raise PmError("the answers file %s is not a JSON object" % path, "write {\"zlib\": \"apt:zlib1g-dev\", ...}")
    return dict((key, Choice.parse(value, "%s, %s" % (path, key))) for key, value in data.items())


# == Preflight ================================================================
# Before anything is written: can this machine run the bundle's binaries? pack recorded, per package
# (and for the software tree and the carried wheels), the highest GLIBC and GLIBCXX version its ELF
# files need and the x86-64 ISA level they are built for (the probe's ELF reader, BinaryNeeds); here
# they are compared with this machine's glibc, the libstdc++ the environment gets (the bundle's own
# when it carries one, else the system's) and the processor's flags. A bundle without that record
# (older ones) has its carried files read the same way once they are unpacked, before they are linked.
# A carried package that depends on __cuda (its record's depends, or constrains when a driver is
# present) is compared with the CUDA version of this machine's NVIDIA driver (libcuda.so.1 through
# ctypes); a package that depends on it and finds no driver is refused too: it cannot run here.

# x86-64 micro-architecture levels: the /proc/cpuinfo flags each adds (psABI; 'pni' is SSE3, 'abm' LZCNT)
ISA_FLAGS = ((2, ("cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3")),
             (3, ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave")),
             (4, ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")))
LIBSTDCXX_PACKAGES = ("libstdcxx-ng", "libstdcxx")


def cpu_isa_level(cpuinfo="/proc/cpuinfo"):
    """(level 1-4, the flags the next level lacks) of this x86-64 processor; (None, []) elsewhere."""
    import platform
    if platform.machine() not in ("x86_64", "AMD64"):
        return None, []
    try:
        with open(cpuinfo) as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), None)
    except OSError:
        flags = None
    if flags is None:
        return None, []
    level = 1
    for number, needed in ISA_FLAGS:
        lacking = [flag for flag in needed if flag not in flags]
        if lacking:
            return level, lacking
        level = number
    return level, []


def system_libstdcxx():
    """The path of the system's libstdc++.so.6: ldconfig's cache (as ctypes.util.find_library reads it),
    else the usual folders; None when there is none."""
    import glob
    for ldconfig in ("/sbin/ldconfig", "/usr/sbin/ldconfig", PROBE.which("ldconfig")):
        if ldconfig and os.path.isfile(ldconfig):
            listing = (ask([ldconfig, "-p"], 30) or b"").decode("utf-8", "replace")
            found = sorted(("64" not in name, path) for name, _, path in (
                line.strip().partition(" => ") for line in listing.splitlines())
                if name.startswith("libstdc++.so.6 ") and os.path.isfile(path))  # 64-bit first
            if found:
                return found[0][1]
            break
    for pattern in ("/lib64/libstdc++.so.6", "/usr/lib64/libstdc++.so.6", "/usr/lib/*-linux-gnu*/libstdc++.so.6",
                    "/lib/*-linux-gnu*/libstdc++.so.6", "/usr/lib/libstdc++.so.6"):
        for path in sorted(glob.glob(pattern)):
            return path
    return None


CUDA_DRIVER = "libcuda.so.1"  # the NVIDIA driver's library: cuDriverGetVersion says which CUDA it supports


def cuda_driver_version(library=CUDA_DRIVER):
    """The CUDA version this machine's NVIDIA driver supports ('12.2' for 12020), through ctypes; None
    when no driver loads or it does not answer."""
    import ctypes
    try:
        get_version = ctypes.CDLL(library).cuDriverGetVersion
        found = ctypes.c_int(0)
        if get_version(ctypes.byref(found)) != 0 or found.value <= 0:
            return None
    except (OSError, AttributeError):
        return None
    return "%d.%d" % (found.value // 1000, found.value % 1000 // 10)


def cuda_here():
    """(the CUDA version this machine offers or None, what says so): CONDA_OVERRIDE_CUDA when it is set, as
    conda reads it (empty: no CUDA; what a login node without GPUs sets to its GPU nodes' version), else the
    NVIDIA driver's."""
    if "CONDA_OVERRIDE_CUDA" in os.environ:
        value = os.environ["CONDA_OVERRIDE_CUDA"].strip()
        return (value if re.match(r"^[0-9]{1,4}(\.[0-9]{1,4}){0,2}$", value) else None), "CONDA_OVERRIDE_CUDA"
    return cuda_driver_version(), CUDA_DRIVER


def cuda_term_met(term, version):
    """Whether a CUDA version meets one term of a conda version spec ('>=11.2', '<13', '12.*', '=12');
    a term pm cannot read is not held against the machine."""
    found = re.match(r"^(>=|<=|==|!=|>|<|=)?([0-9]+(?:\.[0-9]+)*)(\.?\*)?$", term.strip())
    if not found:
        return True
    operator, wanted, star = found.groups()
    have, want = version_parts(version), version_parts(wanted)
    width = max(len(have), len(want))
    have_padded, want_padded = have + [0] * (width - len(have)), want + [0] * (width - len(want))
    if operator in (None, "=") or (star and operator in ("==", "!=")):
        prefix = have[:len(want)] + [0] * (len(want) - len(have)) == want
        return not prefix if operator == "!=" else prefix
    return {">=": have_padded >= want_padded, "<=": have_padded <= want_padded, ">": have_padded > want_padded,
            "<": have_padded < want_padded, "==": have_padded == want_padded,
            "!=": have_padded != want_padded}[operator]


def cuda_spec_met(spec, version):
    """Whether a CUDA version meets a '__cuda ...' match spec ('|' between alternatives, ',' within)."""
    rest = spec.strip()[len("__cuda"):].strip()
    return not rest or any(all(cuda_term_met(term, version) for term in alternative.split(","))
                           for alternative in rest.split("|"))


def carried_records(bundle):
    """The package records of the carried channel's repodata (channel/SUBDIR/repodata.json), where the
    bundle carries one."""
    for member in sorted(bundle.manifest.members or {}):
        if re.match(r"^channel/[^/]+/repodata\.json$", member):
            try:
                repodata = bundle.read_json(member)
            except (KeyError, ValueError, PmError):
                continue
            for key in REPODATA_KEYS:
                for entry in ((repodata.get(key) if isinstance(repodata, dict) else None) or {}).values():
                    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                        yield entry


def cuda_needs(bundle):
    """[(package, spec, 'depends' or 'constrains')] for the carried records that name __cuda."""
    needs = []
    for entry in carried_records(bundle):
        for kind in ("depends", "constrains"):
            for spec in entry.get(kind) or []:
                if isinstance(spec, str) and spec_name(spec) == "__cuda":
                    needs.append((entry["name"][:200], spec.strip()[:200], kind))
    return sorted(set(needs))


def cuda_problems(needs, here):
    """One line per package whose __cuda need this machine's CUDA (here.cuda, a version or None) does not
    meet; a constraint binds only where CUDA is present (as conda reads it)."""
    problems = []
    driver = "this machine's NVIDIA driver supports" if here.cuda_from == CUDA_DRIVER else "CONDA_OVERRIDE_CUDA says"
    for package, spec, kind in needs:
        if here.cuda is None and kind == "depends":
            problems.append("package %s needs a CUDA driver (%s); none found (%s)" % (package, spec, here.cuda_from))
        elif here.cuda is not None and not cuda_spec_met(spec, here.cuda):
            problems.append("package %s needs %s; %s CUDA %s" % (package, spec, driver, here.cuda))
    return [printable(line) for line in problems]


class ThisMachine(object):
    """What this machine offers the bundle's binaries: its glibc, the libstdc++ they get, its ISA level
    (and the CUDA its NVIDIA driver supports, once a package needing __cuda asks: cuda_checked)."""

    def __init__(self, glibc, libstdcxx, libstdcxx_where, isa, isa_lacking):
        self.glibc, self.libstdcxx, self.libstdcxx_where = glibc, libstdcxx, libstdcxx_where
        self.isa, self.isa_lacking = isa, isa_lacking
        self.cuda_checked, self.cuda, self.cuda_from = False, None, CUDA_DRIVER

    @classmethod
    def for_rows(cls, rows, listed_names=()):
        """This machine for the given BinaryNeeds rows: the libstdc++ a carried package defines, else (when
        the environment lists no libstdc++ package of its own) the system's."""
        text = PROBE.libc_version()
        glibc = text.split()[-1] if text.startswith("glibc ") else None
        carried = [(PROBE.version_numbers(r["glibcxx_defined"]), r) for r in rows if r.get("glibcxx_defined")]
        if carried:
            version, row = max(carried, key=lambda item: item[0])
            libstdcxx, where = row["glibcxx_defined"], "the bundle's %s %s" % (row["name"], row.get("version", ""))
        elif set(listed_names) & set(LIBSTDCXX_PACKAGES):
            libstdcxx, where = None, "the environment's own, from its channel"
        else:
            path = system_libstdcxx()
            found = PROBE.elf_file(os.path.realpath(path)) if path else None
            libstdcxx = PROBE.highest_version(found["defines"], "GLIBCXX") if found else None
            where = "this machine's %s" % path if path else "none found on this machine"
        isa, lacking = cpu_isa_level()
        return cls(glibc, libstdcxx, where, isa, lacking)

    def describe(self):
        cuda = "" if not self.cuda_checked else "; NVIDIA driver: %s%s" % (
            "CUDA %s" % self.cuda if self.cuda else "none found", " (%s)" % self.cuda_from if
            self.cuda_from != CUDA_DRIVER or not self.cuda else "")
        return "glibc %s; libstdc++ %s (%s); processor %s%s" % (
            self.glibc or "unknown", "up to GLIBCXX_%s" % self.libstdcxx if self.libstdcxx else "not checked",
            self.libstdcxx_where, "x86-64-v%d" % self.isa if self.isa else "not x86-64", cuda)


def binaries_rows(value):
    """The manifest's 'binaries' rows that are well formed (what a bundle says is checked before use)."""
    rows = (value or {}).get("rows") if isinstance(value, dict) else None
    good = []
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            continue
        clean = {"kind": str(row.get("kind"))[:20], "name": row["name"][:200], "version": str(row.get("version", ""))[:100]}
        for key in ("glibc", "glibcxx", "glibcxx_defined"):
            if isinstance(row.get(key), str) and re.match(r"^[0-9]{1,6}(\.[0-9]{1,6}){0,3}$", row[key]):
                clean[key], clean[key + "_file"] = row[key], str(row.get(key + "_file", ""))[:300]
        if isinstance(row.get("isa"), int) and 1 < row["isa"] <= 4:
            clean["isa"], clean["isa_file"] = row["isa"], str(row.get("isa_file", ""))[:300]
        good.append(clean)
    return good


def preflight_problems(rows, here):
    """One line per binary this machine cannot run (the one that needs the most in each package)."""
    problems = []
    for row in rows:
        where = {"conda": "in package %s", "wheel": "in the wheel %s", "software": "in the software %s"}.get(
            row["kind"], "in %s") % row["name"]
        if row.get("glibc") and here.glibc and PROBE.version_numbers(row["glibc"]) > PROBE.version_numbers(here.glibc):
            problems.append("%s %s needs GLIBC_%s; this machine has glibc %s" % (row["glibc_file"], where,
                                                                                  row["glibc"], here.glibc))
        if row.get("glibcxx") and here.libstdcxx and \
                PROBE.version_numbers(row["glibcxx"]) > PROBE.version_numbers(here.libstdcxx):
            problems.append("%s %s needs GLIBCXX_%s; the libstdc++ it gets (%s) has GLIBCXX_%s at most" % (
                row["glibcxx_file"], where, row["glibcxx"], here.libstdcxx_where, here.libstdcxx))
        if row.get("isa") and here.isa and row["isa"] > here.isa:
            problems.append("%s %s is built for x86-64-v%d; this processor is x86-64-v%d (it lacks %s)" % (
                row["isa_file"], where, row["isa"], here.isa, ", ".join(here.isa_lacking)))
    return [printable(line) for line in problems]


def listed_package_names(bundle):
    return [record["name"] for record in bundle.conda_list()]


def bundle_preflight(bundle, uses_conda=True):
    """(problems, ThisMachine, checked) for a bundle's recorded binaries and its packages' __cuda needs;
    checked is False for a bundle packed without the record of its binaries (its carried files are read
    when they are unpacked)."""
    rows = binaries_rows(bundle.manifest.binaries)
    needs = cuda_needs(bundle) if uses_conda else []
    if not uses_conda:  # the carried conda packages are not installed on this route
        rows = [r for r in rows if r["kind"] != "conda"]
    here = ThisMachine.for_rows(rows, listed_package_names(bundle))
    if needs:
        here.cuda, here.cuda_from = cuda_here()
        here.cuda_checked = True
    return preflight_problems(rows, here) + cuda_problems(needs, here), here, \
        bundle.manifest.binaries is not None


def refuse_or_record(problems, force, attempt=None, what="the bundle's binaries"):
    """Say each problem on its own line; stop (exit 2) unless --force-preflight, which records them (after
    those recorded before, the __cuda needs checked at the start)."""
    for line in problems:
        say("preflight: %s" % line)
    if attempt is not None:
        problems = ((attempt.result.get("preflight") or {}).get("problems") or []) + problems
        attempt.save(preflight={"problems": problems, "forced": bool(force and problems), "checked": what})
    if problems and not force:
        cuda = any("__cuda" in line for line in problems)
        raise PmError("this machine cannot run %d of %s (above)" % (len(problems), what),
                      "migrate on a machine with a newer %s, or pass --force-preflight to go on anyway (the problems "
                      "are recorded)%s" % ("glibc/processor/NVIDIA driver" if cuda else "glibc/processor",
                                           "; on a login node without GPUs, CONDA_OVERRIDE_CUDA=VERSION names "
                                           "the GPU nodes' CUDA, for pm and conda alike" if cuda else ""))
    if problems:
        say("warning: --force-preflight: going on with %d preflight problem%s" % (len(problems), "s" * (len(problems) > 1)))


def check_migration(bundle, config, force):
    """The preflight at the start of migrate, before anything is written: the problems (empty when
    none) or None when the bundle has no record; refuses unless force."""
    problems, here, checked = bundle_preflight(bundle, "conda" in config.package_managers)
    if not checked and not problems:
        return None
    refuse_or_record(problems, force)
    return problems


def check_carried_files(attempt, rows, force):
    """The preflight of a bundle packed without the record, on its carried files once unpacked, before
    any is linked (rows: the BinaryNeeds of each package)."""
    rows = binaries_rows({"rows": [r.to_json() for r in rows if r.files]})
    refuse_or_record(preflight_problems(rows, ThisMachine.for_rows(rows)), force, attempt,
                     "the carried packages' binaries (read as they were unpacked: the bundle has no record)")


def archive_binaries(archive):
    """The BinaryNeeds of a carried package as pm's linker reads it (an unpacked package's zip or a
    .tar.bz2), before it is linked."""
    import zipfile
    needs = PROBE.BinaryNeeds("conda", archive.entry["name"], archive.entry["version"])
    with reading_carried(archive):
        if archive.path.endswith(UNPACKED.suffix):  # random access: only the ELF files are read
            with zipfile.ZipFile(archive.path) as package:
                check_zip_readable(package.infolist(), "the carried package %s" % archive.fn)
            return needs.add_zip(archive.path)
        for name, kind, _, _, content in archive.members():
            if kind == "file":
                needs.add(name, PROBE.elf_stream(content, PROBE.ELF_MAX_READ))
    return needs


# == SBOM =====================================================================
# Each attempt writes sbom.cdx.json, a CycloneDX 1.5 JSON SBOM: the software as the root component (its
# version, its git commit when the tree carried one), every conda package and Python distribution the
# environment got (with a purl, and the sha256 of what the bundle carried), the dependency graph from
# the carried repodata, and the tests run with their result and their log's sha256 (as properties).

SBOM_FILE = "sbom.cdx.json"


def purl(kind, name, version, qualifiers=()):
    """A package URL (pkg:conda/..., pkg:pypi/...): name and values percent-encoded, qualifiers sorted."""
    from urllib.parse import quote
    text = "pkg:%s/%s@%s" % (kind, quote(name, safe=""), quote(str(version), safe=""))
    pairs = sorted((key, value) for key, value in qualifiers if value)
    return text + ("?" + "&".join("%s=%s" % (key, quote(str(value), safe="")) for key, value in pairs) if pairs else "")


def sbom_property(name, value):
    return {"name": name, "value": str(value)}


def software_commit(bundle):
    """The git commit of the software's tree when the bundle carried its .git (HEAD, its ref, packed-refs)."""
    top = "software/%s/.git/" % bundle.manifest.software_dir()
    try:
        head = bundle.read_text(top + "HEAD").strip()
        if not head.startswith("ref: "):
            return head if re.match(r"^[0-9a-f]{40,64}$", head) else None
        ref = head[5:].strip()
        if top + ref in bundle.manifest.members:
            commit = bundle.read_text(top + ref).strip()
        else:
            commit = next((line.split()[0] for line in bundle.read_text(top + "packed-refs").splitlines()
                           if line.endswith(" " + ref)), "")
        return commit if re.match(r"^[0-9a-f]{40,64}$", commit) else None
    except (KeyError, ValueError, PmError, UnicodeDecodeError):
        return None


def carried_depends(bundle):
    """name -> [dependency names] from the carried channel's repodata, where the bundle carries one."""
    return dict((entry["name"], [spec_name(d) for d in entry.get("depends") or [] if isinstance(d, str)])
                for entry in carried_records(bundle))


def sbom_document(bundle, result):
    """The CycloneDX 1.5 document of an attempt (result: its result.json) as plain data."""
    import uuid
    sums = dict((name, entry.get("sha256")) for name, entry in (bundle.manifest.members or {}).items()
                if isinstance(entry, dict))
    dists = read_distributions(bundle) or []
    root = sbom_root(bundle, result, dists)
    conda, refs = sbom_conda_components(bundle, result, sums)
    components = conda + sbom_python_components(result, dists, refs, sums)
    return {"bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1,
            "serialNumber": "urn:uuid:%s" % uuid.uuid4(),
            "metadata": {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         "tools": {"components": [{"type": "application", "name": "pm", "version": VERSION}]},
                         "component": root},
            "components": components, "dependencies": sbom_dependencies(bundle, root, components, refs)}


def sbom_root(bundle, result, dists):
    """The software as the root component: its version (its Python record's, else its git commit's),
    the attempt, the tests' evidence and the preflight's problems as properties."""
    name = bundle.manifest.name
    software_dist = next((d for d in dists if d.get("software")), None)
    commit = software_commit(bundle)
    properties = [sbom_property("pm:attempt", result.get("id")), sbom_property("pm:status", result.get("status")),
                  sbom_property("pm:bundle:created", bundle.manifest.created or "")]
    if commit:
        properties.append(sbom_property("pm:git:commit", commit))
    if result.get("installed_to"):
        properties.append(sbom_property("pm:installed_to", result["installed_to"]))
    properties += sbom_test_properties(result)
    for problem in (result.get("preflight") or {}).get("problems") or []:
        properties.append(sbom_property("pm:preflight:problem", problem))
    return {"type": "application", "bom-ref": "software:%s" % name, "name": name,
            "version": (software_dist or {}).get("version") or (commit[:12] if commit else "unknown"),
            "properties": properties}


def sbom_test_properties(result):
    """Each test's status, exit code, seconds and the sha256 of its log."""
    properties = []
    for test in result.get("tests") or []:
        properties += [sbom_property("pm:test:%s:status" % test["name"], test["status"]),
                       sbom_property("pm:test:%s:exit_code" % test["name"], test.get("exit_code")),
                       sbom_property("pm:test:%s:seconds" % test["name"], test.get("seconds"))]
        if test.get("log") and os.path.isfile(test["log"]):
            properties.append(sbom_property("pm:test:%s:log:sha256" % test["name"], PROBE.file_digest(test["log"])[0]))
    return properties


def carried_hash(component, member, sums):
    """The sha256 of what the bundle carried for a component (member: its file in the bundle), if known."""
    if member and sums.get(member):
        component["hashes"] = [{"alg": "SHA-256", "content": sums[member]}]
        component["properties"] = [sbom_property("pm:carried", member)]
    return component


def sbom_conda_components(bundle, result, sums):
    """(components, name -> bom-ref) of the conda packages the environment got: the base's channel when
    the version is the base's, the carried package's sha256 when it was carried."""
    listed = dict((r["name"], r) for r in bundle.conda_list())
    carried = dict((c.get("name"), c) for c in (bundle.manifest.packages or {}).get("carried") or []
                   if isinstance(c, dict))
    components, refs = [], {}
    for row in result.get("environment") or []:
        if not isinstance(row.get("name"), str):
            continue
        base = listed.get(row["name"]) or {}
        channel = base.get("channel") if row.get("version") == base.get("version") else None
        ref = "conda:%s" % row["name"]
        component = {"type": "library", "bom-ref": ref, "name": row["name"], "version": str(row.get("version")),
                     "purl": purl("conda", row["name"], row.get("version"), (
                         ("build", row.get("build")), ("channel", channel), ("subdir", base.get("platform"))))}
        package = carried.get(row["name"]) or {}
        components.append(carried_hash(component, package.get("file") if package.get("version") == row.get("version")
                                       else None, sums))
        refs[row["name"]] = ref
    return components, refs


def sbom_python_components(result, dists, refs, sums):
    """The Python distributions: those of the base that are here (installed by pip, or inside a conda
    package the environment got), then what pip installed that the base did not record."""
    installed = dict((r["requirement"], r.get("version")) for r in result.get("python") or []
                     if r.get("status") == "installed" and r.get("version"))
    components, seen = [], set()
    for dist in dists:
        key = pip_name(dist.get("name") or "")
        version = installed.get(dist["name"]) or (dist.get("version") if dist.get("owner") in refs else None)
        if dist.get("software") or not version or key in seen:
            continue
        seen.add(key)
        component = carried_hash({"type": "library", "bom-ref": "pypi:%s" % key, "name": dist["name"],
                                  "version": str(version), "purl": purl("pypi", key, version)}, dist.get("wheel"), sums)
        if dist.get("owner") in refs:
            component.setdefault("properties", []).append(sbom_property("pm:conda_package", dist["owner"]))
        components.append(component)
    for requirement, version in sorted(installed.items()):
        if pip_name(requirement) not in seen:
            seen.add(pip_name(requirement))
            components.append({"type": "library", "bom-ref": "pypi:%s" % pip_name(requirement), "name": requirement,
                               "version": str(version), "purl": purl("pypi", pip_name(requirement), version)})
    return components


def sbom_dependencies(bundle, root, components, refs):
    """The root depends on every component; each conda package on those its carried record names."""
    depends = carried_depends(bundle)
    dependencies = [{"ref": root["bom-ref"], "dependsOn": sorted(c["bom-ref"] for c in components)}]
    for package, ref in sorted(refs.items()):
        on = sorted(set(refs[d] for d in depends.get(package, []) if d in refs and d != package))
        dependencies.append({"ref": ref, "dependsOn": on} if on else {"ref": ref})
    return dependencies


def write_sbom(bundle, attempt):
    """sbom.cdx.json in the attempt's folder; an SBOM that cannot be written never hides the result."""
    try:
        write_json(os.path.join(attempt.path, SBOM_FILE), sbom_document(bundle, attempt.result))
    except (OSError, PmError, ValueError, KeyError, TypeError, AttributeError) as exc:
        say("note: the attempt's %s could not be written (%s)" % (SBOM_FILE, exc))


# == Reports ==================================================================
# What an attempt came to, for people (report, history, report.html in the attempt) and for
# scripts (--json): the platforms, each requirement and how it was met, the tests, the history.


class RequirementRow(object):
    """One requirement of the base and how this machine met it: a row of result.json's packages,
    python and unmet lists, which the summary, report and report.html show. A row keeps the keys it
    was made with, so result.json holds what older pm wrote (a skipped row has no version)."""

    FIELDS = ("requirement", "status", "base_version", "version", "package", "why", "drift", "conda")

    def __init__(self, requirement, status, **fields):
        unknown = set(fields) - set(self.FIELDS)
        if unknown:
            raise TypeError("a requirement row has no %s" % ", ".join(sorted(unknown)))
        self.requirement, self.status = requirement, status
        self.recorded = ("requirement", "status") + tuple(k for k in self.FIELDS[2:] if k in fields)
        for key in self.FIELDS[2:]:
            setattr(self, key, fields.get(key))

    def to_json(self):
        return dict((key, getattr(self, key)) for key in self.recorded)

    @classmethod
    def from_json(cls, data):
        """A row of result.json (of this pm or an older one)."""
        return cls(data.get("requirement"), data.get("status"),
                   **dict((k, v) for k, v in data.items() if k in cls.FIELDS[2:]))

    def how(self):
        """What met it and why: the report's 'how'."""
        return ", ".join(p for p in (self.package, self.why) if p)

    def report_json(self):
        """The row as 'report --json' gives it (and report and report.html show)."""
        return {"requirement": self.requirement, "status": self.status, "base_version": self.base_version,
                "version": self.version, "drift": bool(self.drift), "how": self.how(), "conda": self.conda}


def rows_json(rows):
    """Requirement rows as result.json holds them."""
    return [row.to_json() for row in rows]


def log_tail(path, limit=64 << 10):
    """The last limit bytes of a log, as text."""
    if not path or not os.path.isfile(path):
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, os.path.getsize(path) - limit))
        return handle.read().decode("utf-8", "replace")


def requirement_rows(result):
    """Each requirement and how it was met: conda's package (level), a package manager's, skipped;
    the base's version beside the one installed, and why that one."""
    rows = [RequirementRow.from_json(r).report_json()
            for r in (result.get("packages") or []) + (result.get("python") or []) + (result.get("unmet") or [])]
    if result.get("packages") is not None:
        return rows
    how = "pm, from the bundle's packages" if result.get("level") == "carried" else "conda (level %s)" % result.get("level")
    environment = [RequirementRow(p["name"], "installed", base_version=p.get("base_version"), version=p["version"],
                                  drift=bool(p.get("base_version")) and p.get("base_version") != p["version"],
                                  package="%s %s %s" % (p["name"], p["version"], p["build"]), why=how).report_json()
                   for p in result.get("environment") or []]
    for row in environment:
        del row["conda"]  # the environment's own packages stand for no other conda package
    return environment + rows


def attempt_report(store, name, attempt_id=None):
    """The report of one attempt (the latest by default) as plain data: what --json prints."""
    attempts = store.attempts(name) if os.path.isdir(store.software(name)) else []
    if not attempts:
        raise PmError("no migration attempts of %s in %s" % (name, store.home),
                      "run 'pm.pyz migrate %s TEST_CONFIG' first" % name)
    result = one_attempt(attempts, name, attempt_id) if attempt_id else attempts[-1]
    tests = [dict(t, output=log_tail(t.get("log"))) for t in result.get("tests") or []]
    return {"name": name, "id": result["id"], "status": result.get("status", "unfinished"),
            "level": result.get("level"), "error": result.get("error"), "seconds": result.get("seconds"),
            "installed_to": result.get("installed_to"), "activate": result.get("activate"),
            "path": os.path.join(store.software(name), result["id"]),
            "source": result.get("source") or {}, "target": result.get("platform") or {},
            "requirements": requirement_rows(result), "tests": tests, "history": attempt_history(store, name, attempts),
            "test_config": log_tail(os.path.join(store.software(name), result["id"], TEST_CONFIG_COPY))
            if result.get("test_config") else None, "environment_gone": environment_gone(store, name, result)}


def environment_gone(store, name, result):
    """The environment an install runs with, when it is gone (removed by hand or by a clean-up): its
    report's command would run without it. None while it is there."""
    if not attempt_install_in_use(result):  # no install (or a replaced one) runs with it
        return None
    env = result.get("env_prefix") or (os.path.join(store.software(name), result["id"], "venv")
                                       if result.get("venv_python") else None)
    return env if env and not os.path.isdir(env) else None


def attempt_history(store, name, attempts):
    """Attempts as rows, newest first."""
    return [{"id": a["id"], "status": a.get("status", "unfinished"), "level": a.get("level"),
             "seconds": a.get("seconds"), "error": a.get("error"),
             "environment_gone": environment_gone(store, name, a),
             "tests": len(a.get("tests") or []),
             "tests_passed": len([t for t in a.get("tests") or [] if t.get("status") == "passed"])}
            for a in reversed(attempts)]


PLATFORM_ROWS = [("os", "os"), ("release", "os_release"), ("machine", "machine"), ("libc", "libc"),
                 ("environment", "env_kind"), ("env python", "env_python"), ("pm python", "python"),
                 ("conda", "conda"), ("host", "hostname")]


def show(line):
    """print for what a bundle or the network may have written: control characters shown, not sent."""
    print(printable(line))


JSON_PRINTED = [False]  # --json: the one object is out (main prints an error object when it is not)


def print_json(data):
    """The one JSON value a --json run prints on stdout (keys sorted, as every file pm writes)."""
    JSON_PRINTED[0] = True
    show(json.dumps(data, indent=1, sort_keys=True))


def json_error(what, fix=None, name=None):
    """The object --json prints when a run ends before its own result (a refusal, an interruption)."""
    data = {"status": "error", "error": what, "fix": fix}
    if name:
        data["name"] = name
    return data


def print_report(report):
    show("%s, attempt %s: %s%s%s" % (report["name"], report["id"], report["status"],
                                       " (level %s)" % report["level"] if report["level"] else "",
                                       ", %.1f s" % report["seconds"] if report["seconds"] else ""))
    if report["error"]:
        show("error: %s" % report["error"])
    show("\n%-10s %-32s %s" % ("", "base machine", "this machine"))
    for label, key in PLATFORM_ROWS:
        show("%-10s %-32s %s" % (label, report["source"].get(key) or "-", report["target"].get(key) or "-"))
    drifted = [r for r in report["requirements"] if r.get("drift")]
    show("\nrequirements (%d, %d at another version than the base's)" % (len(report["requirements"]), len(drifted)))
    for row in report["requirements"]:
        versions = "%s -> %s" % (row.get("base_version") or "?", row.get("version") or "-") \
            if row.get("base_version") else ""
        show("  %-24s %-10s %-20s %s" % (row["requirement"], row["status"], versions, row["how"]))
    show("\ntests (%d)" % len(report["tests"]))
    for test in report["tests"]:
        show("  %-20s %-8s %8.2f s  %s" % (test["name"], test["status"], test["seconds"], test["log"]))
        if test.get("command"):
            show("      $ %s" % test["command"])
    if report.get("test_config"):
        show("test configuration: %s" % os.path.join(report["path"], TEST_CONFIG_COPY))
    show("\nhistory (%s, newest first)" % plural(len(report["history"]), "attempt"))
    for row in report["history"]:
        show("  %s  %-11s %-9s %s" % (row["id"], row["status"], row["level"] or "",
                                       "%d/%d tests passed" % (row["tests_passed"], row["tests"])))
    if report["installed_to"]:
        show("\ninstalled to %s" % report["installed_to"])
    if report["environment_gone"]:
        show("warning: the environment this install runs with (%s) is gone: its command above would run without "
             "it %s 'pm.pyz repair %s %s' re-creates it" % (report["environment_gone"], DASH, report["name"],
                                                            report["id"]))


def print_summary(result):
    """What migrate prints at its end (a MigrationResult): the requirements by status, the tests, where
    the attempt is and how to run the install."""
    print_requirement_lines(result)
    print("%-20s %-8s %8s" % ("test", "status", "seconds"))
    for test in result.tests:
        print("%-20s %s%s %8.2f" % (printable(test.name), paint(test.status), " " * (8 - len(test.status)),
                                    test.seconds))
    show("attempt: %s" % result.attempt.path)
    if result.installed and result.activate:
        show("to run it: %s && cd %s" % (result.activate, shlex.quote(result.installed)))
    if result.installed and result.module:
        show("or: module use %s && module load %s" % (shlex.quote(result.module[0]), result.module[1]))


def print_requirement_lines(result):
    """A line per status (installed, skipped, failed), per reason a requirement is missing, and
    the requirements at another version than the base's."""
    for status in ("installed", "skipped", "failed") if result.packages is not None else ():
        names = [r.package or r.requirement if status != "skipped" else r.requirement
                 for r in result.packages if r.status == status]
        print("%s%s %d%s" % (paint(status), " " * (9 - len(status)), len(names),
                             printable(": " + ", ".join(names)) if names else ""))
    by_why = {}
    for row in result.stored_rows("unmet"):
        by_why.setdefault(row.why, []).append(row.requirement)
    for why, names in sorted(by_why.items(), key=lambda item: -len(item[1])):
        print("%s%s %d: %s" % (paint("missing"), " " * 3, len(names), printable("%s (%s)" % (", ".join(names), why))))
    drifted = [r for r in (result.packages or []) + result.stored_rows("python") if r.drift]
    if drifted:  # rows from the bundle: their text is shown, never sent to the terminal
        show("%s%s %d: %s" % ("differs", " " * 3, len(drifted), ", ".join(
            "%s %s -> %s" % (r.requirement, r.base_version, r.version) for r in drifted)))


# status -> (terminal colour, colour on the report page): the one colour table
COLOURS = {"passed": ("32", "#2e7d32"), "installed": ("32", "#2e7d32"), "failed": ("31", "#c62828"),
           "error": ("31", "#c62828"), "timeout": ("33", "#ef6c00"), "skipped": ("90", "#757575"),
           "interrupted": ("90", "#757575"), "running": ("34", "#1565c0"),
           "missing": ("31", "#c62828"), "drift": ("33", "#ef6c00")}  # drift: at another version than the base's


def paint(word, stream=None):
    """A status word in colour, on a TTY only and never with NO_COLOR set."""
    stream = stream or sys.stdout
    if word in COLOURS and stream.isatty() and not os.environ.get("NO_COLOR"):
        return "\033[%sm%s\033[0m" % (COLOURS[word][0], word)
    return word


def history_chart(history):
    """An inline SVG bar per attempt, oldest left: height the share of tests passed, colour the status."""
    import html
    rows = list(reversed(history))[-30:]
    width, height = 24 * max(len(rows), 1) + 8, 80
    bars = []
    for number, row in enumerate(rows):
        share = row["tests_passed"] / float(row["tests"]) if row["tests"] else 0.0
        bar = 6 + int(60 * share)
        bars.append('<rect class="attempt %s" x="%d" y="%d" width="18" height="%d" fill="%s"><title>%s: %s, %d/%d '
                    'tests passed</title></rect>' % (html.escape(row["status"]), 8 + 24 * number, 70 - bar, bar,
                                                     COLOURS.get(row["status"], ("", "#9e9e9e"))[1],
                                                     html.escape(row["id"]), html.escape(row["status"]),
                                                     row["tests_passed"], row["tests"]))
    return ('<svg width="%d" height="%d" role="img" aria-label="attempts">'
            '<line x1="4" y1="70" x2="%d" y2="70" stroke="#bbb"/>%s</svg>' % (width, height, width - 4, "".join(bars)))


REPORT_CSS = """body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:62em;color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.25em .6em;border-bottom:1px solid #eee}
th{background:#f5f5f5}.status,.drift{font-weight:600}pre{background:#f7f7f7;padding:.8em;overflow:auto;
max-height:30em;font-size:13px}details{margin:.4em 0}summary{cursor:pointer}.meta{color:#555}
""" + "".join(".%s{color:%s}" % (word, page) for word, (_, page) in sorted(COLOURS.items()))


def html_table(headers, rows):
    """A table of cells already made HTML."""
    import html
    return "<table><tr>%s</tr>%s</table>" % ("".join("<th>%s</th>" % html.escape(h) for h in headers), "".join(
        "<tr>%s</tr>" % "".join(row) for row in rows))


def html_cell(text, css=""):
    import html
    return "<td%s>%s</td>" % (' class="%s"' % html.escape(css) if css else "", html.escape(text))


def html_status(text):
    return html_cell(text, "status " + text)


def platforms_html(report):
    import html
    return html_table(["", "base machine", "this machine"], [
        ["<th>%s</th>" % html.escape(label), html_cell(str(report["source"].get(key) or "-")),
         html_cell(str(report["target"].get(key) or "-"))] for label, key in PLATFORM_ROWS])


def requirements_html(report):
    if not report["requirements"]:
        return "<p>none recorded</p>"
    return html_table(["requirement", "status", "base", "installed", "how"], [
        [html_cell(r["requirement"]), html_status(r["status"]), html_cell(r.get("base_version") or ""),
         html_cell(r.get("version") or "", "drift" if r.get("drift") else ""), html_cell(r["how"])]
        for r in report["requirements"]])


def tests_html(report):
    import html
    e = html.escape
    tests = "".join('<details class="test" id="test-%s"><summary><b>%s</b> <span class="status %s">%s</span> '
                    '<span class="meta">%.2f s, exit %s</span> <code>%s</code></summary><pre>%s</pre></details>'
                    % (e(t["name"]), e(t["name"]), e(t["status"]), e(t["status"]), t["seconds"], t["exit_code"],
                       e(t.get("command") or ""), e(t["output"]) or "(no output)")
                    for t in report["tests"]) or "<p>no tests ran</p>"
    if report.get("test_config"):
        tests += "\n<h2>Test configuration</h2><pre>%s</pre>" % e(report["test_config"])
    return tests


def history_html(report):
    return html_table(["attempt", "status", "level", "tests passed", "seconds"], [
        [html_cell(h["id"]), html_status(h["status"]), html_cell(h["level"] or ""),
         html_cell("%d/%d" % (h["tests_passed"], h["tests"])), html_cell("%.1f" % h["seconds"] if h["seconds"] else "")]
        for h in report["history"]])


def report_html(report):
    """One self-contained page (inline CSS and SVG, nothing fetched) of an attempt's report."""
    import html
    e = html.escape
    summary = "%s%s%s" % (report["status"], " at level %s" % report["level"] if report["level"] else "",
                          ", %.1f s" % report["seconds"] if report["seconds"] else "")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>pm: %s, attempt %s</title>"
            "<style>%s</style></head><body>\n<h1>%s</h1><p class=\"meta\">attempt %s: <span id=\"status\" "
            "class=\"status %s\">%s</span>%s%s</p>\n<h2>Platforms</h2>%s\n<h2>Requirements</h2>%s\n<h2>Tests</h2>%s\n"
            "<h2>History</h2>%s%s\n<p class=\"meta\">written by pm %s%s</p></body></html>\n" % (
                e(report["name"]), e(report["id"]), REPORT_CSS, e(report["name"]), e(report["id"]),
                e(report["status"]), e(summary), "<br>error: %s" % e(report["error"]) if report["error"] else "",
                "<br>installed to %s" % e(report["installed_to"]) if report["installed_to"] else "",
                platforms_html(report), requirements_html(report), tests_html(report), history_chart(report["history"]),
                history_html(report), VERSION,
                ' &middot; <a id="sbom" href="%s">SBOM (CycloneDX 1.5)</a>' % SBOM_FILE
                if os.path.isfile(os.path.join(report["path"], SBOM_FILE)) else ""))


def write_report_html(store, name, attempt):
    """report.html in the attempt's folder; a report that cannot be written never hides the result."""
    try:
        write_atomic(os.path.join(attempt.path, "report.html"), report_html(attempt_report(store, name, attempt.id)))
    except (OSError, PmError, ValueError) as exc:
        say("note: the attempt's report.html could not be written (%s)" % exc)


def dist_row(dist, installed, status, why, manager="pip"):
    """A requirements row for a Python distribution: the base's version beside the one installed, the
    installer that really ran, and the conda package it stands for (if any)."""
    return RequirementRow(dist["name"], status, base_version=dist["version"], version=installed,
                          package="%s:%s=%s" % (manager, dist["name"], installed) if installed else None, why=why,
                          drift=bool(installed) and installed != dist["version"], conda=dist.get("owner"))


# == The attempt ==============================================================
# One attempt: a unique directory NAME/<id>/ holding the env file used, the command log, every test's
# output, result.json; its options, what it came to, and what a route hands back (Provided).


class TestResult(object):
    """How one test went."""

    def __init__(self, name, status, exit_code, seconds, log, leftovers=(), command=None):
        self.name, self.status, self.exit_code, self.seconds, self.log = name, status, exit_code, seconds, log
        self.leftovers = list(leftovers)  # 'PID command' of processes it left running, stopped by pm
        self.command = command  # as the configuration wrote it (with its runner first)

    def to_json(self):
        return {"name": self.name, "status": self.status, "exit_code": self.exit_code, "command": self.command,
                "seconds": round(self.seconds, 3), "log": self.log, "left_running": self.leftovers}


def this_platform():
    """This machine's OS, processor and C library, recorded with each attempt (the probe's own reading,
    without conda's fields)."""
    here = PROBE.source_platform({})
    return dict((key, value) for key, value in here.items() if key not in ("conda", "conda_platform"))


def glibc_version(text):
    match = re.match(r"glibc \d+\.\d+", text if isinstance(text, str) else "")
    return PROBE.version_numbers(match.group(0)) if match else None


def platform_notes(source, here):
    """Warnings when the base machine differs from this one in ways that break conda builds."""
    source = source if isinstance(source, dict) else {}
    notes = []
    for key, what in (("os", "operating system"), ("machine", "processor")):
        theirs = re.sub(r"[^\w .+-]", "?", str(source.get(key) or ""))[:40]
        if theirs and theirs != here[key]:
            notes.append("the bundle comes from %s %s, this machine has %s: its exact builds cannot be "
                         "used here" % (what, theirs, here[key]))
    theirs, ours = glibc_version(source.get("libc")), glibc_version(here["libc"])
    if theirs and ours and ours < theirs:
        notes.append("the bundle comes from glibc %d.%d, this machine has glibc %d.%d: packages built for "
                     "the base may not run here" % (theirs + ours))
    return notes


class Attempt(object):
    """The record of one migration attempt, kept in its directory."""

    def __init__(self, store, name):
        self.store, self.name = store, name
        self.path = store.new_attempt_dir(name)
        self.id = os.path.basename(self.path)
        self.log_path = os.path.join(self.path, "commands.log")
        self.started = time.time()
        self.base_python = None  # the base environment's Python version, for the software's venv
        self.holds = []  # open files whose locks say what this attempt uses (released when it ends)
        self.conda = None  # the conda route's (CondaHere, CarriedChannel or None)
        self.result = {"id": self.id, "name": name, "status": "running", "started": self.started,
                       "pid": os.getpid(), "pid_started": process_start_time(os.getpid())}

    def log(self, text):
        with append_private(self.log_path) as handle:
            handle.write("%s %s\n" % (time.strftime("%H:%M:%S"), text))

    def run(self, command, environ=None):
        """Run a command (conda, an install) through run_command, logged here; (exit code, output)."""
        self.log("$ " + " ".join(command))
        started = time.time()
        run = run_command(command, self.log_path, environ=environ, heartbeat=os.path.basename(command[0]))
        code = 127 if run.code is None else run.code
        self.log("exit %d after %.3f s" % (code, time.time() - started))
        if run.leftovers:
            say("warning: %s left %d process%s running; pm stopped %s (see %s)" % (
                os.path.basename(command[0]), len(run.leftovers), "es" * (len(run.leftovers) > 1),
                "them" if len(run.leftovers) > 1 else "it", self.log_path))
        return code, run.output

    def save(self, **values):
        self.result.update(values)
        write_json(os.path.join(self.path, "result.json"), self.result)

    PARTIAL = ("channel", "wheels", "work", "venv")  # what an attempt writes that is of no use once it failed

    def discard_partial(self):
        """Remove what this attempt had started writing (carried packages, unzipped copies, its venv):
        after a full disk, so that the disk is not left full and the attempt's end can be recorded."""
        import shutil
        for folder in self.PARTIAL:
            shutil.rmtree(os.path.join(self.path, folder), ignore_errors=True)
        for leftover in os.listdir(self.path):
            if leftover.startswith(".pm-") and leftover.endswith(".part"):
                remove_quietly(os.path.join(self.path, leftover))


class MigrateOptions(object):
    """What the caller asks of a migration (the command line's flags, as plain values)."""

    def __init__(self, env_name=None, force=False, skip_tests=False, yes=False, answers=None, pck_mgr_configs=(),
                 no_conda=False, allow_scripts=False, prefix=None):
        self.no_conda = no_conda  # install the bundle's carried packages without conda
        self.max_ratio = None  # --max-ratio: also bounds what pm's linker unpacks
        self.allow_scripts = allow_scripts
        self.prefix = prefix
        self.env_name = env_name
        self.force = force
        self.skip_tests = skip_tests
        self.yes = yes
        self.answers = dict(answers or {})  # requirement -> Choice, from --answers
        self.pck_mgr_configs = list(pck_mgr_configs)
        self.force_preflight = False  # --force-preflight: go on when this machine cannot run the binaries
        self.preflight = None  # the problems the preflight found (None: the bundle has no record of its binaries)


class MigrationResult(object):
    """What an attempt came to: passed or failed, its tests, packages and where the software went."""

    def __init__(self, attempt, tests, packages=None, installed=None):
        self.attempt = attempt
        self.tests = tests
        self.packages = packages
        self.installed = installed
        self.activate = None  # the shell command that gives the installed software the packages its tests had
        self.module = None  # (modulefiles folder, NAME/VERSION) when the install wrote modulefiles
        self.passed = all(t.status == "passed" for t in tests)

    def exit_code(self):
        return 0 if self.passed else 1

    def stored_rows(self, key):
        """The attempt's requirement rows of one list of result.json ('python', 'unmet')."""
        return [RequirementRow.from_json(row) for row in self.attempt.result.get(key) or []]


class Provided(object):
    """What a route made for the tests: the package managers' rows (None on the conda routes), the tests'
    environment variables, the command that activates it, its site-packages (None: none), and the rows of
    the wheels and of what pip installed."""

    def __init__(self, packages, environ, activate, site=None, python_rows=()):
        self.packages, self.environ, self.activate = packages, environ, activate
        self.site, self.python_rows = site, list(python_rows)


class Route(object):
    """One way to recreate the environment (ROUTES, in the order they are tried): when it applies, and
    its function, each with the same arguments (attempt, config, bundle, options, env_file, min_deps,
    dists, base) returning a Provided."""

    def __init__(self, name, applies, provide):
        self.name, self.applies, self.provide = name, applies, provide


# == The base's Python requirements ============================================
# What the base environment had that pip installs (or that is the software itself), worked out once per
# migration from conda-list.json, python-dists.json, min-deps.json and env.yml: BaseRequirements.


def base_python_version(bundle):
    """The Python version of the base environment: conda-list.json's python record, else the manifest's
    env python (a virtual environment's, from its pyvenv.cfg), or None."""
    for record in bundle.conda_list():
        if record["name"] == "python" \
                and re.match(r"^\d+\.\d+(\.\d+)?$", str(record.get("version", ""))):
            return record["version"]
    python = (bundle.manifest.env or {}).get("python") if isinstance(bundle.manifest.env, dict) else None
    return python if isinstance(python, str) and re.match(r"^\d+\.\d+(\.\d+)?$", python) else None


PIP_LEFT_OUT = frozenset(["pip", "conda", "conda-build", "conda-package-handling", "conda-package-streaming",
                          "conda-libmamba-solver", "libmambapy", "menuinst", "conda-index"])


def base_conda_records(bundle, min_deps, env_file):
    """The base's conda packages as records (name, version, build_string, channel): conda-list.json,
    else min-deps.json (the original tool's store lists them there), else env.yml's conda entries.
    Names and versions that are not plain package names and versions are left out (they would become
    requirement lines)."""
    listed = bundle.conda_list() or (min_deps if isinstance(min_deps, list) and min_deps else None)
    if listed is None:
        listed = []
        for spec in env_file.dependencies:
            parts = (spec.split("=") + ["", ""])[:3]
            listed.append({"name": spec_name(spec), "version": parts[1], "build_string": parts[2]})
    records = []
    for record in listed:
        if not isinstance(record, dict):
            continue
        name, version = str(record.get("name") or ""), str(record.get("version") or "")
        if not re.match(PACKAGE_NAME, name) or (version and not re.match(PACKAGE_VERSION, version)):
            say("warning: the base's package %r %r is not a package name and version; it is left out"
                % (printable(name[:60]), printable(version[:60])))
            continue
        records.append({"name": name, "version": version, "build_string": str(record.get("build_string") or ""),
                        "channel": str(record.get("channel") or "")})
    return records


def software_names(bundle):
    """What the software is called as a Python distribution: the bundle's name, its folder's, and the
    project name its pyproject.toml, setup.cfg or setup.py gives (PEP 503 forms)."""
    names = set([pip_name(bundle.manifest.name), pip_name(bundle.manifest.software_dir())])
    top = "software/%s/" % bundle.manifest.software_dir()
    patterns = {"pyproject.toml": r"(?m)^\s*name\s*=\s*[\"']([A-Za-z0-9][A-Za-z0-9._-]*)[\"']",
                "setup.cfg": r"(?m)^\s*name\s*=\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*$",
                "setup.py": r"\bname\s*=\s*[\"']([A-Za-z0-9][A-Za-z0-9._-]*)[\"']"}
    for member, pattern in patterns.items():
        if top + member not in bundle.manifest.members:
            continue
        try:
            found = re.search(pattern, bundle.read_text(top + member))
        except (KeyError, UnicodeDecodeError, PmError):
            continue
        if found:
            names.add(pip_name(found.group(1)))
    return names


class BaseRequirements(object):
    """What the base asks of a migration, worked out once per migration (base_requirements): its conda
    records, python-dists.json's distributions (None for an older bundle), what pip installs (pip),
    the conda packages those stand for (owners) and the software's own distributions (software)."""

    def __init__(self, records, dists, pip, owners, software):
        self.records, self.dists, self.pip, self.owners, self.software = records, dists, pip, owners, software


def base_requirements(bundle, env_file, min_deps):
    """The migration's BaseRequirements, from env_file as the migration uses it."""
    records = base_conda_records(bundle, min_deps, env_file)
    dists = base_distributions(bundle)
    return BaseRequirements(records, dists, *python_requirements(bundle, env_file, min_deps, records, dists))


def python_requirements(bundle, env_file, min_deps, records, dists):
    """(what pip installs, the conda names it stands for, the software's distributions). From
    python-dists.json (dists), exact; for an older bundle or the original tool's store, from the conda
    records (a Python package by conda's own metadata, conda_pypi_name) and env.yml's pip entries. Conda
    packages that are Python but whose files the base did not list go to pip too. The software is
    never pinned: it comes from the migrated tree."""
    direct = set(r.get("name") for r in min_deps or [] if isinstance(r, dict)) | \
        set(spec_name(s) for s in env_file.dependencies)
    wanted, owners = recorded_distributions(dists, direct)
    software = software_dists(dists)
    names = software_names(bundle) if dists is None else set()
    known = set(pip_name(d["name"]) for d in wanted + software)
    for record in records:
        pypi = conda_pypi_name(record["name"], record["build_string"], channel=record["channel"])
        if record["name"] in owners or not pypi or not record["version"] or pip_name(pypi) in known | PIP_LEFT_OUT:
            continue
        known.add(pip_name(pypi))
        if pip_name(pypi) in names:
            software.append({"name": pypi, "version": record["version"], "site": "", "software": True,
                             "owner": None, "source": "editable"})
        else:
            wanted.append(python_conda_package(record, pypi, direct, dists is not None))
            owners.add(record["name"])
    for name, version in pinned_pip_entries(env_file) if dists is None else ():
        if pip_name(name) in known | PIP_LEFT_OUT:
            continue
        known.add(pip_name(name))
        entry = {"name": name, "version": version, "owner": None, "site": "", "direct": True}
        if pip_name(name) in names:
            software.append(dict(entry, software=True, source="editable"))
        else:
            wanted.append(dict(entry, why="env.yml's pip entry"))
    return wanted, owners - set([None]), software


def recorded_distributions(dists, direct):
    """(what pip installs of python-dists.json's records, the conda packages that installed records):
    neither the software, nor pip and conda themselves."""
    wanted, owners = [], set()
    for dist in dists or []:
        owners.add(dist.get("owner"))
        if dist.get("software") or pip_name(dist["name"]) in PIP_LEFT_OUT or dist.get("owner") in CONDA_OWN_PACKAGES:
            continue
        how = ("conda package %s installs it" % dist["owner"]) if dist.get("owner") else \
            "pip installed it (%s)" % PROBE.SOURCE_WORDS.get(dist.get("source"), dist.get("source"))
        wanted.append(dict(dist, why="recorded on the base: " + how,
                           direct=not dist.get("owner") or dist.get("owner") in direct))
    return wanted, owners


def python_conda_package(record, pypi, direct, listed):
    """A conda record that is a Python package (PyPI name pypi), as what pip installs; listed: the base
    recorded its distributions, and none for this one."""
    why = "pip installed it on the base" if record["channel"] == "pypi" else \
        "conda package %s %s is a Python package (%s)" % (record["name"], record["version"], "its build " +
                                                             record["build_string"] if record["build_string"]
                                                             else "its records")
    if listed:
        why += "; the base listed no files of it"
    return {"name": pypi, "version": record["version"], "site": "", "why": why,
            "owner": None if record["channel"] == "pypi" else record["name"],
            "direct": record["name"] in direct or record["channel"] == "pypi"}


def pinned_pip_entries(env_file):
    """env.yml's pip entries that are NAME==VERSION, as (name, version)."""
    found = []
    for spec in env_file.pip:
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9.+!_-]+)\s*$", spec)
        if match:
            found.append((match.group(1), match.group(2)))
    return found


PIP_ENTRY = r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]*\])?==[A-Za-z0-9.+!_-]+\Z"


def pip_entries_from_an_index(env_file, dists):
    """env.yml with only the pip entries an index serves, as NAME==VERSION (never an option such as
    --index-url or -e for pip to obey): the software itself, what pip installed from a path, a URL or a
    VCS, and what the bundle carries as wheels are never asked of an index."""
    if not env_file.pip:
        return env_file
    dropped = set(pip_name(d["name"]) for d in dists or ()
                  if d.get("software") or d.get("wheel") or d.get("source") not in ("index", "conda", "unknown"))
    for dist in dists or ():
        if not dist.get("software") and not dist.get("wheel") and dist.get("source") not in ("index", "conda", "unknown"):
            say("note: %s %s was installed from %s on the base, not from an index, and the bundle does not carry "
                "it: it is left out (pack with --with-packages to carry it)" % (dist["name"], dist["version"],
                                                                             dist.get("url") or dist.get("source")))
    for entry in env_file.pip:
        if not re.match(PIP_ENTRY, entry):
            say("note: the pip entry %r is not NAME==VERSION; it is left out (install it by hand)" % entry[:100])
    kept = [s for s in env_file.pip if re.match(PIP_ENTRY, s) and pip_name(spec_name(s)) not in dropped]
    if len(kept) == len(env_file.pip):
        return env_file
    return EnvFile(env_file.name, env_file.channels, env_file.dependencies, kept, env_file.variables)


def software_dists(dists):
    return [d for d in dists or [] if d.get("software")]


# == Carried wheels and the software itself =====================================
# The bundle's python-dists.json says what each package puts on the Python path. Every route
# installs the wheels pack carried for what pip installed (pm's own wheel installer into a conda
# or carried prefix, pip's --find-links into the venv), and the software from the migrated tree
# the way the base had it (editable: a .pth naming its import roots and a dist-info), never a release.


def wheel_destination(name, site_rel):
    """Where a wheel member goes in a prefix (PEP 427's .data folders included)."""
    parts = name.split("/")
    if parts[0].endswith(".data") and len(parts) > 2:
        kind, rest = parts[1], "/".join(parts[2:])
        if kind in ("purelib", "platlib"):
            return site_rel + "/" + rest
        if kind in ("scripts", "headers"):
            return ("bin/" if kind == "scripts" else "include/") + rest
        if kind == "data":
            return rest
        raise PmError("wheel member %s is in an unknown .data folder" % name, FIX_BAD_BUNDLE)
    return site_rel + "/" + name


class ShebangFix(object):
    """A wheel script's '#!python ARGS' line made the prefix's python (shebang; a transform for
    Contained.write)."""

    def __init__(self, prefix):
        self.python, self.first = os.path.join(prefix, "bin", "python"), True

    def feed(self, block, final):
        if self.first and block:
            self.first = False
            if block.startswith(b"#!python"):
                line, newline, rest = block.partition(b"\n")
                args = line[len(b"#!python"):].decode("utf-8", "surrogateescape").rstrip("\r")
                head = shebang(self.python, args)
                return (head if newline else head.rstrip("\n")).encode("utf-8", "surrogateescape") + rest
        return block


def install_wheel(wheel, prefix, site_rel, writer=None, python_version=None):
    """Unpack a wheel into prefix as pip would (files, scripts with the prefix's python, entry
    points, INSTALLER and RECORD, so that pip sees it), through the containment writer (writer: the
    prefix's, with the carried wheels' caps); modes follow the umask, times are kept. python_version
    ('3.11'): the Python it is for, which pip's own pipX.Y and easy_install-X.Y scripts are named after."""
    import zipfile
    where = os.path.basename(wheel)
    writer = writer or Contained(prefix)
    try:
        with zipfile.ZipFile(wheel) as archive:
            info_dir, points, written = unpack_wheel(archive, prefix, site_rel, writer, where)
    except zip_damage() as exc:
        raise PmError("the carried wheel %s is damaged (%s)" % (where, exc), FIX_BAD_BUNDLE)
    for command, target in scripts_for_python(points, python_version):
        written.append(write_entry_point(writer, command, target, where))
    finish_dist_info(writer, site_rel, info_dir, written)
    return info_dir


def scripts_for_python(points, python_version):
    """pip's and setuptools' own scripts named as pip names them for the Python they go to: pip, pip3
    and pip3.11, easy_install and easy_install-3.11 for Python 3.11 (a wheel names the Python it was
    built on, or none)."""
    if not python_version:
        return points
    named = dict(points)
    for stem, versioned in (("pip", ["pip" + python_version.split(".")[0], "pip" + python_version]),
                            ("easy_install", ["easy_install-" + python_version])):
        if stem in named:
            points = [(c, t) for c, t in points if not re.match(r"^%s-?[0-9]+(\.[0-9]+)?\Z" % stem, c)]
            points += [(command, named[stem]) for command in versioned]
    return points


def unpack_wheel(archive, prefix, site_rel, writer, where):
    """(dist-info folder, entry points, paths written): a wheel's files through writer, RECORD and
    INSTALLER left to finish_dist_info."""
    written = []
    infos = [i for i in archive.infolist() if not i.filename.endswith("/")]
    info_dirs = set(i.filename.split("/")[0] for i in infos if i.filename.split("/")[0].endswith(".dist-info"))
    if len(info_dirs) != 1:
        raise PmError("the carried wheel %s has %d .dist-info folders" % (where, len(info_dirs)),
                      FIX_BAD_BUNDLE)
    info_dir = info_dirs.pop()
    for info in infos:
        rel = wheel_destination(safe_member_path(info.filename), site_rel)
        if info.filename in (info_dir + "/RECORD", info_dir + "/INSTALLER"):
            continue
        script = rel.startswith("bin/") and info.filename.split("/")[0].endswith(".data")
        mode = (info.external_attr >> 16) & 0o777 or 0o644
        with archive.open(info) as source:
            writer.write(rel, source, mode | 0o755 if script else mode, time.mktime(info.date_time + (0, 0, -1)),
                         where, ShebangFix(prefix) if script else None)
        written.append(rel)
    points_member = info_dir + "/entry_points.txt"
    if points_member in archive.namelist() and archive.getinfo(points_member).file_size > 1 << 20:
        raise PmError("%s of the carried wheel %s is over 1 MiB, which no real one reaches" % (points_member, where),
                      FIX_BAD_BUNDLE)
    points = PROBE.entry_points_of(archive.read(points_member).decode("utf-8", "replace")
                                   if points_member in archive.namelist() else "")
    return info_dir, points, written


def finish_dist_info(writer, site_rel, info_dir, written):
    """INSTALLER (pm) and RECORD of an installed distribution, paths relative to site-packages, through
    writer (the prefix's Contained)."""
    import io
    site = os.path.join(writer.root, site_rel)
    lines = [os.path.relpath(os.path.join(writer.root, rel), site) + ",," for rel in written]
    lines += ["%s/INSTALLER,," % info_dir, "%s/RECORD,," % info_dir]
    for name, text in (("INSTALLER", "pm\n"), ("RECORD", "\n".join(lines) + "\n")):
        writer.write("%s/%s/%s" % (site_rel, info_dir, name), io.BytesIO(text.encode("utf-8")), 0o644, None, info_dir)


def carried_wheels(bundle, dists):
    """The dists that pack carried as wheels and that serve here: [(dist, member name)]."""
    carried = []
    for dist in dists or []:
        member = dist.get("wheel")
        if not member:
            continue
        parts = member.split("/") if isinstance(member, str) else []
        if len(parts) != 2 or parts[0] != "wheels" or not parts[1].endswith(".whl") \
                or not is_one_path_component(parts[1]) or member not in bundle.manifest.members:
            raise PmError("python-dists.json names the wheel %r, which the bundle does not hold" % (member,),
                          FIX_BAD_BUNDLE)
        carried.append((dist, member))
    return carried


def wheel_fits_here(filename):
    """A wheel's platform tag is 'any' or names this machine's processor."""
    platform_tag = filename[:-len(".whl")].split("-")[-1]
    return platform_tag == "any" or any(p.endswith(os.uname().machine) for p in platform_tag.split("."))


def drop_foreign_wheels(dists):
    """Before anything is made: the carried wheels compiled for another machine are named, and their
    distributions treated as not carried (an index, where there is one, may serve them)."""
    foreign = [d for d in dists or () if isinstance(d.get("wheel"), str) and not wheel_fits_here(d["wheel"])]
    if foreign:
        say("note: the bundle carries %s, compiled for another machine than this %s: %s not used here"
            % (", ".join(d["wheel"].rsplit("/", 1)[-1] for d in foreign), os.uname().machine,
               "it is" if len(foreign) == 1 else "they are"))
    for dist in foreign:
        del dist["wheel"]


def extract_wheels(attempt, bundle):
    """Unzip the carried wheels into the attempt's wheels/ folder, and check what they unpack to (as
    each says, which zip reading holds it to) against the caps of carried packages: at most --max-ratio
    times their size, and a number of files for that size; return the folder."""
    import shutil
    import zipfile
    folder = os.path.join(attempt.path, "wheels")
    bundle.extract_folder("wheels", folder)
    try:
        names = sorted(os.listdir(folder))
        caps = Contained.for_carried(folder, sum(os.path.getsize(os.path.join(folder, n)) for n in names),
                                     bundle.max_ratio)
        for name in names:
            try:
                with zipfile.ZipFile(os.path.join(folder, name)) as wheel:
                    infos = wheel.infolist()
            except (OSError,) + zip_damage() as exc:
                raise PmError("the carried wheel %s is not a readable zip (%s)" % (name, exc),
                              FIX_BAD_BUNDLE)
            check_zip_readable(infos, "the carried wheel %s" % name)
            caps.count(sum(i.file_size for i in infos), len(infos), "the carried wheel %s" % name)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def install_carried_wheels(attempt, bundle, prefix, dists):
    """Into a conda or carried prefix: every wheel the bundle carries, offline, by pm's installer."""
    import shutil
    carried = carried_wheels(bundle, dists)
    if not carried:
        return []
    folder = extract_wheels(attempt, bundle)
    rows = []
    try:
        writer = Contained.for_carried(prefix, sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)),
                                       bundle.max_ratio)
        for dist, member in carried:
            attempt.log("installing %s into %s" % (member, prefix))
            install_wheel(os.path.join(folder, member.split("/")[1]), prefix, dist["site"], writer)
            rows.append(dist_row(dist, dist["version"], "installed", "wheel carried in the bundle (%s on the base), "
                                 "installed by pm's own wheel installer" % dist.get("source"), "pm"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    say("installed the %d distribution%s pip had installed on the base, from the wheels the bundle carries"
        % (len(rows), "s" * (len(rows) != 1)))
    return rows


def link_software(site, dist, tree):
    """The software as the base had it installed, from the migrated tree: a .pth that puts its
    import roots on the path and a dist-info (metadata, entry points) naming the tree, written by the
    prefix's containment writer (site is PREFIX/lib/pythonX.Y/site-packages; entry points go to PREFIX/bin)."""
    import io
    where = "the software %s" % dist["name"]
    check_dist_paths(dist, where)
    roots = []
    for root in dist.get("import_roots") or ["."]:
        roots.append(os.path.join(tree, *[p for p in root.split("/") if p not in ("", ".")]))
        if re.search(CONTROL_OR_NEWLINE, roots[-1]):  # a line of the .pth: a newline would add another
            raise PmError("the software's folder %r holds a control character or newline" % tree,
                          "move it to a plain folder name")
    prefix = os.path.dirname(os.path.dirname(os.path.dirname(site)))
    site_rel = os.path.relpath(site, prefix)
    if not re.match(SITE_REL, site_rel):
        raise PmError("%s would go to %s, which is not PREFIX/lib/pythonX.Y/site-packages" % (where, site),
                      "report it")
    writer = Contained(prefix)
    name = PROBE.wheel_escape(dist["name"])
    info_dir = "%s-%s.dist-info" % (name, PROBE.wheel_escape(dist["version"], True))
    pth = "__pm_software__%s.pth" % name
    module = "__pm_software__%s_finder" % name.replace(".", "_")
    for entry in (pth, info_dir, module + ".py"):  # an earlier link of the software (the tested tree, before the install)
        if os.path.lexists(os.path.join(site, entry)):
            shutil_remove(os.path.join(site, entry))
    from urllib.request import pathname2url
    finder = software_finder(dist, roots)  # only the packages the base's editable finder exposed, not their folder
    metadata = dist.get("metadata") if isinstance(dist.get("metadata"), str) else None
    metadata = metadata or "Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (dist["name"], dist["version"])
    direct_url = json.dumps({"url": "file://" + pathname2url(tree), "dir_info": {"editable": True}}, sort_keys=True)
    points = PROBE.entry_points_of(dist.get("entry_points") if isinstance(dist.get("entry_points"), str) else "")
    files = [(module + ".py", finder), (pth, "import %s\n" % module)] if finder else [(pth, "".join(r + "\n" for r in roots))]
    files += [(info_dir + "/METADATA", metadata),
             (info_dir + "/direct_url.json", direct_url)] + ([(info_dir + "/entry_points.txt", dist["entry_points"])]
                                                            if points else [])
    written = []
    for rel, text in files:
        writer.write(site_rel + "/" + rel, io.BytesIO(text.encode("utf-8", "surrogateescape")), 0o644, None, where)
        written.append(site_rel + "/" + rel)
    for command, target in points:
        written.append(write_entry_point(writer, command, target, "the software's entry points"))
    finish_dist_info(writer, site_rel, info_dir, written)


SOFTWARE_FINDER = '''"""Written by pm: the software's own packages from its migrated tree, and nothing else of it."""
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

MAPPING = %r


class PmSoftwareFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        where = MAPPING.get(name)
        if where is None:
            return None
        if not os.path.isdir(where):
            return importlib.util.spec_from_file_location(name, where)
        init = os.path.join(where, "__init__.py")
        if os.path.isfile(init):
            return importlib.util.spec_from_file_location(name, init, submodule_search_locations=[where])
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [where]
        return spec


if not any(getattr(finder, "pm_mapping", None) == MAPPING for finder in sys.meta_path):
    FINDER = PmSoftwareFinder()
    FINDER.pm_mapping = MAPPING
    sys.meta_path.append(FINDER)
'''


def software_finder(dist, roots):
    """The source of a finder module exposing just the packages the base's editable finder mapped
    (import_packages), found under the import roots in the migrated tree; None when there are none."""
    mapping = {}
    for package in dist.get("import_packages") or []:
        if not isinstance(package, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*\Z", package):
            raise PmError("python-dists.json names the import package %r, which is not a Python name"
                          % str(package)[:60], FIX_BAD_BUNDLE)
        for root in roots:
            for where in (os.path.join(root, package), os.path.join(root, package + ".py")):
                if package not in mapping and os.path.exists(where):
                    mapping[package] = where
    return SOFTWARE_FINDER % (mapping,) if mapping else None


def link_software_dists(attempt, site, dists, tree, when):
    """Link every distribution of the software to tree (the tested copy, then the installed one)."""
    rows = []
    for dist in software_dists(dists):
        if not site:
            say("warning: %s %s is the software, and this environment has no site-packages to install it into"
                % (dist["name"], dist["version"]))
            continue
        if not dist.get("import_roots"):  # an older bundle: where its package lives in the tree, and its site here
            module = re.sub(r"[-.]+", "_", dist["name"]).lower()
            roots = PROBE.tree_roots([module + "/__init__.py", module + ".py"], tree, "")
            dist = dict(dist, import_roots=[roots[0] or "."], import_packages=[module] if roots[0] else [],
                        site=os.path.relpath(site, os.path.dirname(os.path.dirname(os.path.dirname(site)))))
        link_software(site, dist, tree)
        attempt.log("linked the software %s %s to %s" % (dist["name"], dist["version"], tree))
        say("%s %s is the software: installed editable from the %s %s (never from an index)"
            % (dist["name"], dist["version"], when, tree))
        rows.append(dist_row(dist, dist["version"], "installed", "the software itself, editable from the migrated tree",
                             "pm"))
    return rows


def env_site_packages(prefix, dists):
    """The site-packages folder of a prefix or venv: the base's when it exists here, else the one there is."""
    for dist in dists or []:
        if os.path.isdir(os.path.join(prefix, dist["site"])):
            return os.path.join(prefix, dist["site"])
    found = PROBE.site_packages(prefix)
    return found[0] if found else None


# == pip's resolve =============================================================
# The pins in one resolve; when pip fails, pm reads pip's own words and relaxes only what they name,
# then the direct requirements alone, then each on its own; uv when it is here; the venv of the pip route.


PIP_NOT_FOUND = (r"satisfies the requirement ([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*(?:==\s*\S+)?\s*"
                 r"\(from versions: ([^)]*)\)")


def pip_not_found(output):
    """(name, versions the index has) of the requirement pip says it cannot find, else None."""
    match = re.search(PIP_NOT_FOUND, output)
    if not match:
        return None
    return match.group(1), [v.strip() for v in match.group(2).split(",") if v.strip() and v.strip() != "none"]


def pip_build_failure(output):
    """The names of what pip could not build (its metadata or its wheel), from pip's own words, else []."""
    names = re.findall(r"(?:Failed building wheel for|Failed to build|Could not build wheels for) "
                       r"([A-Za-z0-9][A-Za-z0-9._-]*)", output)
    first_error = output.find("subprocess-exited-with-error")
    if not names and first_error >= 0:
        fetched = re.findall(r"(?m)^\s*(?:Collecting|Processing|Downloading|Obtaining) (\S+)", output[:first_error])
        if fetched:
            last = fetched[-1].rstrip("/").rsplit("/", 1)[-1]
            archive = re.match(r"^(.+?)-(\d[^-]*)\.(tar\.gz|tar\.bz2|zip|tgz)$", last)
            names = [archive.group(1) if archive else spec_name(re.split(r"[=<>!~\[;]", last)[0])]
    return [n for n in names if re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*\Z", n)]


def pip_conflict(output):
    """(the names the user requested that pip's conflict report names, its lines), else ([], [])."""
    start = output.find("The conflict is caused by:")
    if start < 0:
        return [], []
    lines = []
    for line in output[start:].splitlines()[1:]:
        if not line.strip():
            break
        lines.append(line.strip())
    requested = [m.group(1) for m in (re.match(r"^The user requested ([A-Za-z0-9][A-Za-z0-9._-]*)", l) for l in lines)
                 if m]
    return requested, lines


def pip_diagnosis(output, pins):
    """What pip's failure names, as (key, kind, detail) for pins it names: 'build' (cannot be built here),
    'notfound' (detail: the versions there are), 'conflict' (detail: pip's lines); [] when it names none."""
    built = [pip_name(n) for n in pip_build_failure(output)]
    if built:
        return [(key, "build", None) for key in built if key in pins]
    missing = pip_not_found(output)
    if missing:
        return [(pip_name(missing[0]), "notfound", missing[1])] if pip_name(missing[0]) in pins else []
    requested, lines = pip_conflict(output)
    return [(pip_name(name), "conflict", lines) for name in requested if pip_name(name) in pins]


class PipPin(object):
    """One Python distribution as pip is asked for it: the base's record (dist), the name and version
    asked (version None: any), and what the levels learn of it (relax)."""

    def __init__(self, dist, name, version, fixed, why, direct):
        self.dist, self.name, self.version, self.why, self.direct = dist, name, version, why, direct
        self.fixed = fixed  # chosen in the answers file: never relaxed
        self.steps = 0  # relaxations so far
        self.binary = False  # wheels only (--only-binary)
        self.listed = None  # the versions pip listed for it, once it named it not found
        self.failure = None  # why it did not install, once known
        self.level = None  # the level that left it to pip's resolve of others
        self.file = None  # the carried wheel, offered instead of the index

    def line(self):
        """A requirements line: the carried wheel's path, else NAME==VERSION (NAME alone with no version)."""
        if self.file:
            return self.file
        return "%s==%s" % (self.name, self.version) if self.version else self.name

    def fail(self, reason):
        """Record why it did not install, unless an earlier reason was found."""
        self.failure = self.failure or reason

    def relax(self, attempt, kind, detail):
        """Relax the pin after pip named it (kind 'build', 'notfound' or 'conflict', pip_diagnosis);
        return False when nothing is left to try (it is dropped)."""
        self.steps += 1
        if self.fixed or self.steps > 4:
            return False
        note = self.only_wheels() if kind == "build" else self.nearest_version(detail) if kind == "notfound" \
            else self.any_version(detail)
        if not note:
            return False
        say("  " + note)
        attempt.log("pip: " + note)
        return True

    def only_wheels(self):
        if self.binary:
            return None
        self.binary = True  # its wheels only: pip then lists the versions that have one
        self.failure = "pip cannot build %s %s here and finds no wheel of it for this Python" % (self.name, self.version)
        return "%s %s cannot be built here: trying its wheels only" % (self.name, self.version)

    def nearest_version(self, detail):
        if self.binary and not detail and self.listed:
            self.binary = False  # no wheel at all: the nearest version, as pip can get it
            detail = self.listed
        if not detail:
            self.failure = "pip finds no %s==%s here and no other version" % (self.name, self.version)
            return None
        if not self.listed:
            self.listed, self.binary = detail, True
        base = self.dist["version"]
        nearest = sorted(detail, key=lambda v: version_distance(v, base))[0]
        note = "%s %s is not on the index for this Python and platform: relaxed to %s" % (self.name, self.version,
                                                                                         nearest)
        self.why = "relaxed: %s is not on the index here, %s is the nearest%s" % (
            base, nearest, " with a wheel" if self.binary else "")
        self.version = nearest
        return note

    def any_version(self, detail):
        if not self.version:
            return None
        note = "%s %s conflicts with what the other pins need (%s): relaxed to any version pip finds" % (
            self.name, self.version, "; ".join(detail)[:300])
        self.why = "relaxed for a conflict: %s" % "; ".join(detail)[:300]
        self.version, self.binary = None, True
        return note


PIP_ROUNDS = 8


PIP_UNREACHABLE = (r"(NewConnectionError|Network is unreachable|Temporary failure in name resolution|Name or service "
                   r"not known|ProxyError|SSLError|Could not fetch URL)")


def write_pins(attempt, pins):
    """pip-requirements.txt in the attempt: a line for each pin (PipPin.line), by key; returns its path."""
    requirements = os.path.join(attempt.path, "pip-requirements.txt")
    write_atomic(requirements, "".join(p.line() + "\n" for key, p in sorted(pins.items())))
    return requirements


def resolve_pins(attempt, python, pins, label, rounds=PIP_ROUNDS, extra=()):
    """One pip install of pins (key -> PipPin), relaxing what pip names (PipPin.relax) and trying again, at
    most rounds times; pins pip names and that cannot be relaxed are dropped (their failure says why).
    Returns (True when pip succeeded, pip's last words; None when pip cannot reach its index)."""
    last = ""
    for _ in range(rounds):
        if not pins:
            return True, ""
        requirements = write_pins(attempt, pins)
        binary = sorted(key for key, p in pins.items() if p.binary and not p.file)
        say("installing %d Python distribution%s with pip (%s)..." % (len(pins), "s" * (len(pins) != 1), label))
        code, output = attempt.run([python, "-m", "pip", "install", "--disable-pip-version-check", "-r", requirements]
                                   + (["--only-binary", ",".join(binary)] if binary else []) + list(extra))
        if code == 0:
            return True, ""
        last = (output.strip().splitlines() or ["exit %d" % code])[-1][:300]
        unreachable = re.search(r"(?m)^.*%s.*$" % PIP_UNREACHABLE, output)
        if unreachable:  # no later level can do better: each would wait for the index again
            reason = "pip cannot reach its index (%s)" % unreachable.group(0).strip()[:200]
            for pin in pins.values():
                pin.fail(reason)
            say("  " + reason)
            return False, None
        named = pip_diagnosis(output, pins)
        if not named:
            say("  pip failed: %s" % last)
            return False, last
        for key, kind, detail in named:
            if not pins[key].relax(attempt, kind, detail):
                pin = pins.pop(key)
                pin.fail("pip failed on it: %s" % last)
                say("  %s: %s" % (pin.name, pin.failure))
                attempt.log("pip: dropped %s: %s" % (pin.name, pin.failure))
    return False, last


def pip_installed(attempt, python):
    """pip's own list of what is installed in the venv: PEP 503 name -> version."""
    code, output = attempt.run([python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"])
    start = output.find("[")
    try:
        listed = json.loads(output[start:output.rfind("]") + 1]) if code == 0 and start >= 0 else []
    except ValueError:
        listed = []
    return dict((pip_name(d["name"]), d["version"]) for d in listed if isinstance(d, dict) and "name" in d)


def pip_pins(attempt, bundle, dists, options, manager):
    """(pins: key -> PipPin for what pip installs, rows for what it does not): answers applied, the carried
    wheels offered first (the very file the base had, never the index's namesake)."""
    pins, rows = {}, []
    for dist in dists:
        answer = options.answers.get(dist["name"]) or options.answers.get(dist.get("owner") or "")
        if answer and not answer.manager_key:
            rows.append(dist_row(dist, None, "skipped", "answers file", manager))
            continue
        if answer and not FAMILIES.get(manager_family(answer.manager_key, ""), OTHER_FAMILY).pip_like:
            continue  # answered for another manager: the package managers' loop installs it
        if not answer and not dist.get("wheel") and dist.get("source") not in ("index", "conda", "unknown", None):
            rows.append(dist_row(dist, None, "failed", "installed from %s on the base, not from an index, and not "
                                 "carried: pack with --with-packages to carry it" % (dist.get("url") or dist["source"]),
                                 manager))
            continue  # an index's project of that name is another thing
        name, version = (answer.package, answer.version) if answer else (dist["name"], dist["version"])
        pins[pip_name(name)] = PipPin(dist, name, version, bool(answer), "answers file" if answer else
                                      dist.get("why", ""), bool(answer) or dist.get("direct", True))
    return pins, rows


def uv_here(python):
    """uv (on PATH, or beside the environment's Python) and pip's index settings as uv's flags, when
    pip's settings are all in the environment (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS,
    PIP_NO_INDEX) and no pip configuration file is in force that uv would not read; else None."""
    import shutil
    uv = shutil.which("uv") or (os.path.join(os.path.dirname(python), "uv")
                                if os.access(os.path.join(os.path.dirname(python), "uv"), os.X_OK) else None)
    if not uv:
        return None
    config = os.environ.get("PIP_CONFIG_FILE")
    if config != os.devnull and (config or any(os.path.isfile(p) for p in (
            "/etc/pip.conf", os.path.expanduser("~/.pip/pip.conf"), os.path.expanduser("~/.config/pip/pip.conf")))):
        return None
    flags = []
    if os.environ.get("PIP_NO_INDEX", "").lower() in ("1", "true", "yes"):
        flags.append("--no-index")
    if os.environ.get("PIP_INDEX_URL"):
        flags += ["--index-url", os.environ["PIP_INDEX_URL"]]
    for url in os.environ.get("PIP_EXTRA_INDEX_URL", "").split():
        flags += ["--extra-index-url", url]
    for place in os.environ.get("PIP_FIND_LINKS", "").split():
        flags += ["--find-links", place]
    return [uv] + flags


def install_with_uv(attempt, python, pins, extra):
    """The exact set in one resolve by uv, where it is here (uv_here): True when it installed it all."""
    uv = uv_here(python)
    if not uv or not pins:
        return False
    requirements = write_pins(attempt, pins)
    say("installing %d Python distribution%s with uv (every one pinned to the base's version, one resolve)..."
        % (len(pins), "s" * (len(pins) != 1)))
    code, output = attempt.run([uv[0], "pip", "install", "--python", python, "-r", requirements] + uv[1:] + extra)
    if code != 0:
        say("  uv could not install them all (%s): pip tries, relaxing what it names"
            % (output.strip().splitlines() or ["exit %d" % code])[-1][:200])
    return code == 0


def install_each(attempt, python, pins, extra):
    """The last level: each pin on its own, so what can install does; when pip fails the same way for
    three in a row (an index that answers nothing), the rest are not tried and say so."""
    same, previous = 0, None
    for key in sorted(pins):
        if same >= 3:
            pins[key].fail("not tried on its own: pip failed the same way for three before it (%s)" % previous)
            continue
        done, last = resolve_pins(attempt, python, {key: pins[key]}, "%s on its own" % pins[key].name, rounds=3,
                                  extra=extra)
        if last is None:
            previous, same = "pip cannot reach its index", 3
            continue
        same, previous = (same + 1, last) if not done and last == previous else (int(not done), last)


def install_with_pip(attempt, bundle, dists, options, manager="pip", prefix=None):
    """Every Python distribution of the base into the software's venv, level by level: all of them
    pinned to the base's versions in one resolve (what pip names relaxed, resolve_pins); if that fails,
    the direct requirements alone; then each remaining one on its own, so one failing pin never
    empties the environment. Returns requirement rows read back from pip."""
    import shutil
    python = os.path.join(prefix or software_venv(attempt), "bin", "python")
    extra = ["--prefix", prefix] if prefix else []  # a conda environment: pip installs into it, whatever its Python
    pins, rows = pip_pins(attempt, bundle, dists, options, manager)
    if not pins:
        return rows
    everything = dict(pins)
    folder = offer_carried_wheels(attempt, bundle, dists, pins)
    try:
        installer = "uv" if install_with_uv(attempt, python, pins, extra) else manager
        last = "" if installer == "uv" else install_level_by_level(attempt, python, pins, extra)
    finally:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
    got = pip_installed(attempt, python)
    rows += [pin_row(pin, got.get(key), installer, manager, last) for key, pin in sorted(everything.items())]
    say_what_pip_installed(installer, rows)
    return rows


def offer_carried_wheels(attempt, bundle, dists, pins):
    """The wheels the bundle carries, unzipped into the attempt and offered for their pins (never for one
    the answers file fixed); returns their folder, or None when it carries none."""
    carried = dict((pip_name(d["name"]), member) for d, member in carried_wheels(bundle, dists))
    if not carried:
        return None
    folder = extract_wheels(attempt, bundle)
    for key, member in carried.items():
        if key in pins and not pins[key].fixed:
            pins[key].file = os.path.join(folder, member.split("/")[1])
            pins[key].why += "; its wheel carried in the bundle"
    return folder


def install_level_by_level(attempt, python, pins, extra):
    """pip's levels: every pin in one resolve, then the direct requirements alone, then each on its own;
    returns pip's last words ('' when a level installed them all, None when it cannot reach its index)."""
    done, last = resolve_pins(attempt, python, pins, "every one pinned to the base's version, one resolve",
                              extra=extra)
    if done or last is None:
        return last
    direct = dict((k, p) for k, p in pins.items() if p.direct)
    if direct and len(direct) < len(pins):
        say("pip could not install the whole set: trying the direct requirements alone")
        attempt.log("pip: level direct (%d of %d)" % (len(direct), len(pins)))
        for key in set(pins) - set(direct):
            pins[key].level = "left to pip's resolve of the direct requirements"
        done, last = resolve_pins(attempt, python, direct, "the direct requirements", extra=extra)
    if not done and last is not None:
        say("pip could not install them together: trying each on its own")
        attempt.log("pip: level each")
        install_each(attempt, python, pins, extra)
    return last


def pin_row(pin, have, installer, manager, last):
    """The row of one pin, read back from pip (have: the version installed, or None)."""
    if have:
        why = pin.why
        if have != pin.dist["version"] and not why.startswith("relaxed"):
            why = "%s; pip chose %s (%s)" % (why, have, pin.level or "the base's version did not install")
        return dist_row(pin.dist, have, "installed", why, installer)
    why = pin.failure or ("%s, which did not bring it" % pin.level if pin.level else
                          "not installed: %s" % last if last else "pip did not install it")
    row = dist_row(pin.dist, None, "failed", why, manager)
    row.package = "%s:%s%s" % (manager, pin.name, "=" + pin.version if pin.version else "")
    return row


def say_what_pip_installed(installer, rows):
    installed = [r for r in rows if r.status == "installed"]
    drifted = [r for r in rows if r.drift]
    say("%s: %d distributions installed, %d at the base's version, %d differ%s" % (
        installer, len(installed), len([r for r in installed if not r.drift]), len(drifted),
        ": " + ", ".join("%s %s -> %s" % (r.requirement, r.base_version, r.version) for r in drifted)
        if drifted else ""))


def base_interpreter(base_version):
    """(an interpreter of the base's Python minor version that runs here, or None): pythonX.Y on
    PATH (e.g. after 'module load python/3.11'), then pyenv's and uv's installs."""
    import glob
    import shutil
    wanted = ".".join(base_version.split(".")[:2])
    places = [shutil.which("python" + wanted)]
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    places += sorted(glob.glob(os.path.join(pyenv_root, "versions", wanted + ".*", "bin", "python" + wanted)),
                     reverse=True)
    uv_root = os.environ.get("UV_PYTHON_INSTALL_DIR") or os.path.expanduser("~/.local/share/uv/python")
    places += sorted(glob.glob(os.path.join(uv_root, "cpython-%s.*" % wanted, "bin", "python" + wanted)), reverse=True)
    for place in places:
        if not place:
            continue
        answer = ask([place, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"], 30)
        if answer is not None and answer.decode("utf-8", "replace").strip() == wanted:
            return place
    return None


def software_venv(attempt):
    """The software's own virtual environment, in the attempt's store, made on first use with an
    interpreter of the base's Python version when this machine has one, else pm's own."""
    import platform
    import shutil
    venv = os.path.join(attempt.path, "venv")
    if os.path.isdir(venv):
        return venv
    base = attempt.base_python
    python = base_interpreter(base) if base else None
    say("creating the software's virtual environment %s" % venv)
    code, output = make_venv(attempt, python, venv) if python else (1, "")
    if python and code != 0:
        attempt.log("%s cannot make a virtual environment: %s" % (python, output.strip()[-200:]))
        shutil.rmtree(venv, ignore_errors=True)
    if not python or code != 0:
        python = sys.executable
        code, output = make_venv(attempt, python, venv)
    if code != 0:
        raise PmError("cannot create a virtual environment: %s" % output.strip()[-200:],
                      "install the venv module (e.g. apt install python3-venv)", code=1)
    if base and python != sys.executable:
        say("the base ran Python %s: the software's virtual environment uses %s" % (base, python))
    elif base and ".".join(base.split(".")[:2]) != "%d.%d" % sys.version_info[:2]:
        say("note: the base ran Python %s and this machine has no working python%s (PATH, pyenv, uv): the "
            "software's virtual environment uses Python %s" % (base, ".".join(base.split(".")[:2]),
                                                               platform.python_version()))
    attempt.save(venv_python=python)
    return venv


def make_venv(attempt, python, venv):
    """(exit code, output): `python -m venv --without-pip`, then pip added as venv adds it (add_pip)."""
    code, output = attempt.run([python, "-m", "venv", "--without-pip", venv])
    return add_pip(attempt, os.path.join(venv, "bin", "python"), venv) if code == 0 else (code, output)


# the Python's minor version, then the wheels its ensurepip installs (pip, and setuptools before 3.12;
# the newest of each), from the folder ensurepip prefers: the system's WHEEL_PKG_DIR (Debian's
# /usr/share/python-wheels), else its own _bundled
ENSUREPIP_WHEELS = """import ensurepip, glob, os, sys, sysconfig
def newest(folder, name):
    found = glob.glob(os.path.join(glob.escape(folder), name + "-*.whl"))
    version = lambda wheel: [int(p) if p.isdigit() else -1 for p in os.path.basename(wheel).split("-")[1].split(".")]
    return sorted(found, key=version)[-1:]
print("%d.%d" % sys.version_info[:2])
names = ("setuptools", "pip")[sys.version_info >= (3, 12):]
for folder in (sysconfig.get_config_var("WHEEL_PKG_DIR"), os.path.join(os.path.dirname(ensurepip.__file__), "_bundled")):
    wheels = sum([newest(folder, name) for name in names], []) if folder else []
    if len(wheels) == len(names):
        print("\\n".join(wheels))
        break
"""


def add_pip(attempt, python, prefix):
    """(exit code, output): pip (and setuptools before Python 3.12) into prefix, from the wheels its
    Python's ensurepip would install, which pm's wheel installer unpacks without byte-compiling them
    (about 1 s where ensurepip takes 5); ensurepip itself when that Python has none to show."""
    answer = ask([python, "-I", "-c", ENSUREPIP_WHEELS], 60)
    lines = answer.decode("utf-8", "replace").splitlines() if answer else []
    version, wheels = (lines or [""])[0], lines[1:]
    site_rel = "lib/python%s/site-packages" % version
    if re.match(r"^[0-9]+\.[0-9]+\Z", version) and wheels and os.path.isdir(os.path.join(prefix, site_rel)):
        writer = Contained(prefix)
        try:
            for wheel in wheels:
                install_wheel(wheel, prefix, site_rel, writer, python_version=version)
            attempt.log("added %s to %s" % (", ".join(wheels), prefix))
            return 0, ""
        except (PmError, OSError) as exc:
            attempt.log("cannot add pip from %s (%s): running ensurepip" % (", ".join(wheels), exc))
    return attempt.run([python, "-I", "-m", "ensurepip", "--upgrade", "--default-pip"])  # as venv runs it


def conda_env_pip_part(attempt, bundle, prefix, base, options, carried):
    """What pip installed on the base (and the bundle does not carry), into a conda environment as on
    the pip route (install_with_pip, with the environment's own Python; its pip from ensurepip when
    conda's channels had none). Returns its rows."""
    wanted = [d for d in base.pip if not d.get("owner") and not d.get("wheel")]
    python = os.path.join(prefix, "bin", "python")
    if not wanted:
        return []
    if carried:  # from the bundle's own packages: an air-gapped target, no index to ask
        say("note: the packages pip installed on the base (%s) are not carried (packed by an older pm or without "
            "--with-packages); they are left out" % ", ".join(d["name"] for d in wanted))
        return [dist_row(d, None, "failed", "pip installed it on the base and the bundle does not carry it: pack "
                         "with --with-packages to carry it") for d in wanted]
    if not os.path.isfile(python):
        return [dist_row(d, None, "failed", "the environment has no Python for pip to install it into")
                for d in wanted]
    if attempt.run([python, "-m", "pip", "--version"])[0] != 0:
        say("the environment has no pip: adding it from its own Python (ensurepip)")
        code, output = add_pip(attempt, python, prefix)
        if code != 0:
            return [dist_row(d, None, "failed", "the environment has no pip, and ensurepip failed: %s"
                             % (output.strip().splitlines() or [""])[-1][:200]) for d in wanted]
    return install_with_pip(attempt, bundle, wanted, options, prefix=prefix)


# == The account ================================================================
# Every package of the base ends in one row: installed at its version, at another (drift, with why), or
# not installed (failed, skipped, missing, with why); the environment's own Python beside pm's.


def missing_rows(base, result, software, why_missing):
    """A row for every package of the base (base: BaseRequirements) that no row of the route accounts
    for (status 'missing', with why_missing(name, version, python) saying why), so each base package
    ends in exactly one row."""
    covered = covered_names(result, software)
    here = (result.get("platform") or {}).get("env_python")
    rows = []
    for name, version, pypi in base_packages(base, covered):
        if pip_name(name) in covered or (pypi and pip_name(pypi) in covered):
            continue
        covered.add(pip_name(name))
        if name == "python" and here:
            rows.append(RequirementRow(name, "installed", base_version=version or None, version=here,
                                       why="the environment's own Python", drift=bool(version) and version != here))
            continue
        why = "conda's own package: not part of the software's environment" if name in CONDA_OWN_PACKAGES else \
            "pip itself: the environment's own pip stands for it" if name == "pip" else why_missing(name, version, pypi)
        rows.append(RequirementRow(name, "missing", base_version=version or None, version=None, why=why, drift=False))
    return rows


def covered_names(result, software):
    """The PEP 503 names the route's rows (and the environment it made) account for."""
    covered = set(pip_name(d["name"]) for d in software)
    for row in (result.get("packages") or []) + (result.get("python") or []):
        covered.add(pip_name(row["requirement"]))
        covered.add(pip_name(row.get("conda") or "-"))
    return covered | set(pip_name(p["name"] or "-") for p in result.get("environment") or [])


def base_packages(base, covered):
    """Every package of the base as (name, version, PyPI name or None): its conda records, then the
    distributions python-dists.json records that no conda package accounted for (covered) installs."""
    found = [(r["name"], r["version"], conda_pypi_name(r["name"], r["build_string"], channel=r["channel"]))
             for r in base.records]
    return found + [(d["name"], d["version"], d["name"]) for d in base.dists or []
                    if not d.get("owner") or pip_name(d["owner"]) not in covered]


def record_env_pythons(attempt, bundle, environ):
    """The environment's own Python here beside the base environment's (not the ones pm ran under),
    and what kind of environment each is (the base's as pack read it: conda, a conda-style prefix read
    without conda, a venv; here: the route that made it)."""
    prefix = attempt.result.get("env_prefix") or (environ or {}).get("VIRTUAL_ENV")
    python = os.path.join(prefix, "bin", "python") if prefix else None  # its own, never one found on PATH
    code, output = attempt.run([python, "-c", "import platform; print(platform.python_version())"], environ=environ) \
        if python and os.path.exists(python) else (1, "")
    here = output.strip().splitlines()[-1] if code == 0 and output.strip() else None
    level = attempt.result.get("level")
    kind = "a prefix pm linked without conda" if level == "carried" else \
        "conda %s environment (level %s)" % ((attempt.result.get("platform") or {}).get("conda", ""), level) \
        if level else "a virtual environment (pip)" if (environ or {}).get("VIRTUAL_ENV") else "the system's packages"
    source = attempt.result.get("source") or {}
    base_kind = source.get("env_kind") or ("conda %s environment" % source["conda"] if source.get("conda") else None)
    attempt.save(platform=dict(attempt.result.get("platform") or {}, env_python=here, env_kind=kind),
                 source=dict(source, env_python=base_python_version(bundle), env_kind=base_kind))


def route_why_missing(result, managers):
    """why_missing for missing_rows: what the route that ran did, for a package it did not bring."""
    level = result.get("level")
    if level == "carried":
        return lambda name, version, pypi: "not among the packages the bundle carries"
    if level:
        return lambda name, version, pypi: "not in the environment conda made here (level %s%s)" % (
            level, "" if level == "exact" else ": the base's exact set did not solve here")
    systems = [m for m in managers if m != "conda" and not FAMILIES.get(manager_family(m, ""), OTHER_FAMILY).pip_like]

    def why(name, version, pypi):
        if pypi:
            return "a Python package that pip was not given (its records hold no version)"
        if systems:
            return "not a Python package and not directly required: left to what %s installs for the direct " \
                   "requirements" % ", ".join(systems)
        return "not a Python package, and pip cannot install it: add a system package manager (apt, dnf, brew, " \
               "spack) to package_managers for it"
    return why


# == Modulefiles: a module to load ============================================
# With modulefiles = DIR in the test configuration (or --modulefiles DIR), a passed install writes
# DIR/NAME/VERSION.lua (Lmod) and DIR/NAME/VERSION (Tcl, Environment Modules): what the route's
# activation does (the environment's bin first on PATH, CONDA_PREFIX or VIRTUAL_ENV, what conda's
# activate.d scripts set) and a conflict with the software's other versions. Each file's first lines
# name the attempt that wrote it; the attempt's result.json lists them, and whatever removes the
# attempt's environment (a later pass, prune) removes the files that still name it.

MODULE_VERSION = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}\Z"  # a plain version: one path component, no '..'
MODULE_MARK = "pm: written for attempt %s"  # on each modulefile's second line
ACTIVATE_D = "etc/conda/activate.d"
ENV_NOISE = ("_", "SHLVL", "PWD", "OLDPWD")  # what a shell changes by itself


def module_version(bundle, dists, attempt):
    """The software's version (python-dists.json's software record), else the bundle's revision
    (0003 of the store's 0003.zip), else the attempt's id; always a plain version."""
    version = next((str(d.get("version")) for d in software_dists(dists) if d.get("version")), None)
    if version and re.match(MODULE_VERSION, version) and ".." not in version:
        return version
    if version:
        say("warning: the software's version %r is not a plain version; its modulefile is named after the "
            "bundle" % (version,))
    revision = os.path.basename(bundle.path)[:-len(".zip")] if bundle.path.endswith(".zip") else ""
    in_store = os.path.dirname(bundle.path) == attempt.store.bundles_dir(attempt.name)
    return revision if in_store and re.match(MODULE_VERSION, revision) else attempt.id


def activate_d_changes(prefix, environ):
    """{name: (before, after)} for what the prefix's activate.d scripts change, run by bash in a
    subshell (env -0 before and after), as the tests had them."""
    import glob
    scripts = sorted(glob.glob(os.path.join(prefix, ACTIVATE_D, "*.sh")))
    if not scripts:
        return {}, []
    script = 'env -0; printf "\\0pm-after\\0"; %s env -0' % "".join('. %s; ' % shlex.quote(s) for s in scripts)
    before, _, after = (ask(["bash", "-c", script], 60, environ) or b"").partition(b"\0pm-after\0")

    def parse(data):
        return dict(item.decode("utf-8", "replace").split("=", 1) for item in data.split(b"\0") if b"=" in item)
    before, after = parse(before), parse(after)
    changes = dict((key, (before.get(key), after.get(key))) for key in set(before) | set(after)
                   if before.get(key) != after.get(key) and key not in ENV_NOISE)
    return changes, scripts


def quoted(text, specials, control):
    """text as a double-quoted string of a modulefile's language: specials escaped with a backslash,
    control characters in that language's numeric escape (control % code)."""
    out = []
    for char in str(text):
        out.append("\\" + char if char in specials else control % ord(char) if ord(char) < 32 or ord(char) == 127
                   else char)
    return '"%s"' % "".join(out)


def lua_string(text):
    return quoted(text, '\\"', "\\%03d")


def tcl_string(text):
    return quoted(text, '\\"$[]{}', "\\u%04x")


def module_lines(attempt, bundle, environ, tests, version, installed):
    """(variables set, paths prepended, activate.d scripts, changes they make, whatis, help)."""
    prefix = attempt.result.get("env_prefix")
    venv = environ.get("VIRTUAL_ENV")
    variables, paths = [], []
    if venv:
        paths.append(("PATH", os.path.join(venv, "bin")))
        variables.append(("VIRTUAL_ENV", venv))
    elif prefix:
        paths.append(("PATH", os.path.join(prefix, "bin")))
        variables += [("CONDA_PREFIX", prefix), ("CONDA_DEFAULT_ENV", environ.get("CONDA_DEFAULT_ENV") or prefix)]
    changes, scripts = activate_d_changes(prefix, environ) if prefix and not venv else ({}, [])
    source = bundle.manifest.source if isinstance(bundle.manifest.source, dict) else {}
    base = "%s (%s)" % (source.get("hostname") or "an unknown machine", source.get("os") or "unknown OS")
    passed = [t.name for t in tests if t.status == "passed"]
    whatis = "%s %s, migrated by pm from %s on %s" % (attempt.name, version, base, time.strftime("%Y-%m-%d"))
    helptext = "%s\ntests passed: %s\ninstalled in: %s\nattempt: %s" % (
        whatis, ", ".join(passed) if passed else "none (installed with --skip-tests)",
        installed, attempt.path)
    return variables, paths, scripts, changes, whatis, helptext


def path_change(before, after):
    """The entries a script put in front of (or after) a path variable, or None when it did more."""
    if before and after.endswith(os.pathsep + before):
        return "prepend", after[:-len(before) - 1]
    if before and after.startswith(before + os.pathsep):
        return "append", after[len(before) + 1:]
    return None


def write_modulefiles(attempt, bundle, dists, folder, environ, tests, installed):
    """DIR/NAME/VERSION.lua and DIR/NAME/VERSION, written atomically inside DIR; recorded in the
    attempt's result.json (modulefiles). Returns (DIR, NAME/VERSION)."""
    name, version = check_name(attempt.name), module_version(bundle, dists, attempt)
    folder = os.path.abspath(folder)
    os.makedirs(os.path.join(folder, name), exist_ok=True)
    where = os.path.realpath(os.path.join(folder, name))
    if os.path.dirname(where) != os.path.realpath(folder):
        raise PmError("%s/%s is not a folder inside %s" % (folder, name, folder), "remove the link, or choose another "
                      "modulefiles folder")
    variables, paths, scripts, changes, whatis, helptext = module_lines(attempt, bundle, environ, tests, version,
                                                                        installed)
    mark = MODULE_MARK % attempt.id
    lua = ["-- -*- lua -*-", "-- " + mark, "whatis(%s)" % lua_string(whatis), "help(%s)" % lua_string(helptext),
           "conflict(%s)" % lua_string(name)]
    tcl = ["#%Module1.0", "## " + mark, "module-whatis %s" % tcl_string(whatis),
           "proc ModulesHelp { } {", "    puts stderr %s" % tcl_string(helptext), "}", "conflict %s" % name]
    for key, value in variables:
        lua.append("setenv(%s, %s)" % (lua_string(key), lua_string(value)))
        tcl.append("setenv %s %s" % (key, tcl_string(value)))
    for key, value in paths:
        lua.append("prepend_path(%s, %s)" % (lua_string(key), lua_string(value)))
        tcl.append("prepend-path %s %s" % (key, tcl_string(value)))
    for script in scripts:  # Lmod runs them itself, and undoes what they did on unload
        lua.append("source_sh(%s, %s)" % (lua_string("bash"), lua_string(script)))
    for key, (before, after) in sorted(changes.items()):
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*\Z", key):
            continue
        change = path_change(before, after) if after is not None else None
        if after is None:
            tcl.append("unsetenv %s" % key)
        elif change:
            tcl.append("%s-path %s %s" % (change[0], key, tcl_string(change[1])))
        else:
            tcl.append("setenv %s %s" % (key, tcl_string(after)))
    written = []
    for path, lines in ((os.path.join(where, version + ".lua"), lua), (os.path.join(where, version), tcl)):
        write_atomic(path, "\n".join(lines) + "\n", 0o644)
        written.append(path)
    attempt.save(modulefiles=written)
    say("modulefiles: %s" % ", ".join(written))
    return folder, "%s/%s" % (name, version)


def remove_modulefiles(result):
    """Remove an attempt's modulefiles (its result.json's modulefiles) that still name it."""
    for path in (result or {}).get("modulefiles") or []:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                head = handle.read(4096).splitlines()[1:2]
        except (OSError, IndexError, TypeError):
            continue
        if head and head[0].endswith(MODULE_MARK % result.get("id")):
            remove_quietly(path)


# == Environments pm makes ====================================================
# Each install's own environment (NAME/envs/<attempt> in the store, or --prefix), its marks (made by
# pm, in use by an attempt), how the tests and users activate it, and when it goes.


PM_MADE = os.path.join("conda-meta", "pm-made")  # in the environments pm made: only those it replaces or removes


def refuse_existing_prefix(prefix):
    """A new environment's prefix is free: pm never makes one over what is there."""
    if os.path.lexists(prefix):
        raise PmError("%s exists" % prefix, "remove it, or choose another --prefix")


PM_IN_USE = os.path.join("conda-meta", "pm-in-use")  # locked (shared) by every attempt that uses the prefix


def hold_prefix(attempt, prefix):
    """This attempt uses prefix until it ends: a shared lock on its pm-in-use file."""
    attempt.holds.append(take_lock(os.path.join(prefix, PM_IN_USE), exclusive=False, mode=0o644))


def prefix_in_use(prefix):
    """True when a running attempt holds prefix (so no other attempt may remove it)."""
    return locked_elsewhere(os.path.join(prefix, PM_IN_USE), exclusive=True)


def attempt_env_prefix(store, name, attempt):
    """Where an attempt's environment goes (conda's, or pm's linker's): the software's envs/<attempt id>
    in the store, one per attempt. What an earlier attempt left there unfinished (no PM_MADE, and
    neither in use nor of a running attempt: cut off while it was made) is removed first."""
    import shutil
    folder = os.path.join(store.software(name), "envs")
    store.make_folder(folder)
    running = [a for a in store.attempts(name) if a.get("status") == "running"]
    busy = set(os.path.join(folder, a["id"]) for a in running) | set(a.get("env_making") for a in running)
    for entry in os.listdir(folder):
        left = os.path.join(folder, entry)
        if os.path.isdir(left) and not os.path.isfile(os.path.join(left, PM_MADE)) and left not in busy and \
                entry != attempt.id and not prefix_in_use(left):
            say("note: removing %s, left unfinished by an earlier attempt" % left)
            shutil.rmtree(left, ignore_errors=True)
    return os.path.join(folder, attempt.id)


def attempt_prefix(attempt, options):
    """Where this attempt makes its environment: --prefix (repair's: the install's own), else its own in
    the store (attempt_env_prefix). Recorded while the attempt runs (env_making), so that no other
    attempt takes it for a leftover before it is held (hold_prefix)."""
    prefix = os.path.abspath(options.prefix) if options.prefix else attempt_env_prefix(attempt.store, attempt.name,
                                                                                      attempt)
    attempt.save(env_making=prefix)
    return prefix


def envs_in_use(records):
    """The environments installs still run with: those their attempts' records name, whose install is
    still there and theirs (attempt_install_in_use)."""
    return set(r.get("env_prefix") for r in records if r.get("env_prefix") and attempt_install_in_use(r))


def remove_unused_envs(attempt, prefix):
    """After a pass: the software's earlier environments in the store (conda's or pm's linker's) that
    no install runs with any more (envs_in_use); an install in another output_dir keeps its own."""
    import shutil
    folder = os.path.dirname(prefix)
    records = dict((a["id"], a) for a in attempt.store.attempts(attempt.name))
    kept = envs_in_use(records.values())
    for entry in os.listdir(folder):
        path = os.path.join(folder, entry)
        if path != prefix and path not in kept and os.path.isfile(os.path.join(path, PM_MADE)) and \
                not prefix_in_use(path):
            shutil.rmtree(path, ignore_errors=True)
            remove_modulefiles(records.get(entry))  # its module would load an environment that is gone


def remove_env_folder(prefix):
    import shutil
    if os.path.lexists(prefix):
        say("removing %s, which conda had begun to make" % prefix)
        shutil.rmtree(prefix, ignore_errors=True)


def prefix_records(prefix):
    """The package records of an environment (its conda-meta/*.json, read by the probe's one reader);
    [] where it has none."""
    return PROBE.read_conda_meta(prefix) if os.path.isdir(os.path.join(prefix, "conda-meta")) else []


def env_packages(prefix, bundle=None):
    """name, version and build of every package in a prefix (its conda-meta records), with the base's
    version (the bundle's conda-list.json) beside each."""
    base = dict((record["name"], str(record.get("version"))) for record in (bundle.conda_list() if bundle else ()))
    return [{"name": record.get("name"), "version": record.get("version"), "build": record.get("build"),
             "base_version": base.get(record.get("name"))} for record in prefix_records(prefix)]


def path_activation(prefix):
    """What activation does that the tests had: the prefix's bin first on PATH, CONDA_PREFIX set."""
    return 'export PATH=%s:"$PATH" CONDA_PREFIX=%s' % (shlex.quote(os.path.join(prefix, "bin")), shlex.quote(prefix))


ACTIVATE_SCRIPTS = 'for f in "$CONDA_PREFIX"/etc/conda/activate.d/*.sh; do [ -r "$f" ] && . "$f"; done\n'


def activated_environ(prefix, env_name):
    """This process's environment with the conda environment active (PATH, CONDA_PREFIX)."""
    environ = dict(os.environ)
    environ["PATH"] = os.path.join(prefix, "bin") + os.pathsep + environ.get("PATH", "")
    environ["CONDA_PREFIX"] = prefix
    environ["CONDA_DEFAULT_ENV"] = env_name
    return environ


def note_activation_scripts(names):
    """Say once which carried packages have activation scripts: they run in the tests' shells."""
    if names:
        say("note: %s %s activation scripts (etc/conda/activate.d), which run whenever the environment is "
            "activated, the tests' shells included, as with conda" % (", ".join(names),
                                                                    "has" if len(names) == 1 else "have"))


def packages_with_activation_scripts(prefix):
    """The packages of a conda prefix whose files include etc/conda/activate.d scripts."""
    return [str(record["name"]) for record in prefix_records(prefix)
            if any(str(f).startswith("etc/conda/activate.d/") for f in record.get("files") or [])]


# == Route: the system's package managers =====================================


def environment_with_managers(attempt, config, bundle, options, env_file, min_deps, dists, base):
    """The system's package managers provide each requirement (base: the migration's BaseRequirements);
    a Provided (pip's venv stays in the attempt, with its record)."""
    attempt.base_python = base_python_version(bundle)
    packages, environ = provision_with_managers(attempt, config, bundle, env_file, min_deps, options, base)
    attempt.save(packages=rows_json(packages))
    venv = environ.get("VIRTUAL_ENV")
    if not venv:
        return Provided(packages, environ, None)
    return Provided(packages, environ, ". %s" % shlex.quote(os.path.join(venv, "bin", "activate")),
                    env_site_packages(venv, ()))


def choose_package(req, candidates, remembered, options):
    """Pick what to install for one requirement: answers file, --yes, remembered, or a prompt."""
    if req.name in options.answers:
        return options.answers[req.name], "answers file"
    if options.yes:
        if remembered:
            return remembered, "remembered"
        if candidates:
            return candidates[0].choice(req.version), "top candidate"
        return Choice(), "nothing found"
    say("%s (on the base machine%s):" % (req.name, " " + req.version if req.version else ""))
    for number, cand in enumerate(candidates, 1):
        say("  %d) %-8s %-28s %-22s %s" % (number, cand.manager.key, cand.package,
                                           cand.best_version(req.version) or "-", cand.why))
    if not candidates:
        say("  no package manager offers it")
        answer = PROBE.ask("  [s]kip it or [a]bort the migration?", "s", "--yes or --answers FILE", False)
        if answer.lower().startswith("a"):
            raise PmError("migration aborted: nothing provides %s" % req.name,
                          "add a package-manager section that has it, or skip it", code=1)
        return Choice(), "skipped"
    say("  0) skip")
    default = remembered.to_text() if remembered else "1"
    while True:
        answer = PROBE.ask("  choice", default, "--yes or --answers FILE", False)
        if answer == "0" or answer == "skip":
            return Choice(), "skipped"
        if answer.isdigit() and 1 <= int(answer) <= len(candidates):
            return candidates[int(answer) - 1].choice(req.version), "chosen"
        try:
            return Choice.parse(answer, "your answer"), "typed"
        except PmError:
            say("  type a number from 0 to %d, or manager:package[=version]" % len(candidates))


def install_choice(attempt, manager, choice, req, candidates):
    """Install one package; return 'installed' or 'failed'."""
    versions = [v for c in candidates if c.manager is manager and c.package == choice.package for v in c.versions]
    version = choice.version if choice.version else (req.version if req.version in versions else None)
    template = manager.install_version_cmd if version and manager.install_version_cmd else manager.install_cmd
    exec_override = None
    if family_of(manager).pip_like:
        exec_override = os.path.join(software_venv(attempt), "bin", "pip")
        template = re.sub(r"^\s*sudo\s+", "", template).replace(" --user", "")
    command = manager.command(template, choice.package, version, exec_override=exec_override)
    say("installing %s with %s: %s" % (choice.package, manager.key, command))
    code, output = attempt.run(["/bin/sh", "-c", command])
    if code != 0:
        say("  failed (exit %d): %s" % (code, (output.strip().splitlines() or [""])[-1]))
        return "failed"
    return "installed"


def root_needed_but_missing(manager):
    """A system package manager (FAMILIES' needs_root) without root and without sudo in its command."""
    return family_of(manager).needs_root and os.geteuid() != 0 \
        and not re.match(r"^\s*sudo\b", manager.install_cmd)


def usable_managers(attempt, config, options):
    """The configured package managers that are on this machine, in the configuration's order."""
    managers = load_managers(attempt.store, options.pck_mgr_configs)
    chosen = []
    for key in config.package_managers:
        if key not in managers:
            raise PmError("unknown package manager '%s' in the test configuration" % key,
                          "use one of %s, or define [%s] with --pck-mgr-configs" % (", ".join(sorted(managers)), key))
        if not managers[key].available():
            say("note: %s (%s) is not on PATH here; it is left out" % (key, managers[key].exec.split()[0]))
            continue
        chosen.append(managers[key])
        if root_needed_but_missing(managers[key]):
            say("note: %s installs system packages, which needs root, and pm runs as uid %d: its installs "
                "will fail (run pm as root, or list pip or spack before it)" % (key, os.geteuid()))
    if not chosen:
        raise PmError("none of the package managers %s is on this machine" % ", ".join(config.package_managers),
                      "install one, or list another in package_managers")
    return managers, chosen


def provision_with_managers(attempt, config, bundle, env_file, min_deps, options, base):
    """With pip among the managers, every Python distribution of the base goes to pip in one pinned
    resolve (install_with_pip); the direct requirements that are not Python distributions go, one by
    one, to the other managers. Returns (summary rows, environment for the tests)."""
    managers, chosen = usable_managers(attempt, config, options)
    pip = [m for m in chosen if family_of(m).pip_like]
    rows = []
    if pip:
        rows += install_with_pip(attempt, bundle, base.pip, options, pip[0].key)
        chosen = [m for m in chosen if not family_of(m).pip_like]
    reqs = [r for r in requirements_of(min_deps, env_file)
            if not pip or (r.name not in base.owners and r.name != "python" and not r.python)]
    remembered = dict((k, Choice.parse(v, attempt.store.choices_path(attempt.name)))
                      for k, v in attempt.store.read_choices(attempt.name).items())
    decisions = {}
    for number, req in enumerate(reqs, 1):
        if not chosen:
            rows.append(RequirementRow(req.name, "skipped", base_version=req.version, why="installs no Python "
                                       "distribution, and no system package manager is configured"))
            continue
        say("[%d/%d] resolving %s ..." % (number, len(reqs), req.label()))
        row, decision = provide_one(attempt, req, managers, chosen, remembered.get(req.name), options)
        rows.append(row)
        if decision:
            decisions[req.name] = decision
    if decisions:
        attempt.store.remember_choices(attempt.name, decisions)
        write_json(os.path.join(attempt.path, "choices.json"), decisions)
    return rows, environment_of_attempt(attempt)


def provide_one(attempt, req, managers, chosen, earlier, options):
    """One requirement from the chosen managers: (its row, the choice to remember or None). A person's
    skip is remembered, "nothing found" is not; of an install, only one that worked (a failing choice is
    not offered again)."""
    candidates = find_candidates(req, chosen, attempt.log_path)
    if earlier and earlier.manager_key and earlier.manager_key not in [m.key for m in chosen]:
        say("  note: the earlier choice %s is for %s, which this configuration does not use here; choosing anew"
            % (earlier.to_text(), earlier.manager_key))
        earlier = None
    choice, source = choose_package(req, candidates, earlier, options)
    if source == "remembered":
        say("  reusing the earlier choice %s" % choice.to_text())
    if not choice.manager_key:
        return RequirementRow(req.name, "skipped", base_version=req.version, why=source), \
            choice.to_text() if source in ("skipped", "remembered") else None
    manager = managers.get(choice.manager_key)
    if manager is None or not manager.available():
        say("  %s is not available here" % choice.manager_key)
        return RequirementRow(req.name, "failed", package=choice.to_text(), base_version=req.version,
                              why="manager %s not available" % choice.manager_key), None
    status = install_choice(attempt, manager, choice, req, candidates)
    return RequirementRow(req.name, status, package=choice.to_text(), why=source, base_version=req.version,
                          version=choice.version,
                          drift=bool(choice.version and req.version and choice.version != req.version)), \
        choice.to_text() if status == "installed" else None


def environment_of_attempt(attempt):
    """The environment the tests run in: pm's own, with the software's venv (when pip made one) first."""
    environ = dict(os.environ)
    venv = os.path.join(attempt.path, "venv")
    if os.path.isdir(venv):
        environ["PATH"] = os.path.join(venv, "bin") + os.pathsep + environ.get("PATH", "")
        environ["VIRTUAL_ENV"] = venv
    return environ


# == Route: pm's linker (the carried packages, without conda) =================
# A bundle packed --with-packages on a machine of the same platform: pm links its .tar.bz2
# archives into a new prefix itself, as conda's linker does (prefix placeholders in text and
# binary files, noarch: python relocation and entry points, conda-meta records and history).


def conda_is_here():
    try:
        PROBE.find_conda()
        return True
    except PmError:
        return False


def environment_without_conda(attempt, config, bundle, options, env_file, min_deps, dists, base):
    """No conda here (or --no-conda), and the bundle carries its packages: pm installs them itself
    when the platform is the base's (a Provided); else the test configuration's other package managers
    serve."""
    here, there = PROBE.this_subdir(), bundle.manifest.packages.get("platform")
    if here != there:
        others = [m for m in config.package_managers if m != "conda"]
        say("note: the bundle carries its packages for %s, and this machine is %s: pm cannot install them here"
            % (there, here))
        if not others:
            raise PmError("there is no conda here, and the bundle's packages are for %s" % there,
                          "install conda, or list other package managers in the test configuration")
        config = MigrationConfig(config.output_dir, others, config.tests)
        return environment_with_managers(attempt, config, bundle, options, env_file, min_deps, dists, base)
    prefix = attempt_prefix(attempt, options)
    say("no conda %s: pm installs the %d packages the bundle carries into %s"
        % ("used (--no-conda)" if options.no_conda else "here", len(bundle.manifest.packages["carried"]), prefix))
    install_without_conda(attempt, bundle, prefix, options.allow_scripts, dists, options.max_ratio,
                          options.force_preflight)
    attempt.save(level="carried", env_prefix=prefix, environment=env_packages(prefix, bundle))
    rows = [dist_row(d, d["version"], "installed", "wheel carried in the bundle, installed by pm's own wheel "
                     "installer", "pm") for d, _ in carried_wheels(bundle, dists)]
    return Provided(None, activated_environ(prefix, os.path.basename(prefix)), path_activation(prefix),
                    env_site_packages(prefix, dists), rows)


PM_INCOMPLETE = os.path.join("conda-meta", "pm-incomplete")  # until the last record is written


def link_archive(archive, writer, site, claims, order):
    """Link one archive into writer's root in one streamed pass: files and links written as they come
    (a later package in install order wins a path two packages share), info/ read on the way; files
    written before info/ said they hold the placeholder are rewritten after. Returns the paths."""
    where = archive.fn
    later = []
    with reading_carried(archive):
        for name, kind, mode, mtime, content in archive.members(writer.max_files):
            rel = relocated(name, site) if archive.noarch_python() else name
            with writer.lock:
                if claims.get(rel, -1) > order:
                    archive.files.append(rel)
                    continue  # a later package's file wins
                claims[rel] = order
            if kind == "link":
                writer.symlink(rel, content, where)
            else:
                replacer = None
                if name in archive.placeholders:
                    placeholder, placeholder_mode = archive.placeholders[name]
                    replacer = PrefixReplacer(placeholder, writer.root, placeholder_mode, "%s of %s" % (name, where))
                writer.write(rel, content, mode, mtime, where, replacer)
                later.append((name, rel, mtime))
            archive.files.append(rel)
    for name, rel, mtime in later:  # info/ came after the files it describes (pm's own older rebuilds)
        if name in archive.placeholders and claims.get(rel) == order:
            placeholder, mode = archive.placeholders[name]
            path = os.path.join(writer.root, *rel.split("/"))
            rewrite_in_place(writer, rel, path, PrefixReplacer(placeholder, writer.root, mode, "%s of %s" % (name, where)),
                             mtime)
    return archive.files


def rewrite_in_place(writer, rel, path, replacer, mtime):
    """Replace the placeholder in a file already written: streamed into a temp file, renamed over it."""
    import tempfile
    mode = os.lstat(path).st_mode
    handle, temp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".pm-")
    try:
        with open(path, "rb") as source, os.fdopen(handle, "wb") as out:
            while True:
                block = source.read(CHUNK)
                out.write(replacer.feed(block, not block))
                if not block:
                    break
            os.fchmod(out.fileno(), stat.S_IMODE(mode))
        os.utime(temp, (mtime, mtime))
        os.rename(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.remove(temp)
        raise


def install_order(archives):
    """Dependencies before what needs them: the probe's one graph walk (Tarjan's components come out
    dependencies first); the members of a cycle in name order."""
    by_name = dict((a.entry["name"], a) for a in archives)
    graph = dict((name, sorted(set(spec_name(d) for d in archive.entry.get("depends") or [] if isinstance(d, str))
                               & set(by_name) - set([name])))
                 for name, archive in by_name.items())
    return [by_name[name] for component in PROBE.strongly_connected(graph) for name in sorted(component)]


def python_site(archives):
    """lib/pythonX.Y/site-packages of the environment's python package."""
    for archive in archives:
        if archive.entry["name"] == "python":
            return "lib/python%s/site-packages" % ".".join(str(archive.entry["version"]).split(".")[:2])
    raise PmError("a noarch: python package needs a python package in the environment, and there is none",
                  "pack an environment that has python")


def relocated(name, site):
    """Where a noarch: python package's file goes."""
    if name.startswith("site-packages/"):
        return site + name[len("site-packages"):]
    if name.startswith("python-scripts/"):
        return "bin" + name[len("python-scripts"):]
    return name


def conda_meta_record(archive, files, requested):
    record = dict(archive.entry)
    record.update(fn=archive.fn, channel="pm-carried", url="file://pm-carried/%s/%s" % (archive.entry.get("subdir", ""),
                                                                                      archive.fn),
                  files=files, paths_data={"paths_version": 1, "paths": [{"_path": f, "path_type": "hardlink"}
                                                                        for f in files]},
                  link={"source": "", "type": 1})
    if archive.entry["name"] in requested:
        record["requested_spec"] = requested[archive.entry["name"]]
    return record


def link_all(archives, writer, site):
    """Link every archive, by a few workers at once, in install order where paths meet; say each."""
    claims, done, first = {}, [0], [None]
    lock = writer.lock

    def one(numbered):
        order, archive = numbered
        try:
            files = link_archive(archive, writer, site, claims, order)
        except BaseException as exc:
            with lock:
                if not writer.failed:
                    writer.failed, first[0] = True, exc
            raise
        with lock:
            done[0] += 1
            say("  [%d/%d] %s" % (done[0], len(archives), archive.dist))
        return files

    def stop():  # a failure or Ctrl-C: the other workers stop at their next member, before the prefix goes
        writer.failed = True

    try:
        return [files for _, files in PROBE.in_threads(one, list(enumerate(archives)),
                                                        min(PROBE.WORKERS, os.cpu_count() or 1), stop)]
    except PmError:
        raise first[0] or PmError("linking stopped", "read commands.log")


def link_environment(archives, prefix, max_ratio=None):
    """Link the archives (in install order) into prefix, whose conda-meta exists: every member through
    one containment writer, bounded to max_ratio (default MAX_UNPACK_RATIO) times what was carried and
    to a number of files for that size; then their entry points. Returns (writer, site, files)."""
    writer = Contained.for_carried(prefix, sum(os.path.getsize(a.path) for a in archives), max_ratio)
    site = python_site(archives) if any(a.noarch_python() for a in archives) else None
    files = link_all(archives, writer, site)
    for archive, archive_files in zip(archives, files):
        for point in archive.entry_points():
            command, _, target = point.partition("=")
            archive_files.append(write_entry_point(writer, command, target, archive.fn))
    writer.check_links(prefix, [f for archive_files in files for f in archive_files])
    return writer, site, files


def install_without_conda(attempt, bundle, prefix, allow_scripts=False, dists=None, max_ratio=None,
                          force_preflight=False):
    """Create the environment at prefix from the bundle's carried packages, with no conda: each archive
    linked in one streamed pass by the containment writer, a few at once, as conda links them; then
    entry points, post-link scripts (only with --allow-scripts) and conda-meta. The prefix is marked
    incomplete until its last record is written, and removed on any failure or interruption."""
    import shutil
    channel_dir = bundle.extract_channel(os.path.join(attempt.path, "channel"))
    try:
        archives = install_order(carried_archives(channel_dir))
        if bundle.manifest.binaries is None:  # an older bundle: its binaries are read before any is linked
            check_carried_files(attempt, [archive_binaries(a) for a in archives], force_preflight)
        refuse_existing_prefix(prefix)
        os.makedirs(os.path.join(prefix, "conda-meta"))
        hold_prefix(attempt, prefix)
        write_atomic(os.path.join(prefix, PM_INCOMPLETE), "pm is installing this environment\n")
        try:
            requested = dict((spec_name(s), s) for s in bundle.manifest.minimal or [])
            history = ["==> %s <==" % time.strftime("%Y-%m-%d %H:%M:%S"), "# cmd: pm.pyz migrate %s" % attempt.name]
            started = time.time()
            writer, site, files = link_environment(archives, prefix, max_ratio)
            attempt.log("linked %d packages, %d files, %.1f MiB into %s in %.1f s" % (
                len(archives), writer.files, writer.bytes / 1048576.0, prefix, time.time() - started))
            compile_noarch_python(attempt, prefix, archives, site)
            scripts = [a for a in archives if a.has_post_link()]
            if scripts and not allow_scripts:
                say("note: %s %s post-link script%s, which pm does not run (--allow-scripts runs them)"
                    % (", ".join(a.entry["name"] for a in scripts), "has a" if len(scripts) == 1 else "have",
                       "" if len(scripts) == 1 else "s"))
            note_activation_scripts([a.entry["name"] for a in archives
                                     if any(f.startswith("etc/conda/activate.d/") for f in a.files)])
            for archive, archive_files in zip(archives, files):
                if allow_scripts and archive in scripts:
                    run_post_link(attempt, prefix, archive)
                write_json(os.path.join(prefix, "conda-meta", archive.dist + ".json"),
                           conda_meta_record(archive, archive_files, requested), 0o644)
                history.append("+pm-carried::%s" % archive.dist)
            install_carried_wheels(attempt, bundle, prefix, dists)
            history.append("# update specs: %r" % sorted(requested.values()))
            write_atomic(os.path.join(prefix, "conda-meta", "history"), "\n".join(history) + "\n", 0o644)
            write_json(os.path.join(prefix, PM_MADE), {"software": attempt.name, "attempt": attempt.path}, 0o644)
            os.remove(os.path.join(prefix, PM_INCOMPLETE))
        except BaseException:
            shutil.rmtree(prefix, ignore_errors=True)
            raise
    finally:
        shutil.rmtree(channel_dir, ignore_errors=True)
    return prefix


COMPILE_FILE_LIMIT = 4 << 20  # a noarch: python source over this is left to compile on import
COMPILE_MEMORY = 512 << 20  # the address space of the process that compiles them
COMPILER = """import os, py_compile, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (%d, %d))
done = 0
for path in sys.stdin.buffer.read().split(b"\\0"):
    try:
        path = os.fsdecode(path)
        py_compile.compile(path, doraise=True)
        done += 1
    except (py_compile.PyCompileError, OSError, ValueError, MemoryError, RecursionError, SyntaxError):
        pass
print(done)
"""


def compile_noarch_python(attempt, prefix, archives, site):
    """Bytecode for the noarch: python packages (they ship none), as conda writes it: by pm's own
    interpreter when it is the environment's Python version (no code of the bundle runs), in a process
    of its own whose memory is bounded (COMPILE_MEMORY), only the files the packages list, each under
    COMPILE_FILE_LIMIT; what is not compiled is compiled on import, as conda leaves it."""
    if not site or site != "lib/python%d.%d/site-packages" % sys.version_info[:2]:
        return
    sources, large = [], []
    for archive in archives:
        for rel in archive.files if archive.noarch_python() else ():
            path = os.path.join(prefix, *rel.split("/"))
            if rel.endswith(".py") and rel.startswith(site + "/") and os.path.isfile(path) \
                    and not os.path.islink(path):
                (large if os.path.getsize(path) > COMPILE_FILE_LIMIT else sources).append(path)
    if large:
        say("note: %d noarch: python source%s over %d MiB left to compile on import: %s" % (
            len(large), "s" * (len(large) != 1), COMPILE_FILE_LIMIT >> 20,
            ", ".join(printable(os.path.relpath(p, prefix)) for p in large[:5])))
    if not sources:
        return
    answer = ask([sys.executable, "-I", "-c", COMPILER % (COMPILE_MEMORY, COMPILE_MEMORY)], 3600,
                 data=b"\0".join(os.fsencode(p) for p in sources))
    done = answer.decode("utf-8", "replace").strip() if answer is not None else "0 (the compiler failed or timed out)"
    attempt.log("compiled %s of %d noarch: python sources" % (done, len(sources)))


def run_post_link(attempt, prefix, archive):
    script = os.path.join(prefix, "bin", ".%s-post-link.sh" % archive.entry["name"])
    environ = dict(os.environ, PREFIX=prefix, PKG_NAME=archive.entry["name"], PKG_VERSION=archive.entry["version"],
                   PKG_BUILDNUM=str(archive.entry.get("build_number", 0)))
    code, output = attempt.run(["/bin/sh", script], environ)
    if code != 0:
        raise PmError("the post-link script of %s failed (exit %d)" % (archive.dist, code), "read %s" % attempt.log_path,
                      code=1)


# == Route: conda =============================================================


def find_conda_here():
    """This machine's conda, found as the probe finds it ($CONDA_EXE, PATH, the usual prefixes)."""
    try:
        return PROBE.find_conda()
    except PmError as exc:
        raise PmError(exc.what, "install conda, set CONDA_EXE, or list other package managers in the "
                                "test configuration")


class CondaHere(object):
    """The target's conda: its executable, and what 'conda info --json' says about it (asked through
    the attempt's runner, logged and timed as every conda call)."""

    def __init__(self, exe, attempt):
        self.exe = exe
        code, output = attempt.run([exe, "info", "--json"])
        try:
            self.info = json.loads(output[output.index("{"):output.rindex("}") + 1])
        except ValueError:
            raise PmError("'%s info --json' %s" % (exe, "failed (exit %d)" % code if code else "did not print JSON"),
                          "check this conda with 'conda info', or set CONDA_EXE to another conda")

    def env_prefix(self, env_name):
        """The prefix of the environment conda means by '-n env_name', if there is one."""
        return PROBE.named_env_prefix(self.info, env_name)


# conda's "not found" errors: 4.3 names the first missing package only (NoPackagesFoundError,
# PackageNotFoundError), current conda all of them (ResolvePackageNotFound, PackagesNotFoundError).
NOT_FOUND_ERRORS = (r"(NoPackagesFoundError|PackageNotFoundError|PackagesNotFoundError|"
                    r"ResolvePackageNotFound)\b")


def missing_packages(output):
    """The specs a failed conda command says it cannot find, as it lists them ('  - name version')."""
    missing, listing = [], False
    for line in output.splitlines():
        if re.search(NOT_FOUND_ERRORS, line):
            listing = True
            continue
        item = re.match(r"^\s+- (\S.*?)\s*$", line)
        if listing and item:
            missing.append(item.group(1))
        elif listing and missing and line.strip():
            listing = False
    return missing


def conda_error_line(output, code):
    """The line of a failed conda command that names its error (the last such), else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[A-Za-z.]*(Error|Exception)\b.*:", line)]
    return (named or lines or ["exit %d" % code])[-1]


def all_missing(attempt, conda, prefix, specs, first_missing, channel_args=()):
    """Every spec of a level that the channels lack, not only the first that conda 4.3 names:
    dry runs without what was found missing, until conda finds the rest (at most one per spec)."""
    missing = list(first_missing)
    while missing and len(missing) < len(specs):
        missing_names = set(spec_name(m) for m in missing)
        rest = [s for s in specs if spec_name(s) not in missing_names]
        code, output = attempt.run([conda.exe, "create", "--dry-run", "-p", prefix] + list(channel_args) + rest)
        more = [m for m in missing_packages(output) if spec_name(m) not in missing_names]
        if code == 0 or not more:
            break
        missing += more
    return missing


class CarriedChannel(object):
    """The bundle's own packages, unzipped as a local channel, with its unpacked packages extracted
    into a package cache of its own (pkgs/, as if conda had downloaded them); args are conda's flags to
    use it (alone and offline, when nothing is missing from it), environ points conda at that cache."""

    def __init__(self, folder, complete):
        from urllib.request import pathname2url
        self.folder = folder
        self.url = "file://" + pathname2url(folder)
        self.args = ["--offline", "--override-channels", "-c", self.url] if complete else ["-c", self.url]
        self.pkgs = os.path.join(folder, "pkgs")
        self.environ = dict(os.environ, CONDA_PKGS_DIRS=self.pkgs)


def carried_channel(attempt, conda, bundle, max_ratio=None, allow_scripts=False, force_preflight=False):
    """The CarriedChannel of a bundle packed --with-packages, when it can serve this conda, else None
    (a note says why); a .conda archive that this conda cannot read stops before anything is made.
    Unpacked packages and .tar.bz2 archives are extracted by pm into the cache conda links from,
    checked there (extract_into_cache); .conda archives conda extracts itself."""
    import shutil
    packages = bundle.manifest.packages or {}
    carried = packages.get("carried") or []
    if not carried:
        return None
    here = conda.info.get("platform") or ""
    if packages.get("platform") != here:
        say("note: the bundle carries its packages for %s, and this conda is %s: they cannot serve here, so "
            "this conda's own channels are used" % (packages.get("platform"), here or "of an unknown platform"))
        return None
    version = PROBE.conda_version(conda.info)
    newer = [c["file"].rsplit("/", 1)[-1] for c in carried
             if (carried_form(c["file"]) or UNPACKED).oldest_conda > version]
    if newer:
        kinds = " and ".join(sorted(set(carried_form(fn).suffix for fn in newer)))
        raise PmError("conda %s reads no %s packages, and the bundle carries %d: %s" % (
            conda.info.get("conda_version", "?"), kinds, len(newer), ", ".join(newer)),
            "use conda 4.7 or newer here, or pack again on the base with --with-packages --as-tar-bz2")
    missing = packages.get("missing") or []
    if missing:
        say("note: the bundle lacks %d of its packages (%s): this conda's channels must provide them"
            % (len(missing), ", ".join(m["name"] for m in missing)))
    channel = CarriedChannel(bundle.extract_channel(os.path.join(attempt.path, "channel")), not missing)
    try:
        unpacked = carried_archives(channel.folder, conda_reads=True)  # all but the .conda archives
        if unpacked:
            started = time.time()
            extract_into_cache(unpacked, channel, max_ratio, allow_scripts)
            attempt.log("extracted %d unpacked packages into %s in %.1f s" % (len(unpacked), channel.pkgs,
                                                                            time.time() - started))
            if bundle.manifest.binaries is None:  # an older bundle: its binaries are read before conda links them
                check_carried_files(attempt, [PROBE.BinaryNeeds("conda", a.entry["name"], a.entry["version"]).add_folder(
                    os.path.join(channel.pkgs, a.dist)) for a in unpacked], force_preflight)
    except BaseException:
        shutil.rmtree(channel.folder, ignore_errors=True)
        raise
    say("using the %s the bundle carries%s" % (plural(len(carried), "package"), "" if missing else ", offline"))
    return channel


NOT_CACHED = ("pm_file", "md5", "sha256", "size")  # an extracted package's entry: conda takes the cache's copy
LINK_SCRIPT = r"^bin/\.[^/]+-(pre-link|post-link|pre-unlink)\.sh\Z"  # conda runs these when it links


def extract_into_cache(archives, channel, max_ratio=None, allow_scripts=False):
    """Extract carried packages into the channel's own package cache, as conda leaves a package it
    downloaded: pkgs/<dist>/ (each through a containment writer of its own, a few at once), its
    info/repodata_record.json naming the channel, and urls.txt (conda 4.3 finds a package by it). The
    channel's repodata then lists them without sums, so conda 4.3 and 25 take the extracted copy.
    What conda reads to link a package is checked against its own members first (check_conda_index);
    link scripts are left out unless allow_scripts, and named."""
    import bz2
    import io
    os.mkdir(channel.pkgs, 0o700)

    def one(archive):
        writer = Contained.for_carried(os.path.join(channel.pkgs, archive.dist), os.path.getsize(archive.path),
                                       max_ratio)
        os.mkdir(writer.root, 0o755)
        written, left_out = [], []
        with reading_carried(archive):
            for name, kind, mode, mtime, content in archive.members(writer.max_files, with_info=True):
                if not allow_scripts and re.match(LINK_SCRIPT, name):
                    left_out.append(name)
                    continue
                if kind == "link":
                    writer.symlink(name, content, archive.fn)
                else:
                    writer.write(name, content, mode, mtime, archive.fn)
                written.append(name)
        writer.check_links(writer.root, written)
        check_conda_index(writer, archive.fn, set(written), set(left_out))
        entry = dict((k, v) for k, v in archive.entry.items() if k not in NOT_CACHED)
        entry.update(fn=archive.fn, url="%s/%s/%s" % (channel.url, entry.get("subdir", ""), archive.fn),
                     channel=channel.url)
        writer.write("info/repodata_record.json", io.BytesIO(json.dumps(entry, sort_keys=True).encode("utf-8")),
                     0o644, None, archive.fn)
        return entry["url"], left_out

    done = [result for _, result in PROBE.in_threads(one, archives, min(PROBE.WORKERS, os.cpu_count() or 1))]
    scripts = sorted(set(a.entry["name"] for a, (_, left_out) in zip(archives, done) if left_out))
    if scripts:
        say("note: %s %s link scripts (post-link, pre-unlink), which pm leaves out of what conda links, so none "
            "runs (--allow-scripts runs them)" % (", ".join(scripts), "has" if len(scripts) == 1 else "have"))
    write_atomic(os.path.join(channel.pkgs, "urls.txt"), "".join(url + "\n" for url, _ in done), 0o644)
    for archive in archives:
        os.remove(archive.path)
    for subdir in sorted(set(a.entry.get("subdir", "") for a in archives)):
        path = os.path.join(channel.folder, subdir, "repodata.json")
        repodata = read_json(path)
        extracted = set(a.fn for a in archives if a.entry.get("subdir", "") == subdir)
        for fn, entry in (repodata.get("packages") or {}).items():
            for key in NOT_CACHED if fn in extracted else ("pm_file",):
                entry.pop(key, None)
        data = json.dumps(repodata, sort_keys=True).encode("utf-8")
        write_atomic(path, data, 0o644)
        write_atomic(path + ".bz2", bz2.compress(data), 0o644)


def check_conda_index(writer, fn, members, left_out):
    """What conda reads to link an extracted package (info/paths.json's paths, info/files, link.json's
    entry points), checked before conda sees it: every path one of the package's own members (which the
    writer made: plain names inside it), every entry point NAME = module:function; the link scripts
    left out (left_out) are taken out of both lists."""
    check_paths_json(writer, fn, members, left_out)
    check_files_list(writer, fn, members, left_out)
    check_entry_points(writer, fn)


def read_info(writer, fn, name):
    """The text of an extracted package's info/NAME (its size checked first), or None."""
    path = os.path.join(writer.root, "info", name)
    if not os.path.isfile(path):
        return None
    check_info_size("info/" + name, os.path.getsize(path), fn)
    with open(path, "rb") as handle:
        return handle.read().decode("utf-8", "replace")


def not_its_own(member, fn, field, value):
    return PmError("%s of the carried package %s names %r (%s), which is not one of its own files"
                   % (member, fn, str(value)[:200], field), FIX_BAD_BUNDLE)


def check_paths_json(writer, fn, members, left_out):
    import io
    text = read_info(writer, fn, "paths.json")
    if text is None:
        return
    try:
        data = json.loads(text)
    except ValueError:
        raise PmError("info/paths.json of the carried package %s is not JSON" % fn, FIX_BAD_BUNDLE)
    items = data.get("paths") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise not_its_own("info/paths.json", fn, "paths", items)
    for item in items:
        path = item.get("_path") if isinstance(item, dict) else None
        if not isinstance(path, str) or (path not in members and path not in left_out and not (
                item.get("path_type") == "directory" and is_plain_line_path(path))):
            raise not_its_own("info/paths.json", fn, "_path", path)
    if left_out:
        data["paths"] = [i for i in items if i["_path"] not in left_out]
        writer.write("info/paths.json", io.BytesIO(json.dumps(data).encode("utf-8")), 0o644, None, fn)


def check_files_list(writer, fn, members, left_out):
    import io
    text = read_info(writer, fn, "files")
    if text is None:
        return
    listed = [line.strip() for line in text.splitlines()]
    for line in listed:
        if line and not line.startswith("#") and line not in members and line not in left_out:
            raise not_its_own("info/files", fn, "a line", line)
    if left_out:
        kept = "".join(line + "\n" for line in listed if line not in left_out)
        writer.write("info/files", io.BytesIO(kept.encode("utf-8")), 0o644, None, fn)


def check_entry_points(writer, fn):
    try:
        link = json.loads(read_info(writer, fn, "link.json") or "{}")
    except ValueError:
        link = {}
    noarch = link.get("noarch") if isinstance(link, dict) else None
    points = noarch.get("entry_points") if isinstance(noarch, dict) else None
    for point in points if isinstance(points, list) else []:
        command, _, target = str(point).partition("=")
        if not re.match(SCRIPT_NAME, command.strip()) or not re.match(ENTRY_TARGET, target.strip()):
            raise PmError("info/link.json of the carried package %s names the entry point %r, which is not NAME = "
                          "module:function" % (fn, str(point)[:100]), FIX_BAD_BUNDLE)


def environment_with_conda(attempt, config, bundle, options, env_file, min_deps, dists, base):
    """The conda route: the attempt's own environment (attempt_env_prefix, or --prefix), made by this
    conda from the bundle's carried packages or its channels, then the wheels and pip's part (a
    Provided); the carried channel's folder goes when the attempt ends (migrate)."""
    conda = CondaHere(find_conda_here(), attempt)
    attempt.save(platform=dict(attempt.result["platform"], conda=conda.info.get("conda_version", "")))
    prefix = attempt_prefix(attempt, options)
    refuse_existing_prefix(prefix)
    channel = carried_channel(attempt, conda, bundle, options.max_ratio, options.allow_scripts,
                              options.force_preflight)
    conda_part = EnvFile(env_file.name, env_file.channels, env_file.dependencies, [], env_file.variables)
    try:  # the pip part is pm's (conda_env_pip_part): conda would add a pip its channels may lack
        level = create_conda_env(attempt, conda, prefix, conda_part, min_deps, channel)
    except PmError as exc:
        failure = "not installed: %s" % exc.what
        attempt.save(unmet=rows_json(missing_rows(base, {}, [], lambda name, version, pypi: failure)))
        raise
    hold_prefix(attempt, prefix)  # used by this attempt: no later pass or prune removes it meanwhile
    say("environment ready at %s (level %s)" % (prefix, level))
    python_rows = install_carried_wheels(attempt, bundle, prefix, dists)
    python_rows += conda_env_pip_part(attempt, bundle, prefix, base, options, bool(channel))
    if channel:
        note_activation_scripts(packages_with_activation_scripts(prefix))
    attempt.conda = (conda, channel)
    attempt.save(level=level, env_prefix=prefix, environment=env_packages(prefix, bundle))
    return Provided(None, activated_environ(prefix, prefix), conda_activation(conda, prefix),
                    env_site_packages(prefix, dists), python_rows)


def create_conda_env(attempt, conda, prefix, env_file, min_deps, channel=None):
    """Create the attempt's own environment at prefix, falling back level by level; return the level.
    With channel (a CarriedChannel) every level installs from the bundle's packages. What conda made
    of a level that failed, or when it was cut off (Ctrl-C), goes at once; the environment carries
    PM_MADE once it is complete."""
    if not channel:
        env_file = channels_here(env_file)
    missing, level_file = [], None
    for level, level_file in migration_levels(env_file, min_deps):
        code, output = create_at_level(attempt, conda, prefix, level, level_file, channel)
        if code == 0 and PROBE.is_env_prefix(prefix):
            write_json(os.path.join(prefix, PM_MADE), {"software": attempt.name, "attempt": attempt.path}, 0o644)
            level_file.name = attempt.name
            write_atomic(os.path.join(attempt.path, "env.yml"), level_file.to_yaml())
            return level
        remove_env_folder(prefix)
        missing = missing_packages(output)
        say("  failed at level %s: %s" % (level, "the channels lack " + ", ".join(missing) if missing
                                          else conda_error_line(output, code)))
    if not missing:
        raise PmError("conda could not create the environment at any level (exact, no-builds, direct)",
                      "read %s; a local channel or mirror may lack the packages" % attempt.log_path, code=1)
    missing = all_missing(attempt, conda, prefix, level_file.dependencies, missing, channel.args if channel else [])
    attempt.save(missing=missing)
    raise PmError("conda could not create the environment at any level (exact, no-builds, direct): its channels "
                  "lack %s: %s" % (plural(len(missing), "package"), ", ".join(missing)),
                  "add a channel or mirror that has them to this conda's condarc", code=1)


def channels_here(env_file):
    """The env file without the base's local file:// channels that are not here (this conda's serve)."""
    gone = local_channels_missing_here(env_file.channels)
    if not gone:
        return env_file
    say("note: the base's local channel%s %s %s not here: using this conda's own channels instead"
        % ("s" * (len(gone) > 1), ", ".join(gone), "are" if len(gone) > 1 else "is"))
    return EnvFile(env_file.name, [c for c in env_file.channels if c not in gone], env_file.dependencies,
                   env_file.pip, env_file.variables)


def create_at_level(attempt, conda, prefix, level, level_file, channel):
    """One conda create of the environment at prefix from one level's env file (kept as env-LEVEL.yml);
    (exit code, output). On Ctrl-C what conda had made is removed before the interruption goes on."""
    path = os.path.join(attempt.path, "env-%s.yml" % level)
    level_file.name = attempt.name
    write_atomic(path, level_file.to_yaml())
    say("creating the conda environment %s (%s, %s)..." % (prefix, level, plural(len(level_file.dependencies),
                                                                                   "package")))
    if channel:
        command = [conda.exe, "create", "-y", "-p", prefix] + channel.args + level_file.dependencies
    else:
        command = [conda.exe, "env", "create", "-f", path, "-p", prefix]
    try:
        return attempt.run(command, channel.environ if channel else None)
    except KeyboardInterrupt:  # conda is stopped (run_command): what it had made goes
        remove_env_folder(prefix)
        raise


def name_newest_env(attempt, conda, env_name, prefix, channel=None):
    """After a pass: the conda environment env_name (the software's name unless --env-name) becomes a
    clone of this install's own (conda links the packages from its cache), so that 'conda activate
    NAME' gives the newest install, as platform-migrator 1.1.0's environment NAME did; every install
    keeps running with its own. An environment of that name pm did not make is left as it is."""
    hold_conda_env(attempt, env_name)
    existing = conda.env_prefix(env_name)
    if existing and not os.path.isfile(os.path.join(existing, PM_MADE)):
        say("note: the conda environment %s (%s) was not made by pm, so pm leaves it; this install runs with its "
            "own, %s" % (env_name, existing, prefix))
        return
    if existing:
        attempt.run([conda.exe, "env", "remove", "-n", env_name, "-y"])
        remove_env_folder(existing)  # conda keeps a folder it does not see as an environment
    code, output = attempt.run([conda.exe, "create", "-n", env_name, "--clone", prefix, "--offline", "-y"],
                               channel.environ if channel else None)  # the carried packages' own cache
    named = conda.env_prefix(env_name)
    if code != 0 or not named:
        say("warning: the conda environment %s could not be made a copy of this install's (%s); the install "
            "runs with its own, %s" % (env_name, conda_error_line(output, code), prefix))
        return
    write_json(os.path.join(named, PM_MADE), {"software": attempt.name, "attempt": attempt.path, "copy_of": prefix},
               0o644)
    say("the conda environment %s is now a copy of this install's environment" % env_name)


def hold_conda_env(attempt, env_name):
    """An exclusive lock on the conda environment env_name for the rest of the attempt: one attempt at a
    time replaces it."""
    path = os.path.join(attempt.store.software(attempt.name), ".conda-env-%s.lock" % re.sub(r"[^\w.-]", "_", env_name))
    attempt.holds.append(take_lock(path, what="replacing the conda environment %s" % env_name))


def conda_activation(conda, prefix):
    """A shell command that activates the environment in a new shell: conda's hook from 4.4 on; for
    4.3 (whose activate script a pip-installed conda lacks) what the tests had, PATH and CONDA_PREFIX."""
    if PROBE.conda_version(conda.info) >= (4, 4):
        return 'eval "$(%s shell.posix hook)" && conda activate %s' % (shlex.quote(conda.exe), shlex.quote(prefix))
    return path_activation(prefix)


# == Migrator =================================================================
# One attempt: a unique directory NAME/<id>/ holding the env file used, the command log,
# every test's output, result.json. Recreate the environment, unzip, run every test, install.


def migrate(store, name, config, bundle, options):
    """One attempt in its own directory: recreate the environment, test, install; return a
    MigrationResult (PmError for what stops the attempt, recorded in its result.json)."""
    import shutil
    check_options(bundle, config, options)
    attempt = Attempt(store, name)
    say("migrating %s (attempt %s)" % (name, attempt.id))
    here = this_platform()
    for note in platform_notes(bundle.manifest.source, here):
        say("note: " + note)
    if config.paths:
        write_atomic(os.path.join(attempt.path, TEST_CONFIG_COPY), config.copy_text())
    attempt.save(bundle=bundle.path, package_managers=config.package_managers, platform=here,
                 source=bundle.manifest.source, test_config=TEST_CONFIG_COPY if config.paths else None)
    if options.preflight is not None:
        attempt.save(preflight={"problems": options.preflight, "forced": bool(options.preflight),
                                "checked": "the binaries pack recorded"})
    try:
        try:
            return recreate_test_install(attempt, config, bundle, options)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = exc.filename or "the store %s or output_dir %s" % (store.home, config.output_dir)
            attempt.discard_partial()
            raise PmError("the disk is full (writing %s)" % where,
                          "free some space, or point PM_HOME and output_dir at a larger disk", code=1)
    except Exception as exc:  # one boundary: whatever happens, the attempt ends with its reason
        exc.attempt = attempt
        what = exc.what if isinstance(exc, PmError) else "internal error: %s: %s" % (type(exc).__name__, exc)
        try:
            attempt.save(status="error", error=what, finished=time.time())
        except OSError:
            pass  # the disk may be the problem; the error line still tells
        say("attempt: %s" % attempt.path)
        raise
    except KeyboardInterrupt as exc:
        exc.attempt = attempt
        attempt.save(status="interrupted", finished=time.time())
        raise
    finally:
        shutil.rmtree(os.path.join(attempt.path, "channel"), ignore_errors=True)  # the carried channel
        for handle in attempt.holds:
            os.close(handle)
        write_sbom(bundle, attempt)
        write_report_html(store, name, attempt)


def check_options(bundle, config, options):
    """Every flag acts, or pm says in one line why it cannot, and what would refuse the migration anyway
    (a taken install target, no conda for the conda route) is said, before anything runs or is made."""
    carried = (bundle.manifest.packages or {}).get("carried")
    with_conda = "conda" in config.package_managers
    if options.no_conda and not carried:
        raise PmError("--no-conda installs the packages a bundle carries, and this bundle carries none",
                      "pack it again with --with-packages, or leave out --no-conda")
    if options.no_conda and not with_conda:
        raise PmError("--no-conda installs the bundle's conda packages, and the test configuration does not list "
                      "conda in package_managers", "add conda to package_managers, or leave out --no-conda")
    by_pm = by_pm_linker(config, bundle, options)
    install_target(bundle, config.output_dir, options.force)  # refused here, no attempt is made for it
    if with_conda and not by_pm:
        find_conda_here()
    by_conda = with_conda and carried and not by_pm  # conda links pm's cache
    note_unused_flags(options, with_conda, by_pm, by_conda)


def note_unused_flags(options, with_conda, by_pm, by_conda):
    """The notes for flags this migration's route does not use."""
    if options.prefix and not with_conda:
        say("note: --prefix places a conda environment (conda's, or pm's without conda); this migration uses the "
            "package managers, so it does nothing")
    if options.allow_scripts and not by_pm and not by_conda:
        say("note: --allow-scripts applies only to the packages a bundle carries; this migration uses %s, so it "
            "does nothing" % ("conda's channels" if with_conda else "the package managers"))


def recreate_test_install(attempt, config, bundle, options):
    """The steps of an attempt: the environment (conda, pm's linker, or the package managers), the
    tests on an unzipped copy, and the install when every test passed."""
    env_file, min_deps = bundle.environment()
    dists = base_distributions(bundle)
    drop_foreign_wheels(dists)  # a compiled wheel for another platform is named before anything is made
    env_file = pip_entries_from_an_index(env_file, dists)
    base = base_requirements(bundle, env_file, min_deps)  # once: every route and the rows read it
    provided = route_for(config, bundle, options).provide(attempt, config, bundle, options, env_file, min_deps,
                                                          dists, base)
    packages, test_environ, activate, site = provided.packages, provided.environ, provided.activate, provided.site
    python_rows = provided.python_rows
    software_of_base = base.software
    for dist in software_of_base if dists is None else ():
        say("%s %s is the software itself: it comes from the migrated tree, never from an index"
            % (dist["name"], dist["version"]))
    attempt.result["python"] = rows_json(python_rows)
    record_env_pythons(attempt, bundle, test_environ)
    attempt.save(unmet=rows_json(missing_rows(base, attempt.result, software_of_base,
                                              route_why_missing(attempt.result, config.package_managers))))

    def link_tested_copy(software):
        python_rows.extend(link_software_dists(attempt, site, software_of_base, software, "tested copy"))
        attempt.result["python"] = rows_json(python_rows)

    tests = run_tests(attempt, config, bundle, options, test_environ, link_tested_copy)
    result = MigrationResult(attempt, tests, packages)
    attempt.save(tests=[t.to_json() for t in tests])  # kept if the install is refused (a concurrent one won)
    if result.passed:
        result.installed = install_software(bundle, config.output_dir, options.force, attempt.store, attempt.id)
        installed_rows = link_software_dists(attempt, site, software_of_base, result.installed, "installed copy")
        if options.skip_tests:
            python_rows += installed_rows
            attempt.save(python=rows_json(python_rows))
        after_the_install(attempt, options)
        result.activate = activate
        say("installed %s into %s" % (attempt.name, result.installed))
        if config.modulefiles:
            result.module = write_modulefiles(attempt, bundle, dists, config.modulefiles, test_environ, tests,
                                              result.installed)
    attempt.save(status="passed" if result.passed else "failed", tests=[t.to_json() for t in tests],
                 installed_to=result.installed, activate=result.activate, finished=time.time(),
                 seconds=round(time.time() - attempt.started, 3))
    return result


def route_for(config, bundle, options):
    """The first of ROUTES that applies to this migration."""
    return next(route for route in ROUTES if route.applies(config, bundle, options))


def by_pm_linker(config, bundle, options):
    carried = (bundle.manifest.packages or {}).get("carried")
    return "conda" in config.package_managers and bool(carried) and (options.no_conda or not conda_is_here())


def run_tests(attempt, config, bundle, options, environ, link_software):
    """Every test of the configuration on an unzipped copy of the software (link_software(copy) first
    puts it on the environment's path); [TestResult]. The copy goes afterwards, also on Ctrl-C."""
    import shutil
    if options.skip_tests:
        say("warning: --skip-tests: the software is installed without running its tests, so nothing proves "
            "it works here")
        return []
    work = os.path.join(attempt.path, "work")
    try:
        software = bundle.extract_software(work)
        link_software(software)
        attempt.save(python=attempt.result["python"])
        return [run_test(attempt, test, software, environ) for test in config.tests]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def after_the_install(attempt, options):
    """Once a pass is installed: the software's earlier environments in the store that no install runs
    with any more go (remove_unused_envs), and on the conda route the environment named after the
    software becomes a copy of this install's (name_newest_env); neither with --prefix."""
    prefix = attempt.result.get("env_prefix")
    if not prefix or options.prefix:
        return
    remove_unused_envs(attempt, prefix)
    if attempt.conda:
        name_newest_env(attempt, attempt.conda[0], options.env_name or attempt.name, prefix, attempt.conda[1])


def run_test(attempt, test, software, environ):
    """Run one test in its own shell, streaming output to the console and its log file."""
    log = os.path.join(attempt.path, "test-%s.log" % test.name)
    script = (ACTIVATE_SCRIPTS if environ.get("CONDA_PREFIX") else "") + test.command
    command = (shlex.split(test.runner) if test.runner else []) + ["/bin/sh", "-c", script]
    workdir = os.path.join(software, test.workdir) if test.workdir else software
    attempt.log("test %s: %s (in %s)" % (test.name, test.command, workdir))
    say("--- test %s: %s" % (test.name, test.command))
    started = time.time()
    append_private(log).close()
    run = run_command(command, log, cwd=workdir, environ=dict(environ, **test.env), timeout=test.timeout,
                      echo=True, capture=False)
    status = "error" if run.code is None else "timeout" if run.timed_out else "passed" if run.code == 0 else "failed"
    code = 127 if run.code is None else run.code
    seconds = time.time() - started
    attempt.log("test %s: %s, exit %d, %.2f s" % (test.name, status, code, seconds))
    if run.leftovers:
        say("warning: test %s left %d process%s running (%s); pm stopped %s" % (
            test.name, len(run.leftovers), "es" * (len(run.leftovers) > 1),
            "; ".join(run.leftovers), "them" if len(run.leftovers) > 1 else "it"))
        attempt.log("test %s left running: %s" % (test.name, "; ".join(run.leftovers)))
    return TestResult(test.name, status, code, seconds, log, run.leftovers,
                      "%s %s" % (test.runner, test.command) if test.runner else test.command)


def install_target(bundle, output_dir, force):
    """output_dir/<dir>, which must be free unless --force: checked before an attempt starts, and
    again when it installs."""
    target = os.path.join(output_dir, bundle.manifest.software_dir())
    replacing = os.path.lexists(target) and (not os.path.isdir(target) or os.listdir(target))
    if replacing and not force:
        raise PmError("%s exists and is not empty" % target, "pass --force to replace it, or change output_dir")
    if replacing and not os.path.isfile(install_mark(target)):
        raise PmError("%s was not installed by pm, and --force replaces only what pm installed" % target,
                      "move it away yourself, or change output_dir")
    return target


def install_software(bundle, output_dir, force, store, attempt_id=None):
    """Install the software into output_dir/<dir>: built beside it, then swapped in, so an old
    install (replaced with --force) stays whole until the new one is complete; one install into
    output_dir at a time (the store's lock file for it, never output_dir itself)."""
    import shutil
    import tempfile
    os.makedirs(output_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".pm-install-", dir=output_dir)
    try:
        extracted = bundle.extract_software(os.path.join(staging, "new"))
        with FolderLock(store.install_lock(output_dir), "an install into %s" % output_dir):  # a second migrate checks after the swap
            target = install_target(bundle, output_dir, force)
            if os.path.lexists(target):
                os.rename(target, os.path.join(staging, "old"))
            os.rename(extracted, target)
            write_json(install_mark(target), {"software": bundle.manifest.name, "installed": utc_time(),
                                              "attempt": attempt_id}, 0o644)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# The routes, in the order they are tried: pm's linker when the bundle carries its packages and conda is
# not here (or --no-conda), conda when the configuration lists it, else the system's package managers.
ROUTES = [
    Route("pm's linker", by_pm_linker, environment_without_conda),
    Route("conda", lambda config, bundle, options: "conda" in config.package_managers, environment_with_conda),
    Route("package managers", lambda config, bundle, options: True, environment_with_managers),
]


# == Server (HTTP) ============================================================
# A store-and-forward HTTP server on the standard library: GET /migrate hands out the probe,
# PUT /bundles/NAME receives bundles (streamed, checked, renamed into place).

DEFAULT_PORT = 9001
DEFAULT_MAX_BYTES = 4 << 30
DEFAULT_MAX_CONNECTIONS = 100
MIN_BODY_RATE = 256 << 10  # bytes per second a body must at least arrive at, beyond --timeout


class HttpError(Exception):
    def __init__(self, status, reason):
        Exception.__init__(self, reason)
        self.status = status
        self.reason = reason


class ServerConfig(object):
    """What a running server needs to know."""

    def __init__(self, store, host, port, token, max_bytes, timeout, max_connections=DEFAULT_MAX_CONNECTIONS,
                 max_ratio=None):
        self.store = store
        self.max_ratio = max_ratio
        self.max_connections = max_connections
        self.host = host
        self.port = port
        self.token = token
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.started = time.time()
        self.token_made = False  # pm made the token (no --token, --no-token or PM_SERVER_TOKEN): it prints it

    def url(self, host=None):
        import socket
        host = host or (self.host if self.host not in ("0.0.0.0", "::", "") else socket.gethostname())
        return "http://%s:%d" % ("[%s]" % host if ":" in host else host, self.port)


class RequestBody(object):
    """A request's body as a stream of exactly Content-Length bytes (checked against --max-bytes);
    a client that stops early is a 400, whoever reads."""

    def __init__(self, handler):
        config = handler.server.config
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raise HttpError(411, "chunked bodies are not accepted: send a Content-Length")
        length = handler.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            raise HttpError(411, "a Content-Length header is required")
        self.length = self.left = int(length)
        if self.length > config.max_bytes:
            raise HttpError(413, "body of %d bytes exceeds the limit of %d (--max-bytes)"
                            % (self.length, config.max_bytes))
        self.stream = handler.rfile
        self.connections, self.sock = handler.server.connections, handler.connection

    def read(self, size=CHUNK):
        if not self.left:
            return b""
        block = self.stream.read1(min(size, self.left)) if hasattr(self.stream, "read1") else \
            self.stream.read(min(size, self.left))
        if not block:
            raise HttpError(400, "the body ended after %d of %d bytes" % (self.length - self.left, self.length))
        self.left -= len(block)
        self.connections.received(self.sock, len(block))
        return block

    def drain(self):
        """Read and drop the rest, so the client reads the answer instead of a reset."""
        while self.left:
            block = self.stream.read(min(CHUNK, self.left))
            if not block:
                return
            self.left -= len(block)


def receive_body(handler, expected_sha256=None):
    """Stream the request body to a temp file in the store, hashing it; return (path, sha256)."""
    import tempfile
    body = RequestBody(handler)
    handle, temp = tempfile.mkstemp(prefix="upload-", suffix=".part", dir=handler.server.config.store.incoming())
    hasher = BackgroundHasher()
    try:
        with os.fdopen(handle, "wb") as out:
            try:
                digest, _ = copy_hashing(body, out, hasher)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    body.drain()
                raise
        if expected_sha256 and digest != expected_sha256.strip().lower():
            raise HttpError(400, "the body does not match its X-Content-SHA256")
    except BaseException:
        hasher.hexdigest()
        os.remove(temp)
        raise
    return temp, digest


def accept_bundle(temp, name, store, max_ratio=None):
    """Check an uploaded bundle and store it as the next revision; the temp file is consumed."""
    try:
        manifest = Bundle.open(temp, "the upload", max_ratio).manifest
        if manifest.name != name:
            raise HttpError(400, "the bundle is named %r in its manifest, not %r" % (manifest.name, name))
        return store.add_revision(temp, name), manifest
    except PmError as exc:
        raise HttpError(400, exc.what)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def bundle_listing(store):
    listing = {}
    for name in store.names(with_bundles=True):
        revisions = store.revisions(name)
        listing[name] = {"revisions": len(revisions), "latest": os.path.basename(revisions[-1]),
                         "stored": utc_time(os.path.getmtime(revisions[-1]))}
    return listing


def name_or_400(name):
    """A software name from the network, checked as every name is (check_name), or a 400."""
    try:
        return check_name(name)
    except PmError as exc:
        raise HttpError(400, "%s: %s" % (exc.what, exc.fix))


def refusal_script(url):
    """What GET /migrate answers without the token: a Python 2/3 program that says why and fails,
    so that `curl URL/migrate > probe.py; python probe.py` never looks like it worked."""
    return ("# -*- coding: utf-8 -*-\nimport sys\nsys.stderr.write(%r)\nsys.exit(2)\n" % (
        "pm: error: the pm server at %s needs its token to hand out the probe %s fetch "
        "'%s/migrate?token=TOKEN' (the token is printed by 'pm.pyz serve start' on the target)\n"
        % (url, DASH, url))).encode("utf-8")


def same_secret(given, token):
    """A constant-time comparison of a token as bytes (any text, non-ASCII too)."""
    import hmac
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass"))


def host_part(netloc):
    """'Name:9001' -> 'name', '[::1]:9001' -> '::1'."""
    netloc = netloc.strip().lower().rsplit("@", 1)[-1]
    if netloc.startswith("["):
        return netloc[1:netloc.find("]")] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def machine_names():
    """The names and loopback addresses a request to this machine may carry as its Host."""
    import socket
    names = set(["localhost", "127.0.0.1", "::1", socket.gethostname().lower()])
    try:
        names.add(socket.getfqdn().lower())
    except OSError:
        pass
    return names


class RequestHandler(object):
    """pm's side of one HTTP request: GET /migrate, GET and PUT /bundles, the original's POSTs; each
    answer JSON (or the probe), each refusal one line in server.log. handler_class mixes it into
    http.server's handler when a server starts (other verbs never import http.server); what the
    server knows is self.server.config."""

    server_version = "pm/" + VERSION
    default_request_version = "HTTP/1.0"  # never HTTP/0.9, whose answers have no status line
    refused = False  # answered 4xx/5xx: the client may still be sending, read it out after answering

    def setup(self):
        self.timeout = self.server.config.timeout
        super(RequestHandler, self).setup()

    def log_message(self, fmt, *args):
        text, token = fmt % args, self.server.config.token
        if token:
            text = text.replace(token, "***")  # GET /migrate?token=... must not land in server.log
        say("%s %s - %s" % (time.strftime("%H:%M:%S"), self.client_address[0], text))

    def finish(self):
        super(RequestHandler, self).finish()
        if self.refused:
            linger(self.connection)

    def send_json(self, status, data):
        self.refused = status >= 400
        body = (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_script(self, status, data):
        self.send_response(status)
        self.send_header("Content-Type", "text/x-python; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (bad request line, unknown method, ...) as JSON too."""
        self.log_message("refused %r: %d %s", self.requestline, code, message or "")
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
        if code == 501 and self.command:
            return self.send_json(405, {"error": "method %s is not supported: use GET, PUT or POST"
                                                 % re.sub(r"[^A-Z]", "?", self.command)[:20]})
        self.send_json(code, {"error": message or self.responses.get(code, ("error",))[0]})

    def authorized(self, parts):
        from urllib.parse import parse_qs
        token = self.server.config.token
        if not token:
            return True
        given = self.headers.get("Authorization", "")
        if given.startswith("Bearer ") and same_secret(given[7:].strip(), token):
            return True
        return self.command == "GET" and parts.path == "/migrate" and \
            same_secret(parse_qs(parts.query).get("token", [""])[0], token)

    def addressed_here(self):
        """Without a token, a request must be addressed to this machine: its Host (and Origin, if
        sent) a name of this machine or the address it reached, so that no web page can post to a
        local server (cross-origin POSTs, DNS rebinding)."""
        from urllib.parse import urlsplit
        address, port = self.connection.getsockname()[:2]
        here = self.server.machine_names | set([address.replace("::ffff:", "")])
        host = self.headers.get("Host", "")
        if host and host_part(host) not in here:
            return False
        for origin in self.headers.get_all("Origin") or []:  # only this server's own scheme, host and port
            parts = urlsplit(origin.strip())
            try:
                origin_port = parts.port or 80
            except ValueError:
                return False
            if parts.scheme != "http" or host_part(parts.netloc) not in here or origin_port != port:
                return False
        return True

    def do_GET(self):
        self.handle_safely(self.route_get)

    def do_PUT(self):
        self.handle_safely(self.route_put)

    def do_POST(self):
        self.handle_safely(self.route_post)

    def handle_safely(self, route):
        """Check who asks, route, and answer: whatever one request does, the server goes on serving."""
        from urllib.parse import urlsplit
        self.server.connections.head_read(self.connection)
        parts = urlsplit(self.path)
        try:
            refusal = self.refusal(parts)
            if refusal:
                return self.send_script(401, refusal)
            status, data = route(parts.path)
        except HttpError as exc:
            self.log_message("refused %s %s: %d %s", self.command, parts.path, exc.status, exc.reason)
            self.close_connection = True
            return self.send_json(exc.status, {"error": exc.reason})
        except Exception as exc:  # keep serving whatever one request does
            self.close_connection = True
            return self.answer_failure(exc, parts.path)
        if isinstance(data, bytes):
            self.send_script(status, data)
        else:
            self.send_json(status, data)

    def refusal(self, parts):
        """Raise HttpError for a request this server does not take; return the refusal script that
        GET /migrate without the token answers (`curl .../migrate > probe.py`), else None."""
        config = self.server.config
        if not config.token and not self.addressed_here():
            raise HttpError(403, "without a token this server answers only requests addressed to this "
                                 "machine (its name or address): use that URL, or start it with --token")
        if self.authorized(parts):
            return None
        if self.command == "GET" and parts.path == "/migrate":
            return refusal_script(config.url())
        raise HttpError(401, "a valid token is required: send 'Authorization: Bearer TOKEN'")

    def answer_failure(self, exc, path):
        """A full disk is a 507; a client that went is a line in the log; anything else a 500 with an
        incident number the log has the traceback of."""
        import random
        import socket
        import traceback
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            self.log_message("refused %s %s: the store's disk is full", self.command, path)
            return self.send_json(507, {"error": "the server's store is out of disk space: ask its "
                                                 "admin to free some, or carry the bundle by hand"})
        if isinstance(exc, (ConnectionError, socket.timeout)):  # the client went, or was cut off
            return self.log_message("%s %s: the connection ended (%s)", self.command, path, type(exc).__name__)
        incident = "%x" % random.getrandbits(32)
        self.log_message("internal error %s in %s %s:\n%s", incident, self.command, path,
                         traceback.format_exc().rstrip())
        return self.send_json(500, {"error": "internal error %s: the server's log has the details" % incident})

    def route_get(self, path):
        config = self.server.config
        if path == "/migrate":
            host = self.headers.get("Host", "")
            url = "http://" + host if re.match(r"^[A-Za-z0-9.:\[\]-]+$", host) else config.url()
            return 200, probe_script(url, config.token or "").encode("utf-8")
        if path == "/bundles":
            return 200, bundle_listing(config.store)
        if path.startswith("/bundles/"):
            name = self.name_from(path)
            revisions = config.store.revisions(name)
            if not revisions:
                raise HttpError(404, "no bundle named %r" % name)
            manifest = Bundle.stored(revisions[-1]).manifest
            return 200, dict(manifest.to_json(), revision=os.path.basename(revisions[-1]))
        raise HttpError(404, "no such path %r: try /migrate or /bundles" % path)

    def route_put(self, path):
        config = self.server.config
        if not path.startswith("/bundles/"):
            raise HttpError(404, "upload with PUT /bundles/NAME")
        name = self.name_from(path)
        temp, digest = receive_body(self, self.headers.get("X-Content-SHA256"))
        target, manifest = accept_bundle(temp, name, config.store, config.max_ratio)
        self.log_message("stored %s as %s (%d members)", name, target, len(manifest.members))
        return 201, {"name": name, "revision": os.path.basename(target), "sha256": digest,
                     "members": len(manifest.members)}

    def route_post(self, path):
        if path not in ORIGINAL_PARTS:
            raise HttpError(404, "no such path %r: POST /yml, /min or /zip, or PUT /bundles/NAME" % path)
        return receive_original(self, path)

    def name_from(self, path):
        from urllib.parse import unquote
        return name_or_400(unquote(path[len("/bundles/"):]))


class Deadline(object):
    """When a connection must be done by: --timeout after it came while its head is read; once the
    head is in, that time moved on by the body bytes received, at MIN_BODY_RATE. Infinite once cut off."""

    __slots__ = ("at", "reading_head", "head_deadline", "body_received")

    def __init__(self, at):
        self.at = at
        self.reading_head = True
        self.head_deadline = at
        self.body_received = 0


class Connections(object):
    """The connections being served, each with its Deadline: --timeout bounds a whole request (its
    head, and its body at MIN_BODY_RATE beyond that), and at most --max-connections are served at
    once, each by a thread of its own: a new one starts only when a thread is free. One watcher thread
    cuts off whatever runs past its deadline."""

    def __init__(self, config):
        import threading
        self.config = config
        self.lock = threading.Condition()
        self.deadlines = {}  # socket -> Deadline
        self.threads = 0  # connection threads running, ended ones uncounted (thread_ended)
        threading.Thread(target=self.watch, daemon=True).start()

    def admit(self, sock):
        """Take a new connection, or return False when all are busy. A full house lets go of the
        connection that has waited longest on its head (a client too slow to send one is not a client),
        and waits (a second at most) for its thread to end."""
        with self.lock:
            if len(self.deadlines) >= self.config.max_connections:
                waiting = [(d.at, s) for s, d in self.deadlines.items() if d.reading_head]
                if not waiting:
                    return False
                oldest = min(waiting, key=lambda pair: pair[0])[1]
                del self.deadlines[oldest]
                cut_off(oldest)
            ends = time.time() + 1
            while self.threads >= self.config.max_connections and time.time() < ends:
                self.lock.wait(ends - time.time())
            if self.threads >= self.config.max_connections:
                return False
            self.deadlines[sock] = Deadline(time.time() + self.config.timeout)
            self.threads += 1
            return True

    def thread_ended(self):
        with self.lock:
            self.threads -= 1
            self.lock.notify()

    def head_read(self, sock):
        """The head is in: from now on the deadline moves only as body bytes arrive (received)."""
        with self.lock:
            deadline = self.deadlines.get(sock)
            if deadline:
                deadline.reading_head, deadline.head_deadline, deadline.body_received = False, deadline.at, 0

    def received(self, sock, size):
        """size body bytes arrived: the deadline moves on by the time they take at MIN_BODY_RATE, never by
        what a client only declares (a body that trickles is cut off at --timeout)."""
        with self.lock:
            deadline = self.deadlines.get(sock)
            if deadline and not deadline.reading_head and deadline.at != float("inf"):
                deadline.body_received += size
                deadline.at = deadline.head_deadline + deadline.body_received / float(MIN_BODY_RATE)

    def done(self, sock):
        with self.lock:
            self.deadlines.pop(sock, None)

    def watch(self):
        while True:
            time.sleep(0.2)
            now = time.time()
            with self.lock:
                late = [s for s, d in self.deadlines.items() if d.at < now]
                for sock in late:
                    self.deadlines[sock].at = float("inf")  # cut off once
            for sock in late:
                cut_off(sock)


def linger(sock, limit=1 << 20):
    """After refusing a request: stop writing, then read (and drop) what the client still sends, for
    half a second at most, so that it reads the answer instead of a connection reset."""
    import socket
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(0.5)
        while limit > 0:
            block = sock.recv(CHUNK)
            if not block:
                return
            limit -= len(block)
    except OSError:
        pass


def cut_off(sock):
    """End a connection's reads and writes; its thread sees the end and finishes."""
    import socket
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def busy_answer():
    body = json.dumps({"error": "the server is busy: try again in a few seconds"}).encode("utf-8") + b"\n"
    return (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 2\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)) + body


class Listener(object):
    """The listening side, mixed into socketserver's threading HTTP server by make_server: a thread
    per admitted connection, a 503 when all --max-connections are busy, one log line per error.
    Requests reach its config, machine_names and connections through their self.server."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, config):
        import socket
        from http.server import BaseHTTPRequestHandler
        self.config = config
        self.address_family = socket.AF_INET6 if ":" in config.host else socket.AF_INET  # --host ::1
        self.machine_names = machine_names() if not config.token else set()
        handler = type("Handler", (RequestHandler, BaseHTTPRequestHandler), {})
        super(Listener, self).__init__((config.host, config.port), handler)
        self.connections = Connections(config)

    def process_request(self, request, client_address):
        if self.connections.admit(request):
            try:
                return super(Listener, self).process_request(request, client_address)
            except BaseException:  # no thread started: it will not end to say so
                self.connections.thread_ended()
                raise
        try:
            request.settimeout(1)
            request.sendall(busy_answer())
        except OSError:
            pass
        super(Listener, self).shutdown_request(request)

    def process_request_thread(self, request, client_address):
        try:
            super(Listener, self).process_request_thread(request, client_address)
        finally:
            self.connections.thread_ended()

    def shutdown_request(self, request):
        self.connections.done(request)
        super(Listener, self).shutdown_request(request)

    def handle_error(self, request, client_address):
        """One line in server.log, not a traceback: a client that hangs up is no news."""
        import socket
        kind, exc = sys.exc_info()[:2]
        if not isinstance(exc, (ConnectionError, socket.timeout)):
            say("%s %s - error outside a request: %s" % (time.strftime("%H:%M:%S"), client_address[0],
                                                       kind.__name__))


def make_server(config):
    import socketserver
    from http.server import HTTPServer
    try:
        server = type("Server", (Listener, socketserver.ThreadingMixIn, HTTPServer), {})(config)
    except OSError as exc:
        what = "port %d is in use on %s" % (config.port, config.host) if exc.errno == errno.EADDRINUSE else \
            "cannot listen on %s:%d (%s)" % (config.host, config.port, exc.strerror or exc)
        raise PmError(what, "choose another --port, or stop what uses it")
    config.port = server.server_address[1]
    return server


# == Server (process) =========================================================
# One server per store: the PIDFILE, the foreground server, start, stop and status.


def hold_serving_lock(store):
    """Take the store's server.lock (flock) for this process's life, or raise: exactly one server
    per store, whoever starts first; the kernel lets go when the process ends, even by kill -9."""
    handle = take_lock(store.lockfile, wait=False)
    if handle is None:
        refuse_a_second_server(store, certain=True)
    return handle


def serving_lock_held(store):
    return locked_elsewhere(store.lockfile, exclusive=False)


def running_server(store):
    """The running server's PIDFILE record, or None. A record is believed only while a server holds
    server.lock and its PID is still the same process (the start time it recorded), so a stale
    PIDFILE whose PID now names another process is never signalled."""
    if not serving_lock_held(store):
        return None
    try:
        record = read_json(store.pidfile)
        pid = int(record["pid"])
    except (ValueError, KeyError, TypeError, OSError):
        return None
    return record if process_start_time(pid) == record.get("proc_start") else None


def refuse_a_second_server(store, certain=False):
    if certain or serving_lock_held(store):
        running = running_server(store) or {}
        raise PmError("a server already runs for %s (PID %s, port %s)" % (store.home, running.get("pid", "?"),
                                                                          running.get("port", "?")),
                      "stop it with 'pm.pyz serve stop', or set PM_HOME to another store")


def run_server(config):
    """Serve in the foreground until Ctrl-C or SIGTERM; own the PIDFILE while running."""
    import threading
    store = config.store
    store.make_folder(store.home)
    lock = hold_serving_lock(store)
    if os.path.exists(store.pidfile):
        say("note: replacing a stale PIDFILE left by a server that is gone")
    for stale in os.listdir(store.incoming()):  # uploads cut off when the last server died
        os.remove(os.path.join(store.incoming(), stale))
    try:
        server = make_server(config)
    except BaseException:
        os.close(lock)
        raise

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    try:
        if config.host not in ("127.0.0.1", "localhost", "::1") and not config.token:
            say("warning: listening on %s without a token: anyone who can reach it may upload; use --token"
                % config.host)
        record = {"pid": os.getpid(), "proc_start": process_start_time(os.getpid()), "host": config.host,
                  "port": config.port, "started": config.started, "token": config.token,
                  "url": config.url()}  # on every address (0.0.0.0): this machine's name, as others reach it
        write_json(store.pidfile, record, 0o600)  # it holds the token
        write_atomic(store.probe_copy, probe_script(config.url(), config.token or ""), 0o600)
        say("pm server on http://%s:%d, store %s (Ctrl-C stops it)" % (config.host, config.port, store.home))
        if config.token_made:  # as 'serve start' says it
            print("token: %s" % config.token)
            print("on a base machine: curl -s '%s/migrate?token=%s' > probe.py && python probe.py"
                  % (config.url(), config.token))
            sys.stdout.flush()
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        remove_quietly(store.pidfile)
        remove_quietly(store.probe_copy)
        os.close(lock)
        say("pm server stopped")
    return 0


def start_server(config, self_path):
    """Run the server in the background and return once it answers."""
    import subprocess
    import secrets
    import urllib.request
    store = config.store
    refuse_a_second_server(store)
    if config.token is None:  # --no-token (or --token "") serves without one
        config.token = secrets.token_urlsafe(18)
    elif not config.token and config.host not in ("127.0.0.1", "localhost", "::1"):
        say("warning: listening on %s without a token: anyone who can reach it may upload" % config.host)
    store.make_folder(store.home)
    command = [sys.executable, self_path, "serve", "--host", config.host, "--port", str(config.port),
               "--max-bytes", str(config.max_bytes), "--timeout", str(config.timeout),
               "--max-connections", str(config.max_connections)] + \
        (["--max-ratio", str(config.max_ratio)] if config.max_ratio is not None else [])
    env = dict(os.environ, PM_HOME=store.home, PM_SERVER_TOKEN=config.token)
    with append_private(store.server_log, binary=True) as log:  # the child keeps its own copy
        log_start = log.tell()
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                 start_new_session=True)
    deadline, read_the_log = time.time() + 15, "read %s" % store.server_log
    while time.time() < deadline:
        if child.poll() is not None:
            refuse_a_second_server(store)  # another start won the race
            reason = server_error(store.server_log, log_start)  # its own one line: 'port N is in use', ...
            if reason:
                raise PmError(reason[0], reason[1] + " (the server's log: %s)" % store.server_log)
            raise PmError("the server exited at once (code %d)" % child.returncode, read_the_log)
        record = running_server(store)
        if record and record["pid"] == child.pid:
            local = "http://127.0.0.1:%d" % record["port"] if config.host in ("0.0.0.0", "::", "") else record["url"]
            headers = {"Authorization": "Bearer " + config.token} if config.token else {}
            request = urllib.request.Request(local + "/bundles", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    response.read()
                print("pm server running: %s (PID %d)" % (record["url"], child.pid))
                if config.token:
                    print("token: %s" % config.token)
                    print("on a base machine: curl -s '%s/migrate?token=%s' > probe.py && python probe.py"
                          % (record["url"], config.token))
                else:
                    print("no token: anyone who reaches it may upload")
                    print("on a base machine: curl -s '%s/migrate' > probe.py && python probe.py" % record["url"])
                return 0
            except OSError:
                pass
        time.sleep(0.1)
    child.terminate()
    raise PmError("the server did not answer within 15 s", read_the_log)


def server_error(log_path, offset):
    """(what, fix) of the last 'pm: error:' line a server wrote into its log from offset on, or None."""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(offset)
            lines = handle.read(1 << 16).decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("pm: error: "):
            what, _, fix = line[len("pm: error: "):].partition(" %s " % DASH)
            return what, fix or "read the server's log"
    return None


def stop_server(store):
    record = running_server(store)
    if not record:
        remove_quietly(store.pidfile)
        remove_quietly(store.probe_copy)
        raise PmError("no server runs for %s" % store.home, "start one with 'pm.pyz serve start'", code=1)
    os.kill(record["pid"], signal.SIGTERM)
    deadline = time.time() + 10
    while time.time() < deadline and serving_lock_held(store):
        time.sleep(0.1)
    if serving_lock_held(store) and running_server(store):
        os.kill(record["pid"], signal.SIGKILL)
    remove_quietly(store.pidfile)
    remove_quietly(store.probe_copy)
    print("pm server (PID %d) stopped" % record["pid"])
    return 0


def server_status(store, as_json=False):
    record = running_server(store)
    if as_json:
        status = {"running": bool(record), "store": store.home}
        if record:
            status.update(url=record["url"], pid=record["pid"], started=utc_time(record["started"]),
                          uptime_seconds=int(time.time() - record["started"]), bundles=bundle_listing(store))
        print_json(status)
        return 0 if record else 1
    if not record:
        show("no server runs for %s" % store.home)
        return 1
    uptime = int(time.time() - record["started"])
    show("running  %s" % record["url"])
    show("PID      %d" % record["pid"])
    show("uptime   %dh%02dm%02ds" % (uptime // 3600, uptime // 60 % 60, uptime % 60))
    listing = bundle_listing(store)
    show("bundles  %d" % len(listing))
    for name, info in sorted(listing.items()):
        show("  %-30s %s, latest %s" % (name, plural(info["revisions"], "revision"), info["stored"]))
    return 0


# == Doctor ===================================================================
# What this machine offers for a migration, each finding with the fix where something is missing
# (the server too: this section comes after it).


def doctor_findings(store):
    """(area, ok, what, fix) rows about this machine, for 'pm.pyz doctor'."""
    import platform
    rows = python_findings()
    rows.append(("pm", True, "pm %s under Python %s" % (VERSION, platform.python_version()), ""))
    rows.append(conda_finding())
    rows += manager_findings(store)
    rows.append(disk_finding(store))
    rows += tool_findings()
    rows.append(server_finding(store))
    here = this_platform()
    rows.append(("platform", True, "%s %s, %s, %s, %d CPUs%s" % (here["os"], here["os_release"], here["machine"],
                                                                here["libc"] or "no glibc", os.cpu_count() or 0,
                                                                cpu_model()), ""))
    return rows


def python_versions():
    """{real path: (version, path)} of the Pythons on PATH and in pyenv that answer."""
    import glob
    import shutil
    found = {}
    candidates = [shutil.which(n) for n in ["python3", "python", "python2", "python2.7"] +
                  ["python3.%d" % n for n in range(6, 15)]]
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates += sorted(glob.glob(os.path.join(pyenv_root, "versions", "*", "bin", "python")))
    for path in candidates:
        if not path or os.path.realpath(path) in found:
            continue
        version = (ask([path, "-c", "import platform; print(platform.python_version())"], 10) or b"").decode(
            "utf-8", "replace").strip()
        if version:
            found[os.path.realpath(path)] = (version, path)
    return found


def python_findings():
    found = python_versions()
    rows = [("python", True, "%s (%s)" % (version, path), "")
            for version, path in sorted(found.values(), key=lambda pair: [int(p) for p in re.findall(r"\d+", pair[0])])]
    if not any(v.startswith("2.7") for v, _ in found.values()):
        rows.append(("python", None, "no Python 2.7 here (needed only to pack on an old base)", ""))
    return rows


def conda_finding():
    try:
        exe = PROBE.find_conda()
        info = PROBE.run_conda_json(exe, ["info", "--json"])
    except PmError as exc:
        return ("conda", False, exc.what, "without conda pm installs a bundle's carried packages itself "
                                          "(pack --with-packages), or uses the package managers below")
    return ("conda", True, "conda %s (%s), platform %s" % (info.get("conda_version"), exe, info.get("platform")), "")


def manager_findings(store):
    import shutil
    rows = []
    for key, manager in sorted(load_managers(store).items()):
        if not manager.available():
            continue
        if root_needed_but_missing(manager):
            rows.append(("manager", False, "%s (%s): installs need root, and pm runs as uid %d" % (
                key, manager.exec.split()[0], os.geteuid()), "run pm as root, or list pip or spack first"))
        else:
            rows.append(("manager", True, "%s (%s)" % (key, shutil.which(manager.exec.split()[0])), ""))
    return rows


def disk_finding(store):
    import shutil
    place = store.home
    while not os.path.isdir(place):
        place = os.path.dirname(place)
    free = shutil.disk_usage(place).free
    return ("disk", free > 1 << 30, "%.1f GiB free for the store %s" % (free / float(1 << 30), store.home),
            "" if free > 1 << 30 else "free some space, or set PM_HOME to a larger disk")


def tool_findings():
    import shutil
    return [("tool", True, "%s (%s): %s" % (tool, shutil.which(tool), use), "")
            for tool, use in (("mamba", "makes conda environments"), ("micromamba", "makes conda-style environments"),
                              ("pixi", "makes conda-style environments"),
                              ("uv", "installs the pip route's pins, faster")) if shutil.which(tool)]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return " (%s)" % line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def server_finding(store):
    import urllib.request
    record = running_server(store)
    if not record:
        return ("server", None, "no pm server runs for %s" % store.home, "start one with 'pm.pyz serve start'")
    local = "http://127.0.0.1:%d" % record["port"] if record["host"] in ("0.0.0.0", "::", "") else record["url"]
    request = urllib.request.Request(local + "/bundles", headers={"Authorization": "Bearer " + record["token"]}
                                     if record.get("token") else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            answer.read()
        return ("server", True, "the pm server at %s answers (PID %d)" % (record["url"], record["pid"]), "")
    except OSError as exc:
        return ("server", False, "the pm server at %s does not answer (%s)" % (record["url"], exc),
                "read %s, or restart it: pm.pyz serve stop; pm.pyz serve start" % store.server_log)


# == platform-migrator 1.1.0 compatibility ====================================
# The original tool's probe protocol (POST /yml, /min, /zip), its carried zip, and its
# package-manager searches that no longer work.

ORIGINAL_PARTS = {"/yml": "env.yml", "/min": "min-deps.json", "/zip": "software.zip"}


def decode_base64(data):
    import base64
    return base64.b64decode(data, altchars=b"-_", validate=True)


class OriginalBody(object):
    """Reads the original probe's body {"name": "...", "data": "<urlsafe base64>"} from a stream,
    decoding data into a file as it goes, so memory stays bounded whatever the size."""

    def __init__(self, source):
        self.source, self.buffer, self.at = source, b"", 0

    def char(self):
        if self.at >= len(self.buffer):
            self.buffer, self.at = self.source.read(CHUNK), 0
            if not self.buffer:
                raise HttpError(400, "the body is not JSON: it ends too early")
        self.at += 1
        return self.buffer[self.at - 1:self.at]

    def token(self):
        char = self.char()
        while char in b" \t\r\n":
            char = self.char()
        return char

    def small_string(self):
        """The rest of a JSON string whose opening quote was read: at most a few KiB, escapes and all."""
        raw = b'"'
        while True:
            char = self.char()
            raw += char
            if char == b"\\":
                raw += self.char()
            elif char == b'"':
                break
            if len(raw) > 4096:
                raise HttpError(400, "a JSON string in the body is too long")
        try:
            return json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "the body is not JSON")

    def base64_to(self, sink, text):
        """Stream the data string's base64 into sink, decoded; text parts are checked as UTF-8."""
        import codecs
        utf8 = codecs.getincrementaldecoder("utf-8")() if text else None
        pending = b""
        while True:
            if self.at >= len(self.buffer):
                self.buffer, self.at = self.source.read(CHUNK), 0
                if not self.buffer:
                    raise HttpError(400, "the body is not JSON: the data string never ends")
            end = self.buffer.find(b'"', self.at)
            piece = self.buffer[self.at:end if end >= 0 else len(self.buffer)]
            self.at = end + 1 if end >= 0 else len(self.buffer)
            pending += piece
            usable = len(pending) if end >= 0 else len(pending) - len(pending) % 4
            try:
                data = decode_base64(pending[:usable])
                if utf8:
                    utf8.decode(data, final=end >= 0)
            except UnicodeDecodeError:  # a ValueError too: caught first
                raise HttpError(400, "the posted text is not UTF-8")
            except ValueError:  # binascii.Error is one
                raise HttpError(400, "attribute data is not urlsafe base64")
            sink.write(data)
            pending = pending[usable:]
            if end >= 0:
                return

    def read(self, sink, text):
        """Parse the flat object; return its fields other than data (decoded into sink)."""
        fields, seen_data = {}, False
        if self.token() != b"{":
            raise HttpError(400, "the body is not a JSON object")
        while True:
            char = self.token()
            if char == b"}" and not fields and not seen_data:
                break
            if char != b'"':
                raise HttpError(400, "the body is not JSON")
            key = self.small_string()
            if self.token() != b":":
                raise HttpError(400, "the body is not JSON")
            if self.token() != b'"':
                raise HttpError(400, "attribute %s must be a string" % key)
            if key == "data":
                self.base64_to(sink, text)
                seen_data = True
            else:
                fields[key] = self.small_string()
            char = self.token()
            if char == b"}":
                break
            if char != b",":
                raise HttpError(400, "the body is not JSON")
        if "name" not in fields:
            raise HttpError(400, "attribute name not present in JSON")
        if not seen_data:
            raise HttpError(400, "attribute data not present in JSON")
        return fields


def original_part(body, part, store):
    """Decode one of the original probe's posts, straight from the request, into its place in the
    store; return the software's name."""
    import tempfile
    handle, decoded = tempfile.mkstemp(prefix="original-", suffix=".part", dir=store.incoming())
    try:
        with os.fdopen(handle, "wb") as sink:
            try:
                fields = OriginalBody(body).read(sink, part != "software.zip")
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    body.drain()
                raise
        name = name_or_400(fields["name"])
        folder = store.original_parts_dir(name)
        store.make_folder(folder)
        os.replace(decoded, os.path.join(folder, part))
        return name
    finally:
        if os.path.exists(decoded):
            os.remove(decoded)


def assemble_original_bundle(name, parts, store, completes=None, max_ratio=None):
    """Turn the original tool's parts (env.yml, software zip, min-deps.json) into a stored bundle:
    a new revision, or the revision completes (this sequence's, made before its min-deps.json came)
    replaced whole. Returns the revision's path."""
    import tempfile
    handle, temp = tempfile.mkstemp(prefix="original-", suffix=".part", dir=store.incoming())
    os.close(handle)
    try:
        bundle_from_original(name, parts, parts["software.zip"], temp, max_ratio)
        if not (completes and os.path.isfile(completes)):
            return accept_bundle(temp, name, store, max_ratio)[0]
        Bundle.open(temp, "the upload", max_ratio)
        os.chmod(temp, 0o600)
        os.replace(temp, completes)
        return completes
    except PmError as exc:
        raise HttpError(400, exc.what)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def receive_original(handler, path):
    """One of the original probe's posts. It sends /yml, /zip and, when it has one, /min: /yml starts
    a sequence (the parts of an earlier one are dropped); a revision is made once env.yml and the zip
    are in, and min-deps.json, arriving after, completes that same revision and ends the sequence."""
    config = handler.server.config
    part = ORIGINAL_PARTS[path]
    name = original_part(RequestBody(handler), part, config.store)
    folder = config.store.original_parts_dir(name)
    made = os.path.join(folder, "revision")  # the revision this sequence made, before its min-deps.json
    if part == "env.yml":
        for other in ("software.zip", "min-deps.json", "revision"):
            remove_quietly(os.path.join(folder, other))
    parts = dict((piece, os.path.join(folder, piece)) for piece in ORIGINAL_PARTS.values()
                 if os.path.isfile(os.path.join(folder, piece)))
    result = {"name": name, "stored": part}
    if "env.yml" in parts and "software.zip" in parts:
        completes = None
        recorded = (read_part(made) or b"").decode("ascii", "replace").strip()
        if part == "min-deps.json" and re.match(r"^\d{4,}\.zip$", recorded):
            completes = os.path.join(config.store.bundles_dir(name), recorded)
        target = assemble_original_bundle(name, parts, config.store, completes, config.max_ratio)
        result["bundle"] = os.path.basename(target)
        if "min-deps.json" in parts:
            for piece in list(parts.values()) + [made]:
                remove_quietly(piece)
        else:
            write_atomic(made, os.path.basename(target))
    return 200, result


def bundle_from_original(name, parts, software_zip, target, max_ratio=None):
    """Write a pm bundle from platform-migrator 1.1.0's pieces: parts maps env.yml and min-deps.json
    to the files that hold them (those missing are read from the zip), and its zip of the software
    (entries 'dir/...'; a carried zip also holds env.yml and min-deps.json)."""
    import zipfile
    writer = None
    try:
        with zipfile.ZipFile(software_zip) as source:
            # the sizes its entries declare, which reading holds them to, before a byte is inflated
            check_unpacked_size(source.infolist(), os.path.getsize(software_zip), "the original tool's zip", max_ratio)
            check_zip_readable(source.infolist(), "the original tool's zip")
            env_yml, min_deps = original_env_files(source, parts)
            files = [i for i in source.infolist() if i.filename not in ("env.yml", "min-deps.json")
                     and not i.filename.endswith("/")]
            tops = set(safe_member_path(i.filename).split("/")[0] for i in files)
            prefix = "software/" if len(tops) == 1 and all("/" in i.filename for i in files) else "software/%s/" % name
            writer = PROBE.BundleWriter(target)
            writer.add_bytes("env.yml", env_yml)
            writer.add_bytes("min-deps.json", min_deps or b"[]\n")
            copy_original_files(source, files, prefix, writer)
            software = sorted(tops)[0] if prefix == "software/" else name
            writer.finish(PROBE.make_manifest(name, None, {"dir": software, "files": len(files)},
                                              probe_version="platform-migrator 1.1.0"))
    except BaseException as exc:
        if writer:
            writer.abort()
        if isinstance(exc, (OSError,) + zip_damage()):
            raise PmError("the original tool's zip is not readable (%s)" % exc, "send or copy it again")
        raise


def original_env_files(source, parts):
    """(env.yml, min-deps.json or None) as bytes: the posted parts, else the ones the zip carries."""
    for piece in ("env.yml", "min-deps.json"):
        if piece in source.namelist() and source.getinfo(piece).file_size > 16 << 20:
            raise PmError("the original tool's zip holds a %s over 16 MiB" % piece, "do not use this zip")
    env_yml, min_deps = [read_part(parts.get(piece)) for piece in ("env.yml", "min-deps.json")]
    env_yml = env_yml if env_yml is not None else read_optional(source, "env.yml")
    min_deps = min_deps if min_deps is not None else read_optional(source, "min-deps.json")
    if env_yml is None:
        raise PmError("the original tool's zip holds no env.yml", "send or pack it again with its env.yml")
    return env_yml, min_deps


def copy_original_files(source, files, prefix, writer):
    """The zip's software files into the bundle under prefix, streamed, each with its mode and time."""
    import zipfile
    for info in files:
        out_info = zipfile.ZipInfo(prefix + info.filename, info.date_time)
        out_info.external_attr = info.external_attr or (0o644 << 16)
        out_info.compress_type = zipfile.ZIP_DEFLATED
        out_info.file_size = info.file_size
        with source.open(info) as reader:
            writer.add_stream(out_info, reader)


def read_part(path):
    """The bytes of one of the original tool's files, or None when there is none."""
    if not path or not os.path.isfile(path):
        return None
    with open(path, "rb") as handle:
        return handle.read()


def read_optional(archive, name):
    try:
        return archive.read(name)
    except KeyError:
        return None


def is_original_zip(path):
    """A zip from platform-migrator 1.1.0's 'pack' (env.yml and the software, no manifest)."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return "manifest.json" not in names and "env.yml" in names


# sha256 (first 16 hex digits) of exec, install, install_version, search and result_fmt, one per line,
# of each section of the package-managers.ini that platform-migrator 1.1.0 ships (and its pip install
# writes into the store's config/): pacman, pip, pip-root, pip2, pip2-root, pip3, pip3-root, aptitude, apt-get.
ORIGINAL_SHIPPED_SECTIONS = frozenset(["9aac5f3a6b23b66f", "175143cb437d217c", "195e23d977386682",
                                       "3c348d720e56f5f8", "1785fdb90b44cdf8", "671426c7aa2256ae",
                                       "b974d52fb442de1a", "f3072b8169404767", "31f6332aa3187a0d"])


def is_original_shipped_section(values):
    import hashlib
    text = "\n".join(values.get(field, "").strip() for field in ("exec", "install", "install_version", "search",
                                                                 "result_fmt"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16] in ORIGINAL_SHIPPED_SECTIONS


# platform-migrator 1.1.0's searches that cannot work today (pip search is switched off at PyPI;
# its apt-get awk prints descriptions): pm answers them with its own built-in search.
BROKEN_ORIGINAL_SEARCHES = {
    "%e search %s | grep '^%s' | cut -d ' ' -f 1,2": "pip",
    "apt-cache search -n %s | awk -F ' - ' '{print $2}'": "apt-get",
}


# == Prune ====================================================================
# What the store holds, and what no install needs: attempts that failed, errored or were cut off
# (their folders, venvs and environments), passed ones whose install is gone or replaced, bundle
# revisions beyond the newest --keep N. An environment or bundle an install still names stays.

ENDED_BADLY = ("failed", "error", "interrupted")  # (no result.json yet: an attempt just begun)


class PruneRow(object):
    """One thing prune shows: a bundle revision or an attempt (with the environment in envs/ named after
    it, unless an install still runs with it), its size, and whether it goes and why."""

    def __init__(self, name, path, what, remove, why, env=None):
        self.name, self.path, self.what, self.remove, self.why, self.env = name, path, what, remove, why, env
        self.size = (PROBE.tree_size(path) or 0) + (PROBE.tree_size(env) or 0 if env else 0) if what == "attempt" \
            else os.path.getsize(path)

    def delete(self):
        import shutil
        if self.what == "revision":
            return remove_quietly(self.path)
        try:
            remove_modulefiles(read_json(os.path.join(self.path, "result.json")))
        except (OSError, ValueError):
            pass
        if self.env:
            shutil.rmtree(self.env, ignore_errors=True)
        shutil.rmtree(self.path, ignore_errors=True)


def attempt_fate(attempt):
    """(remove, why) of an attempt: running and installed ones stay, ended badly or replaced ones go."""
    status = attempt.get("status", "unfinished")
    if status == "running":
        return False, "running"
    if status in ENDED_BADLY:
        return True, status
    if attempt_install_in_use(attempt):
        return False, "%s: its install %s is in use" % (status, attempt["installed_to"])
    return True, "%s: its install %s is gone or replaced" % (status, attempt.get("installed_to"))


def prune_plan(store, names, keep):
    """[PruneRow] for every revision and attempt of the names."""
    rows = []
    for name in names:
        attempts = store.attempts(name)
        needed = set(a.get("bundle") for a in attempts if attempt_install_in_use(a))  # for 'repair'
        revisions = store.revisions(name)
        for number, path in enumerate(revisions):
            old = number < len(revisions) - keep
            rows.append(PruneRow(name, path, "revision", old and path not in needed,
                                 "an install's bundle" if old and path in needed else
                                 "beyond --keep %d" % keep if old else "among the newest %d" % keep))
        in_use = envs_in_use(attempts)
        for attempt in attempts:
            env = os.path.join(store.software(name), "envs", attempt["id"])
            env = env if os.path.isdir(env) and env not in in_use else None
            remove, why = attempt_fate(attempt)
            if env and prefix_in_use(env):
                remove, why = False, "its environment is in use"
            rows.append(PruneRow(name, os.path.join(store.software(name), attempt["id"]), "attempt", remove, why, env))
    return rows


def cmd_prune(args):
    """Show what the store holds, per software, bundle revision and attempt, with its size, and remove
    what no install needs: the attempts that failed, ended in an error or were cut off (their folders,
    with the venv and the environment pm made, with conda or without), passed attempts whose install is
    gone or was replaced by a later one, and bundle revisions beyond the newest --keep N (1). An attempt
    whose install is still there (its result.json's installed_to, whose install mark names it), the
    environment and bundle such an install names, and a running attempt are never removed. The conda
    environment named after the software (a copy of the newest install's) is conda's: prune leaves it."""
    if args.keep < 0:
        raise PmError("--keep must be 0 or more", "pass e.g. --keep 1")
    store = Store.default()
    names = [check_name(args.name)] if args.name else store.names()
    if args.name and not os.path.isdir(store.software(args.name)):
        raise PmError("nothing stored for %s in %s" % (args.name, store.home), "see 'pm.pyz list'")
    rows = prune_plan(store, names, args.keep)
    for name in names:
        show_prune_rows(store, name, [r for r in rows if r.name == name])
    for row in rows:
        if row.remove and not args.dry_run:
            row.delete()
    show("%s, %s %s%s" % (human_size(sum(r.size for r in rows)), human_size(sum(r.size for r in rows if r.remove)),
                          "would be freed" if args.dry_run else "freed",
                          " (--dry-run: nothing removed)" if args.dry_run else ""))
    return 0


def show_prune_rows(store, name, rows):
    def total(what):
        mine = [r for r in rows if r.what == what]
        return "%s (%s)" % (plural(len(mine), what), human_size(sum(r.size for r in mine)))
    show("%s: %s, %s" % (name, total("revision"), total("attempt")))
    for row in rows:
        show("  %-30s %10s  %-6s %s" % (os.path.relpath(row.path, store.software(name)), human_size(row.size),
                                        "remove" if row.remove else "keep", row.why))


# == Repair ===================================================================
# An install whose environment is gone (removed by hand, or by a clean-up outside pm): its attempt's
# bundle migrated again with the test configuration the attempt kept, the environment put back where
# the install's command names it, the tests run and the software installed again in its place; or,
# with --remove, the install removed.


def installs_to_repair(store, name, attempt_id, remove):
    """The records of the installs to repair (whose environment is gone) or to remove: ATTEMPT's, or
    every install of NAME whose environment is gone."""
    attempts = store.attempts(name) if os.path.isdir(store.software(name)) else []
    if not attempt_id:
        return [a for a in attempts if environment_gone(store, name, a)]
    chosen = [one_attempt(attempts, name, attempt_id)]
    if not attempt_install_in_use(chosen[0]):
        raise PmError("attempt %s of %s has no install of its own (none, or replaced by a later one)"
                      % (chosen[0]["id"], name), "see 'pm.pyz history %s'" % name)
    if not remove and not environment_gone(store, name, chosen[0]):
        raise PmError("the install of attempt %s has its environment: nothing to repair" % chosen[0]["id"],
                      "pass --remove to remove the install instead")
    return chosen


def repair_install(store, name, record, as_json):
    """Migrate the attempt's bundle again with its kept test configuration, the environment at the
    prefix the install's command names, the install replaced in its place. {"id", "status", ...}"""
    prefix = record.get("env_prefix")
    config_path = os.path.join(store.software(name), record["id"], TEST_CONFIG_COPY)
    if not prefix or not record.get("test_config") or not os.path.isfile(config_path):
        raise PmError("pm cannot repair the install of attempt %s (%s)" % (
            record["id"], "its environment is a venv" if not prefix else "the attempt kept no test configuration"),
            "migrate %s again, or remove the install with 'pm.pyz repair %s %s --remove'" % (name, name, record["id"]))
    if not os.path.isfile(record.get("bundle") or ""):
        raise PmError("the bundle attempt %s migrated (%s) is gone" % (record["id"], record.get("bundle")),
                      "migrate %s again, or remove the install with --remove" % name)
    config = read_test_config([config_path], name)
    config.output_dir = os.path.dirname(record["installed_to"])
    options = MigrateOptions(force=True, yes=True, no_conda=record.get("level") == "carried", prefix=prefix)
    bundle = Bundle.open(record["bundle"])
    options.preflight = check_migration(bundle, config, False)
    say("repairing the install of attempt %s: %s again at %s" % (record["id"], "its environment", prefix))
    result = migrate(store, name, config, bundle, options)
    if not as_json:
        print_summary(result)
    return {"id": record["id"], "status": "repaired" if result.passed else "failed", "attempt": result.attempt.id,
            "installed_to": result.installed or record["installed_to"], "environment": prefix,
            "activate": result.activate}


def remove_install(store, name, record):
    """Remove an install pm made (the folder in output_dir its mark names this attempt in, the mark,
    its modulefiles); its attempt stays in the history, for prune to remove. {"id", "status", ...}"""
    import shutil
    target = record["installed_to"]
    with FolderLock(store.install_lock(os.path.dirname(target)), "an install into %s" % os.path.dirname(target)):
        if attempt_install_in_use(record):
            shutil.rmtree(target)
            remove_quietly(install_mark(target))
    remove_modulefiles(record)
    say("removed the install %s (attempt %s)" % (target, record["id"]))
    return {"id": record["id"], "status": "removed", "installed_to": target}


def cmd_repair(args):
    """Repair the installs of NAME whose environment is gone (removed by hand, or by a clean-up outside
    pm), so that the command their report printed runs again: pm migrates the attempt's bundle again
    with the test configuration the attempt kept, puts the environment back where that command names
    it, runs the tests, and installs the software again in the same place (what you changed in the
    installed folder is replaced). 'pm.pyz history NAME' marks such installs 'environment gone'.
    ATTEMPT (an id or its start) chooses one install. With --remove pm removes the install instead: the
    folder it installed in output_dir and its modulefiles; 'pm.pyz prune' then removes the attempt.
    Exit 0 when every repair passed (or nothing needed one), 1 when one failed, 2 for bad input."""
    store = Store.default()
    name = check_name(args.name)
    chosen = installs_to_repair(store, name, args.attempt, args.remove)
    if not chosen:
        say("every install of %s has its environment: nothing to repair" % name)
    done = [remove_install(store, name, r) if args.remove else repair_install(store, name, r, args.json)
            for r in chosen]
    if args.json:
        print_json({"name": name, "installs": done})
    return 1 if any(row["status"] == "failed" for row in done) else 0


# == Command line =============================================================

SELF_PATH = os.path.abspath(sys.argv[0])
def bundle_file(path):
    """path, when it names a file this user can read: else the one refusal of every verb that takes a
    bundle file."""
    if os.path.exists(path) and not os.path.isfile(path):
        kind = "a folder" if os.path.isdir(path) else "a fifo, socket or device"
        raise PmError("%s is not a file but %s" % (path, kind), FIX_NOT_A_BUNDLE)
    if not os.path.isfile(path):
        raise PmError("no such bundle file: %s" % path, FIX_NOT_A_BUNDLE)
    open_bundle_file(path, path).close()
    return path


def cmd_serve(args):
    """Receive bundles from base machines and keep them in the store (~/.platform_migrator or
    $PM_HOME). GET /migrate hands out the probe; PUT /bundles/NAME takes a bundle; the original
    tool's POST /yml, /min and /zip work too. One server per store (server.pid)."""
    token = "" if args.no_token else args.token if args.token is not None else os.environ.get("PM_SERVER_TOKEN")
    if args.max_connections < 1 or args.timeout <= 0:
        raise PmError("--max-connections and --timeout must be positive", "pass e.g. --max-connections 100 --timeout 60")
    config = ServerConfig(Store.default(), args.host, args.port, token, args.max_bytes, args.timeout,
                          args.max_connections, args.max_ratio)
    if args.action is None and token is None:  # in the foreground as 'serve start' does: a new token
        import secrets
        config.token, config.token_made = secrets.token_urlsafe(18), True
    if args.json and args.action != "status":
        raise PmError("--json goes with 'serve status' only", "run 'pm.pyz serve status --json', or leave out --json")
    if args.action == "start":
        return start_server(config, SELF_PATH)
    if args.action == "stop":
        return stop_server(config.store)
    if args.action == "status":
        return server_status(config.store, args.json)
    return run_server(config)


def cmd_migrate(args):
    """Recreate stored software on this machine and prove it works: create the attempt's own conda
    environment (~/.platform_migrator/NAME/envs/<id>) from the bundle's env.yml (falling back to builds
    stripped, then to the direct requirements), unzip the software, run every test of the configuration
    in its own shell with the environment active, and install into output_dir when all pass; the conda
    environment NAME then becomes a copy of the newest install's. Each attempt keeps its env file,
    command log, test outputs and result.json in ~/.platform_migrator/NAME/<id>/.

    Test configuration (INI, read as the original tool reads it: comments are whole lines,
    %(key)s interpolates, %% is a '%'; several files merge in order):
      [NAME]
      output_dir = /abs/path
      package_managers = conda
      # each names a [test_X] section
      tests = unit, smoke
      # optional: on a pass, DIR/NAME/VERSION.lua and DIR/NAME/VERSION for 'module load NAME'
      modulefiles = /opt/modulefiles
      [test_unit]
      # run in the software's directory; timeout (s), env, workdir and runner are optional
      exec = sh tests/run.sh
      timeout = 600
      env = OMP_NUM_THREADS=1
      workdir = tests
      runner = srun -n1
    Without conda in package_managers, each direct requirement is searched with the listed
    package managers (built-in sections, ~/.platform_migrator/config/package-managers.ini,
    --pck-mgr-configs), offered as numbered choices (or --yes / --answers FILE), installed one
    by one (pip into the software's own virtual environment), then the tests run.
    Exit code 0 when every test passed, 1 when one failed, 2 for bad input, 3 when pm itself failed."""
    check_name(args.name)
    store = Store.default()
    config = read_test_config([os.path.abspath(p) for p in args.test_configs], args.name)
    if args.modulefiles:
        config.modulefiles = os.path.expanduser(check_modulefiles_dir(args.modulefiles, "--modulefiles"))
    options = MigrateOptions(args.env_name, args.force, args.skip_tests, args.yes, read_answers(args.answers),
                             args.pck_mgr_configs, args.no_conda, args.allow_scripts, args.prefix)
    options.max_ratio = args.max_ratio
    options.force_preflight = args.force_preflight
    if args.bundle:
        path = os.path.abspath(bundle_file(args.bundle))
    else:
        path = store.latest_bundle(args.name, args.max_ratio)
    try:
        bundle = Bundle.open(path, max_ratio=args.max_ratio)
        options.preflight = check_migration(bundle, config, args.force_preflight)  # before anything is written
        result = migrate(store, args.name, config, bundle, options)
    except (Exception, KeyboardInterrupt) as exc:
        attempt = getattr(exc, "attempt", None)
        if args.json and attempt:  # scripts always get the result object, also when the attempt ended in an error
            print_attempt_json(store, args.name, attempt.id)  # (before the attempt: main prints the error)
        raise
    if args.json:
        print_attempt_json(store, args.name, result.attempt.id)
    else:
        print_summary(result)
    return result.exit_code()


def print_attempt_json(store, name, attempt_id):
    """What migrate --json prints: the attempt's report, without the history."""
    report = attempt_report(store, name, attempt_id)
    report.pop("history", None)
    print_json(report)


def cmd_managers(args):
    """List the configured package managers (built-in, ~/.platform_migrator/config/package-managers.ini,
    --pck-mgr-configs) and whether each one's executable is on this machine."""
    managers = load_managers(Store.default(), args.pck_mgr_configs)
    rows = [{"key": k, "name": m.name, "exec": m.exec, "available": m.available(), "source": m.source}
            for k, m in sorted(managers.items())]
    if args.json:
        print_json(rows)
        return 0
    key_width = max(len(row["key"]) for row in rows)
    name_width = max(len(row["name"]) for row in rows)
    print("%-*s  here  %-*s  from" % (key_width, "key", name_width, "name"))
    for row in rows:
        print("%-*s  %-4s  %-*s  %s" % (key_width, row["key"], "yes" if row["available"] else "no",
                                        name_width, row["name"], row["source"]))
    return 0


def cmd_unpack(args):
    """Import a carried bundle into the store, with the same checks as an upload."""
    import shutil
    import tempfile
    bundle_file(args.bundle)
    store = Store.default()
    handle, temp = tempfile.mkstemp(prefix="unpack-", suffix=".zip", dir=store.incoming())
    os.close(handle)
    try:
        if is_original_zip(args.bundle):
            name = check_name(args.name or os.path.basename(args.bundle).rsplit(".", 1)[0])
            say("%s is the original tool's zip: converting it to a bundle" % args.bundle)
            bundle_from_original(name, {}, args.bundle, temp, args.max_ratio)
        else:
            shutil.copyfile(args.bundle, temp)
        manifest = Bundle.open(temp, args.bundle, args.max_ratio).manifest
        name = check_name(args.name or manifest.name)
        target = store.add_revision(temp, name)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise PmError("the disk is full (writing %s)" % store.home,
                      "free some space, or point PM_HOME at a larger disk", code=1)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
    say("stored %s (%s) as %s" % (name, plural(len(manifest.members), "member"), target))
    print(target)
    return 0


def stored_revision(given):
    """The stored bundle send's NAME or NAME/REVISION names (NAME: the latest); a folder or fifo of that
    name that holds no stored bundle is named for what it is (bundle_file)."""
    name, _, number = given.partition("/")
    revisions = []
    if re.match(NAME_PATTERN, name) and (not number or number.isdigit()):
        revisions = Store.default().revisions(check_name(name))
        if number:
            revisions = [r for r in revisions if int(os.path.basename(r)[:-4]) == int(number)]
    if not revisions:
        if os.path.exists(given):
            bundle_file(given)
        raise PmError("no such bundle file, and no stored bundle %s" % given,
                      "pass a file saved with 'pm.pyz pack -o', or a NAME or NAME/REVISION 'pm.pyz list' shows")
    return revisions[-1]


def cmd_send(args):
    """Send a kept bundle to a pm server: a file saved with 'pack -o' (or one pack kept when it could
    not send it), or a stored software's bundle (NAME: its latest revision; NAME/N: revision N).
    pm checks the server and the token first, as 'pack --server' does, then uploads the bundle."""
    path = args.bundle if os.path.isfile(args.bundle) else stored_revision(args.bundle)
    manifest = Bundle.open(path, max_ratio=args.max_ratio).manifest
    name = check_name(args.name or manifest.name)
    PROBE.check_server_url(args.server)
    token = args.token or os.environ.get("PM_TOKEN") or ""
    PROBE.check_server(args.server, token)
    PROBE.send_bundle(path, args.server, name, token)
    print("%s/bundles/%s" % (args.server.rstrip("/"), name))
    return 0


def cmd_report(args):
    """Show what an attempt came to (the latest, or ATTEMPT: an id or its start): the base and this
    machine side by side, each requirement and how it was met, each test, the earlier attempts.
    Every attempt also keeps this as report.html in its folder: one page, nothing fetched."""
    report = attempt_report(Store.default(), check_name(args.name), args.attempt)
    if args.sbom:
        path = os.path.join(report["path"], SBOM_FILE)
        if not os.path.isfile(path):
            raise PmError("attempt %s of %s has no %s" % (report["id"], args.name, SBOM_FILE),
                          "migrate it again with this pm (attempts before it wrote none)")
        with open(path) as handle:
            sys.stdout.write(handle.read() + "\n")
        return 0
    if args.json:
        print_json(report)
    else:
        print_report(report)
        print("\npage: %s" % os.path.join(report["path"], "report.html"))
    return 0


def cmd_doctor(args):
    """Say what this machine offers for a migration: Python versions, conda, the package managers
    pm can use as this user, free disk in the store, the server, the platform; with the fix for what
    is missing. Exit 0, or 1 when no way to make an environment is here (no conda, no manager).
    With --bundle FILE: the preflight migrate runs first (the bundle's binaries against this machine's
    glibc, libstdc++ and processor), one line per problem; exit 1 when there is one."""
    if args.bundle:
        return doctor_bundle(args.bundle, args.json)
    rows = doctor_findings(Store.default())
    if args.json:
        print_json([{"area": a, "ok": ok, "what": what, "fix": fix} for a, ok, what, fix in rows])
    else:
        for area, ok, what, fix in rows:
            mark = "ok" if ok else "--" if ok is None else "!!"
            print("%-3s %-9s %s%s" % (mark, area, what, (" %s %s" % (DASH, fix)) if fix else ""))
    usable = [r for r in rows if r[0] in ("conda", "manager") and r[1]]
    return 0 if usable else 1


def doctor_bundle(path, as_json=False):
    """doctor --bundle: the preflight of a bundle, without migrating it."""
    bundle = Bundle.open(os.path.abspath(bundle_file(path)))
    problems, here, checked = bundle_preflight(bundle)
    if as_json:
        print_json({"problems": problems, "checked": checked, "machine": here.describe(),
                    "binaries": binaries_rows(bundle.manifest.binaries),
                    "cuda": [{"package": p, "spec": s, "kind": k} for p, s, k in cuda_needs(bundle)]})
    else:
        print("this machine: %s" % here.describe())
        if not checked:
            print("-- preflight the bundle was packed without a record of its binaries: migrate reads its carried "
                  "files when it unpacks them")
        for row in binaries_rows(bundle.manifest.binaries):
            show("    %-8s %-24s %s" % (row["kind"], row["name"], ", ".join(
                "%s %s (%s)" % (key, row[key] if key != "isa" else "x86-64-v%d" % row[key], row[key + "_file"])
                for key in ("glibc", "glibcxx", "isa") if key in row) or "no version needs"))
        for package, spec, kind in cuda_needs(bundle):
            show("    %-8s %-24s %s (%s)" % ("cuda", package, spec, kind))
        for line in problems:
            print("!!  preflight %s" % line)
        if checked and not problems:
            print("ok  preflight this machine can run the bundle's binaries")
    return 1 if problems else 0


def cmd_history(args):
    """List a software's migration attempts, newest first."""
    store = Store.default()
    name = check_name(args.name)
    history = attempt_history(store, name, store.attempts(name)) if os.path.isdir(store.software(name)) else []
    if args.json:
        print_json(history)
        return 0
    if not history:
        say("no migration attempts of %s in %s" % (name, store.home))
        return 0
    show("%-28s %-11s %-9s %-7s %s" % ("attempt", "status", "level", "tests", "seconds"))
    for row in history:
        show("%-28s %-11s %-9s %-7s %s" % (row["id"], row["status"], row["level"] or "-",
                                            "%d/%d" % (row["tests_passed"], row["tests"]),
                                            "%.1f" % row["seconds"] if row["seconds"] else "-"))
        if row["environment_gone"]:
            show("  environment gone: %s %s its install's command runs without it; 'pm.pyz repair %s %s' "
                 "re-creates it" % (row["environment_gone"], DASH, name, row["id"]))
    return 0


def cmd_list(args):
    """Show stored software, bundle revisions and migration attempts."""
    rows = []
    store = Store.default()
    for name in store.names():  # read only: the original tool's files are converted by migrate or unpack
        try:
            revisions = store.revisions(name)
            row = {"name": name, "revisions": len(revisions), "latest": revisions[-1] if revisions else None,
                   "attempts": store.attempts(name)}
            if not revisions and store.has_original_files(name):
                row["note"] = "platform-migrator 1.1.0's files, converted to a bundle by its first migrate"
        except (OSError, ValueError) as exc:
            row = {"name": name, "revisions": 0, "latest": None, "attempts": [], "error": "cannot be read (%s)" % exc}
        rows.append(row)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        say("nothing stored in %s yet" % store.home)
        return 0
    for row in rows:
        show("%s  (%d bundle revision%s)%s" % (row["name"], row["revisions"], "" if row["revisions"] == 1 else "s",
                                            "  " + (row.get("error") or row.get("note")) if row.get("error") or
                                            row.get("note") else ""))
        for attempt in row["attempts"]:
            show("    %s  %-9s %s" % (attempt["id"], attempt.get("status", "unfinished"),
                                     attempt.get("level") or attempt.get("error") or ""))
    return 0


def clean_doc(text):
    """A docstring as help text: the first line, then the rest without its common indent."""
    first, _, rest = text.strip("\n").partition("\n")
    lines = rest.split("\n")
    indent = min([len(line) - len(line.lstrip()) for line in lines if line.strip()] or [0])
    return "\n".join([first.strip()] + [line[indent:].rstrip() for line in lines]).strip()


def add_max_ratio(sub):
    sub.add_argument("--max-ratio", type=int, metavar="N",
                     help="refuse a bundle that unpacks to over N times its size, once past %d MiB "
                          "(default %d; 0: no limit)" % (UNPACKED_FLOOR >> 20, MAX_UNPACK_RATIO))


def add_json(sub, what="print JSON for machines"):
    sub.add_argument("--json", action="store_true", help=what)


def add_name(sub):
    sub.add_argument("name", help="the software's name in the store")


def serve_options(sub):
    add_json(sub, "with status: print JSON for machines")
    sub.add_argument("action", nargs="?", choices=["start", "stop", "status"],
                     help="start in the background, stop, or show status (default: run in the foreground)")
    sub.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sub.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %d)" % DEFAULT_PORT)
    sub.add_argument("--token", help="require this token (default for 'start': a new random one; '' for none)")
    sub.add_argument("--no-token", action="store_true",
                     help="serve without a token, as platform-migrator 1.1.0 did (its probe and docs then work "
                          "unchanged); warned about beyond loopback")
    sub.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="largest accepted body (4 GiB)")
    sub.add_argument("--timeout", type=float, default=60.0,
                     help="seconds a whole request may take, plus 1 s per %d KiB of its body (60)"
                          % (MIN_BODY_RATE >> 10))
    sub.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS,
                     help="connections served at once; more wait for none: they get 503, or the one that "
                          "waited longest on its head is dropped (%d)" % DEFAULT_MAX_CONNECTIONS)
    add_max_ratio(sub)


def migrate_options(sub):
    add_name(sub)
    sub.add_argument("test_configs", nargs="+", metavar="TEST_CONFIG", help="INI test configuration(s), merged in order")
    sub.add_argument("--bundle", help="migrate this carried bundle file instead of the stored one")
    sub.add_argument("--skip-tests", action="store_true", help="install without running the tests")
    sub.add_argument("--env-name", help="the conda environment that becomes a copy of the newest install's "
                                        "(default: the software's name); each install runs with its own")
    sub.add_argument("--force", action="store_true",
                     help="replace a non-empty install target that pm installed")
    sub.add_argument("--pck-mgr-configs", action="append", default=[], metavar="FILE",
                     help="package-manager configuration(s), for migrations without conda")
    sub.add_argument("--answers", metavar="FILE",
                     help="JSON answers ahead of time: requirement -> \"manager:package[=version]\" or \"skip\"")
    sub.add_argument("-y", "--yes", action="store_true",
                     help="never ask: take remembered choices, else the top candidate")
    sub.add_argument("--no-conda", action="store_true",
                     help="install a bundle's carried packages (pack --with-packages) without conda, even if "
                          "this machine has one (pm does so by itself when it has none)")
    sub.add_argument("--prefix", metavar="DIR",
                     help="where the environment goes, conda's or pm's (default: the store's NAME/envs/<attempt>); "
                          "nor later pass removes it, nor is it copied to --env-name")
    sub.add_argument("--allow-scripts", action="store_true",
                     help="run the carried packages' post-link scripts (pm's linker runs them, or conda "
                          "from the cache pm builds; default: name them, run none)")
    add_json(sub, "print the attempt's report as JSON at the end (as 'report --json', without the history)")
    sub.add_argument("--modulefiles", metavar="DIR",
                     help="on a pass, write DIR/NAME/VERSION.lua (Lmod) and DIR/NAME/VERSION (Tcl) for 'module load "
                          "NAME' (or modulefiles = DIR in the test configuration)")
    sub.add_argument("--force-preflight", action="store_true",
                     help="go on when the preflight finds binaries this machine cannot run (a newer glibc or "
                          "libstdc++, another processor level), recording them in the attempt's result.json")
    add_max_ratio(sub)


def managers_options(sub):
    sub.add_argument("--pck-mgr-configs", action="append", default=[], metavar="FILE",
                     help="extra package-manager configuration(s)")
    add_json(sub)


def unpack_options(sub):
    sub.add_argument("bundle", help="a bundle file written by 'pm.pyz pack -o'")
    sub.add_argument("--name", help="store it under this name instead of the manifest's")
    add_max_ratio(sub)


def send_options(sub):
    sub.add_argument("bundle", metavar="BUNDLE",
                     help="a bundle file, or a stored software's NAME (its latest revision) or NAME/REVISION")
    sub.add_argument("--server", required=True, metavar="URL", help="the pm server, e.g. http://target:9001")
    sub.add_argument("--token", help="the server's access token (or set PM_TOKEN)")
    sub.add_argument("--name", help="send it under this name instead of the manifest's")
    add_max_ratio(sub)


def report_options(sub):
    add_name(sub)
    sub.add_argument("attempt", nargs="?", help="an attempt id, or its start (default: the latest)")
    add_json(sub, "print JSON for machines (schema in the README)")
    sub.add_argument("--sbom", action="store_true",
                     help="print the attempt's SBOM instead (sbom.cdx.json: CycloneDX 1.5 JSON)")


def doctor_options(sub):
    add_json(sub)
    sub.add_argument("--bundle", metavar="FILE",
                     help="the preflight of a bundle instead: can this machine run its binaries (glibc, "
                          "libstdc++, processor level)? Exit 1 when it cannot")


def prune_options(sub):
    sub.add_argument("name", nargs="?", help="only this software (default: all)")
    sub.add_argument("--keep", type=int, default=1, metavar="N",
                     help="keep the newest N bundle revisions of each software (default 1)")
    sub.add_argument("--dry-run", action="store_true", help="show what would be removed, remove nothing")


def repair_options(sub):
    add_name(sub)
    sub.add_argument("attempt", nargs="?", help="the install's attempt id, or its start (default: every install "
                                                "of NAME whose environment is gone)")
    sub.add_argument("--remove", action="store_true", help="remove the install instead of repairing it")
    add_json(sub)


def history_options(sub):
    add_name(sub)
    add_json(sub)


class Verb(object):
    """One verb of the command line: its line in the top help, its handler (whose docstring is its
    --help), the options it takes, its examples; python2: it runs under Python 2.7 too (the rest need 3.6+)."""

    def __init__(self, name, summary, handler, options, examples, aliases=(), python2=False):
        self.name, self.summary, self.handler, self.options = name, summary, handler, options
        self.examples, self.aliases, self.python2 = examples, list(aliases), python2

    def line(self):
        return self.summary + (" (Python 2.7+)" if self.python2 else "")

    def epilog(self):
        return "%s:\n%s" % ("examples" if len(self.examples) > 1 else "example", "\n".join(
            ("  python3 pm.pyz %s %s" % (self.name, example)).rstrip() for example in self.examples))


# The verbs, in the order of a migration; 'pack' is the probe's own (its options and examples are in
# PROBE_SOURCE): pm.py hands it the command line before parsing it.
VERBS = [
    Verb("pack", "capture a conda environment and a software directory", None, None, (), python2=True),
    Verb("serve", "receive bundles from base machines (foreground, or start/stop/status)", cmd_serve,
         serve_options, ["start            # background, prints the token", "status",
                         "--host 0.0.0.0 --token s3cret   # foreground", "stop"], aliases=["server"]),
    Verb("unpack", "import a carried bundle into the store", cmd_unpack, unpack_options, ["mysim.bundle.zip"]),
    Verb("send", "send a kept bundle (pack -o, or a stored one) to a pm server", cmd_send, send_options,
         ["mysim.bundle.zip --server http://target:9001 --token TOKEN",
          "mysim --server http://target:9001 --token TOKEN   # the stored latest revision"]),
    Verb("list", "show stored software and migration attempts", cmd_list, add_json, ["", "--json"]),
    Verb("migrate", "recreate stored software here, run its tests, install it", cmd_migrate, migrate_options,
         ["mysim tests.ini", "mysim tests.ini --bundle mysim.bundle.zip --force"]),
    Verb("report", "show what a migration attempt came to", cmd_report, report_options,
         ["mysim                 # the latest attempt",
          "mysim 20251206T1008   # an attempt, by its id or the id's start",
          "mysim --json", "mysim --sbom > mysim.cdx.json"]),
    Verb("history", "list a software's migration attempts, newest first", cmd_history, history_options,
         ["mysim", "mysim --json"]),
    Verb("managers", "list configured package managers and which exist here", cmd_managers, managers_options,
         ["", "--pck-mgr-configs mine.ini"]),
    Verb("doctor", "say what this machine offers for a migration, and what to fix", cmd_doctor, doctor_options,
         ["", "--json", "--bundle mysim.bundle.zip   # can this machine run its binaries?"]),
    Verb("prune", "show what the store holds and remove what no install needs", cmd_prune, prune_options,
         ["--dry-run", "mysim --keep 2"]),
    Verb("repair", "re-create the environment of an install whose environment is gone, or remove it", cmd_repair,
         repair_options, ["mysim                  # every install whose environment is gone ('history' marks them)",
                          "mysim 20261206T1005 --remove"]),
]

DESCRIPTION = "pm moves scientific software to another machine and proves it works there by running the " \
              "software's own tests."
ROUND_TRIP = ("a round trip:\n"
              "  target$ python3 pm.pyz serve start --host 0.0.0.0     # prints a TOKEN\n"
              "  base$   curl -s 'http://target:9001/migrate?token=TOKEN' > probe.py && python probe.py\n"
              "  target$ python3 pm.pyz migrate mysim tests.ini\n\n"
              "Run 'pm.pyz VERB --help' for the options of a verb.")


def top_help():
    """'pm.pyz --help' under Python 2.7, where only pack runs (the build writes it into __main__.py)."""
    width = max(len(verb.name) for verb in VERBS)
    return "usage: pm.pyz VERB [options]\n\n%s\n\nverbs:\n%s\n\n%s" % (
        DESCRIPTION, "\n".join("  %-*s  %s" % (width, verb.name, verb.line()) for verb in VERBS), ROUND_TRIP)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's, and a bad usage with --json on the line still prints its one JSON object."""

    json_wanted = False

    def error(self, message):
        if ArgumentParser.json_wanted and not JSON_PRINTED[0]:
            print_json(json_error(message, "see 'pm.pyz %s --help'" % self.prog.split(" ", 1)[-1]))
        argparse.ArgumentParser.error(self, message)


def build_parser():
    """The command line under Python 3, one subparser for each of VERBS."""
    parser = ArgumentParser(prog="pm.pyz", description=DESCRIPTION, epilog=ROUND_TRIP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version="pm " + VERSION)
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="say only warnings and errors on stderr")
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        if not verb.handler:  # pack: listed here, parsed by the probe
            subparsers.add_parser(verb.name, help=verb.line(), add_help=False)
            continue
        sub = subparsers.add_parser(verb.name, help=verb.summary, description=clean_doc(verb.handler.__doc__),
                                    aliases=verb.aliases, epilog=verb.epilog(),
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(function=verb.handler)
        verb.options(sub)
    return parser


INTERNAL_ERROR = 3  # pm itself failed (a bug): not "the job ran and failed" (1) nor bad input (2)


GLOBAL_FLAGS = ("-q", "--quiet", "-v", "--verbose")  # before the verb; pack takes them too


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    flags = []
    while argv and argv[0] in GLOBAL_FLAGS:
        flags.append(argv.pop(0))
    if argv and argv[0] == "pack":
        return load_probe().main(argv[1:] + flags)
    argv = flags + argv
    parser = build_parser()
    ArgumentParser.json_wanted = "--json" in argv
    args = parser.parse_args(argv)
    if not getattr(args, "function", None):
        parser.print_help()
        return 2
    PROBE.QUIET[0] = args.quiet
    current_umask()  # read once, before any thread starts
    try:
        return args.function(args)
    except PmError as exc:
        if getattr(args, "json", False) and not JSON_PRINTED[0]:
            print_json(json_error(exc.what, exc.fix, getattr(args, "name", None)))
        say(exc.line())
        return exc.code
    except KeyboardInterrupt:
        if getattr(args, "json", False) and not JSON_PRINTED[0]:
            print_json(dict(json_error("interrupted", None, getattr(args, "name", None)), status="interrupted"))
        say("pm: interrupted")
        return 130
    except BrokenPipeError:  # the reader went away (`pm.pyz list | head -2`): stop quietly, as git does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        if getattr(args, "json", False) and not JSON_PRINTED[0]:
            print_json(json_error("unexpected %s: %s" % (type(exc).__name__, exc), "report it",
                                  getattr(args, "name", None)))
        if args.verbose:
            raise
        say("pm: error: unexpected %s: %s %s run again with -v for the traceback, and report it"
            % (type(exc).__name__, exc, DASH))
        return INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())
