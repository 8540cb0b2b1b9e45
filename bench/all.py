"""make bench: every headline figure of pm beside its anchor, measured in one run on this machine.

  1. minimal dependencies: pm's graph method against platform-migrator 1.1.0's method (one
     `conda create --dry-run --json` per installed package) through real conda 25.11.1 (classic
     solver) on channels built from the real fixture graphs;
  2. packing a generated software tree: pm.pyz pack (Python 2.7 and the newest 3.x) against
     Info-ZIP `zip -r` and the original probe's in-memory zip; time and peak RSS;
  3. uploading a bundle over 127.0.0.1: pm's PUT and its original-protocol POST against the
     original server and against curl into a plain file sink (the limit); MiB/s and peak RSS;
  4. start-up: `python pm.pyz --help` against `python -c pass`, under 2.7, 3.6 and the newest 3.x;
  5. migration overhead: a migration whose tests are `true`, minus the time inside conda;
  6. the size of pm.pyz;
  7. the air-gapped round trip of a realistic environment, pm against conda-pack 0.9.2 (roundtrip.py):
     pack, bundle size, install with the tests on every route, peak RSS;
  8. the pip route with uv on the target: a venv base of 40 pip-installed wheels migrated with the same
     pins, uv on PATH against pip alone;
  9. the software's venv on the pip route: pm's make_venv against `python -m venv`.

Prints one table and writes bench/results.json, or $BENCH_RESULTS (both sides, the ratio, the
machine, the commit).
Nothing asserts on timings. BENCH_QUICK=1 runs a one-minute version (CI runs it to keep this alive);
BENCH_ONLY=WORDS runs only the sections whose name holds WORDS (e.g. "round trip").
"""
import glob
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, HERE)
import channels  # noqa: E402
import pm  # noqa: E402
import realconda  # noqa: E402
import roundtrip  # noqa: E402
import run as upload_bench  # noqa: E402
from conftest import find_python  # noqa: E402

QUICK = bool(os.environ.get("BENCH_QUICK"))
PYZ = os.path.join(ROOT, "pm.pyz")
ORIGINAL_SDIST = os.path.join(ROOT, "tests", "fixtures", "original")


def figure(name, pm_value, anchor_name, anchor_value, unit, target, better="lower", note=""):
    """One row: pm against its anchor; ratio > 1 means pm is better."""
    if pm_value and anchor_value:
        ratio = anchor_value / pm_value if better == "lower" else pm_value / anchor_value
    else:
        ratio = None
    return {"figure": name, "pm": pm_value, "anchor": anchor_name, "anchor_value": anchor_value, "unit": unit,
            "ratio": ratio, "target": target, "note": note}


def timed_child(command, env=None, cwd=None):
    """Wall seconds and peak RSS (MiB) of one command: its VmHWM, read from /proc every 10 ms (the
    kernel's rusage would count the forking Python's memory too)."""
    output = tempfile.TemporaryFile()
    started = time.time()
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=output, stderr=output)
    peak = 0
    while proc.poll() is None:
        try:
            with open("/proc/%d/status" % proc.pid) as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.01)
    if proc.returncode != 0:
        output.seek(0)
        raise SystemExit("%s failed (exit %d):\n%s" % (" ".join(command), proc.returncode,
                                                       output.read()[-3000:].decode("utf-8", "replace")))
    output.close()
    return time.time() - started, peak / 1024.0


def median(values):
    return sorted(values)[len(values) // 2]


# -- 1. minimal dependencies ---------------------------------------------------


def minimal_deps(condas, work):
    """pm's graph method in-process against the original's dry runs through real conda 25.11.1."""
    rows = []
    fixtures = sorted(channels.real_env_names(), key=lambda n: len(channels.load_graph(n)))
    probe = pm.PROBE
    for name, full in ((fixtures[0], not QUICK), (fixtures[-1], False)):
        records = channels.load_graph(name)
        started = time.perf_counter()
        for _ in range(5):
            minimal = probe.minimal_set(probe.dependency_graph(records), {})
        pm_seconds = (time.perf_counter() - started) / 5
        channel = channels.channel_from_graph(os.path.join(work, "channel-" + name), name)
        site = realconda.RealCondaSite(condas["25.11.1"], os.path.join(work, "site-" + name), [channel])
        sample = records if full else random.Random(7).sample(records, 2 if QUICK else 8)
        remaining = [r for r in records]
        seconds = 0.0
        for record in sample:
            spec = "%s=%s=%s" % (record["name"], record["version"], record["build"])
            started = time.time()
            proc = site.conda("create", "--dry-run", "--json", "-n", "dummy", spec, check=False)
            seconds += time.time() - started
            if full and proc.returncode == 0:
                links = json.loads(proc.stdout).get("actions", {}).get("LINK", [])
                linked = set(link["name"] for link in links if link["name"] != record["name"])
                remaining = [r for r in remaining if r["name"] not in linked]
        original_seconds = seconds * len(records) / len(sample)
        same = sorted(r["name"] for r in remaining) == sorted(minimal) if full else None
        note = "%d packages; %s; pm makes 0 solver calls, the original %d%s" % (
            len(records), "every dry run timed" if full else "%d of %d dry runs timed, the rest extrapolated"
            % (len(sample), len(records)), len(records),
            "" if same is None else ("; same set" if same else "; the sets differ: pm %d, original %d"
                                     % (len(minimal), len(remaining))))
        rows.append(figure("minimal deps, %s" % name, pm_seconds, "original's dry runs", original_seconds, "s",
                           ">= 100x on the largest", note=note))
    return rows


# -- 2. packing a tree -----------------------------------------------------------


def make_tree(root, files, mib):
    """files files, mib MiB in all: half text that deflates well, half random bytes."""
    each = mib * 1048576 // files
    line = b"step 000042 temperature 273.15 pressure 101325.0 ok\n"
    text = (line * (each // len(line) + 1))[:each]
    for number in range(files):
        folder = os.path.join(root, "d%03d" % (number // 200))
        if not os.path.isdir(folder):
            os.makedirs(folder)
        with open(os.path.join(folder, "f%05d.dat" % number), "wb") as handle:
            handle.write(text if number % 2 else os.urandom(each))


ORIGINAL_ZIP = """import sys, os
sys.path.insert(0, sys.argv[1])
import base_sys_script
os.chdir(os.path.dirname(sys.argv[2]))
data = base_sys_script.create_zip_file(os.path.basename(sys.argv[2]), quiet=True)
open(sys.argv[3], 'wb').write(data)
"""


def packing(condas, work):
    files, mib = (200, 20) if QUICK else (20000, 1024)
    tree = os.path.join(work, "tree", "sim")
    make_tree(tree, files, mib)
    channel = channels.example_channel(os.path.join(work, "pack-channel"))
    site = realconda.RealCondaSite(condas["25.11.1"], os.path.join(work, "pack-site"), [channel])
    site.create("sim-env", channels.EXAMPLE_SPECS)
    out = os.path.join(work, "out.zip")
    original = os.path.join(work, "original-src")
    subprocess.run(["tar", "xzf", os.path.join(ORIGINAL_SDIST, "platform-migrator-1.1.0.tar.gz"), "-C", work],
                   check=True)
    os.rename(os.path.join(work, "platform-migrator-1.1.0", "platform_migrator"), original)
    script = os.path.join(work, "original_zip.py")
    with open(script, "w") as handle:
        handle.write(ORIGINAL_ZIP)
    tools = [("Info-ZIP zip -r", ["zip", "-q", "-r", out, "sim"], os.path.dirname(tree)),
             ("pm pack, Python 2.7", [find_python("2.7"), PYZ, "pack", "-d", tree, "-e", "sim-env", "-o", out,
                                      "--yes"], None),
             ("pm pack, Python %s" % platform.python_version(), [sys.executable, PYZ, "pack", "-d", tree, "-e",
                                                                  "sim-env", "-o", out, "--yes"], None),
             ("original probe's zip", [find_python("2.7"), script, original, tree, out], None)]
    results = dict((label, []) for label, _, _ in tools)
    for _ in range(1 if QUICK else 2):
        for label, command, cwd in tools:
            if os.path.exists(out):
                os.remove(out)
            subprocess.run(["sync"])
            results[label].append(timed_child(command, site.env(), cwd))
    zip_seconds = median([r[0] for r in results["Info-ZIP zip -r"]])
    rows = []
    for label in list(results)[1:]:
        seconds = median([r[0] for r in results[label]])
        rss = max(r[1] for r in results[label])
        rows.append(figure("pack %d files, %d MiB: %s" % (files, mib, label), seconds, "Info-ZIP zip -r",
                           zip_seconds, "s", "1.5x Info-ZIP's speed, RSS < 64 MiB" if label.startswith("pm") else "",
                           note="peak RSS %.0f MiB (Info-ZIP %.0f MiB)" % (rss, max(r[1] for r in
                                                                                   results["Info-ZIP zip -r"]))))
    return rows


# -- 3. uploading a bundle -------------------------------------------------------


def sink_server(path, ready):
    """The limit: a socket read straight into a file, answering 200 when the body is in."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    ready.append(server.getsockname()[1])
    connection, _ = server.accept()
    head, length = b"", 0
    while b"\r\n\r\n" not in head:
        head += connection.recv(65536)
    head, _, rest = head.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    buffer = bytearray(1 << 20)
    with open(path, "wb") as out:
        out.write(rest)
        left = length - len(rest)
        while left > 0:
            got = connection.recv_into(buffer, min(len(buffer), left))
            if not got:
                break
            out.write(memoryview(buffer)[:got])
            left -= got
    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    connection.close()
    server.close()


def curl_limit(bundle, work):
    ready = []
    thread = threading.Thread(target=sink_server, args=(os.path.join(work, "sink.bin"), ready))
    thread.start()
    while not ready:
        time.sleep(0.01)
    started = time.time()
    subprocess.run(["curl", "-s", "-o", "/dev/null", "-H", "Expect:", "-T", bundle,
                    "http://127.0.0.1:%d/sink" % ready[0]], check=True)
    thread.join()
    seconds = time.time() - started
    os.remove(os.path.join(work, "sink.bin"))
    return seconds


def install_original(work):
    """platform-migrator 1.1.0 from its sdist in tests/fixtures/original, offline, in a Python 3.6 venv."""
    venv = os.path.join(work, "orig-venv")
    subprocess.run([find_python("3.6"), "-m", "venv", venv], check=True)
    subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "--no-index", "--find-links", ORIGINAL_SDIST,
                    "platform-migrator==1.1.0"], check=True, env=dict(os.environ, HOME=work))
    python = os.path.join(venv, "bin", "python")
    return python, glob.glob(os.path.join(venv, "lib", "python3.6", "site-packages", "platform_migrator"))[0]


def uploading(work):
    mib = 32 if QUICK else 1024
    bundle = os.path.join(work, "big.zip")
    upload_bench.make_bundle(bundle, mib)
    size = os.path.getsize(bundle) / 1048576.0
    original = install_original(work)
    runs = {"pm PUT": [], "pm POST /zip": [], "original": [], "limit": []}
    for _ in range(1 if QUICK else 3):
        subprocess.run(["sync"])
        runs["pm PUT"].append(upload_bench.run_pm_server(work, bundle, sys.executable, PYZ))
        shutil.rmtree(os.path.join(work, "pm-home"), ignore_errors=True)
        runs["pm POST /zip"].append(upload_bench.run_pm_legacy(work, bundle, sys.executable, PYZ))
        shutil.rmtree(os.path.join(work, "pm-home"), ignore_errors=True)
        runs["original"].append(upload_bench.run_original_server(work, bundle, *original))
        shutil.rmtree(os.path.join(work, "orig-home"), ignore_errors=True)
        runs["limit"].append((curl_limit(bundle, work), 0))
    rate = dict((k, size / median([r[0] for r in v])) for k, v in runs.items())
    rss = dict((k, max(r[1] for r in v) / 1024.0) for k, v in runs.items())
    rows = []
    for label in ("pm PUT", "pm POST /zip"):
        rows.append(figure("upload %.0f MiB: %s" % (size, label), rate[label], "original server", rate["original"],
                           "MiB/s", ">= 5x the original, RSS < 64 MiB", better="higher",
                           note="peak RSS %.0f MiB (original %.0f MiB)" % (rss[label], rss["original"])))
        rows.append(figure("upload %.0f MiB: %s" % (size, label), rate[label], "curl into a file sink (limit)",
                           rate["limit"], "MiB/s", ">= 75% of the limit", better="higher"))
    return rows


# -- 4. start-up -----------------------------------------------------------------


def startup():
    """As users start it: bytecode may be written (pm.pyz keeps its compiled code in ~/.cache/pm),
    after one run that fills that cache."""
    rows = []
    env = dict((k, v) for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE")
    for version in ("2.7", "3.6", "newest"):
        python = find_python(version)
        runs = 3 if QUICK else 15
        bare = median([timed_child([python, "-c", "pass"], env)[0] for _ in range(runs)])
        help_args = [python, PYZ, "pack", "--help"] if version == "2.7" else [python, PYZ, "--help"]
        timed_child(help_args, env)
        pyz = median([timed_child(help_args, env)[0] for _ in range(runs)])
        rows.append(figure("start-up, Python %s (%s)" % (version, " ".join(help_args[2:])), pyz, "python -c pass",
                           bare, "s", "< 2x the bare interpreter",
                           note="%.1fx the bare interpreter" % (pyz / bare)))
    return rows


# -- 5. migration overhead -------------------------------------------------------


MIGRATE_CONFIG = "[sim]\noutput_dir = %s\npackage_managers = conda\ntests = t\n[test_t]\nexec = true\n"


def migration_overhead(condas, work):
    channel = channels.example_channel(os.path.join(work, "mig-channel"))
    base = realconda.RealCondaSite(condas["25.11.1"], os.path.join(work, "mig-base"), [channel])
    base.create("sim-env", channels.EXAMPLE_SPECS)
    software = os.path.join(work, "mig-src", "sim")
    os.makedirs(software)
    with open(os.path.join(software, "run.sh"), "w") as handle:
        handle.write("echo ok\n")
    bundle = os.path.join(work, "sim.zip")
    subprocess.run([sys.executable, PYZ, "pack", "-d", software, "-e", "sim-env", "-o", bundle, "--yes"],
                   env=base.env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    overheads, totals = [], []
    for number in range(1 if QUICK else 3):
        target = realconda.RealCondaSite(condas["25.11.1"], os.path.join(work, "mig-target-%d" % number), [channel])
        config = os.path.join(work, "mig-%d.ini" % number)
        with open(config, "w") as handle:
            handle.write(MIGRATE_CONFIG % os.path.join(work, "mig-out-%d" % number))
        seconds, _ = timed_child([sys.executable, PYZ, "migrate", "sim", config, "--bundle", bundle], target.env())
        inside = 0.0
        for log in glob.glob(os.path.join(target.home, "sim", "2*", "commands.log")):
            with open(log) as handle:
                for line in handle:
                    if " after " in line and line.split(" ", 1)[1].startswith("exit "):
                        inside += float(line.rsplit(" after ", 1)[1].split()[0])
        overheads.append(seconds - inside)
        totals.append(seconds)
    return [figure("migration overhead (tests: true)", median(overheads), "the whole migration", median(totals), "s",
                   "< 1 s", note="conda's own commands take the rest")]



# -- 8. the pip route with uv ------------------------------------------------------


def pip_route_with_uv(work):
    """A venv base of 40 wheels from a local folder, packed once, migrated with package_managers = pip:
    uv on PATH (it takes the one exact resolve) against pip alone, median wall seconds."""
    import wheels
    folder = os.path.join(work, "uv-wheels")
    names = ["kit%02d" % n for n in range(40)]
    for name in names:
        wheels.make_wheel(folder, name, "1.0", {"%s/__init__.py" % name: "VALUE = 1\n" + "# pad\n" * 2000})
    python = find_python("3.11")
    venv, soft = os.path.join(work, "uv-base"), os.path.join(work, "uvbench")
    os.makedirs(soft)
    with open(os.path.join(soft, "check.py"), "w") as handle:
        handle.write("".join("import %s\n" % n for n in names))
    quiet = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_FIND_LINKS=folder,
                 PIP_DISABLE_PIP_VERSION_CHECK="1")
    subprocess.run([python, "-m", "venv", venv], check=True)
    subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q"] + ["%s==1.0" % n for n in names], env=quiet,
                   check=True)
    bundle = os.path.join(work, "uvbench.zip")
    subprocess.run([sys.executable, PYZ, "pack", "-d", soft, "-e", venv, "-o", bundle, "--yes"], env=quiet,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uv_dir = os.path.dirname(shutil.which("uv", path=os.path.dirname(sys.executable)) or "/nonexistent/uv")
    times = {}
    for label, path in (("uv", uv_dir + ":" + os.environ["PATH"]), ("pip", os.environ["PATH"])):
        runs = []
        for number in range(1 if QUICK else 3):
            home = os.path.join(work, "uv-home-%s-%d" % (label, number))
            config = os.path.join(work, "uv.ini")
            with open(config, "w") as handle:
                handle.write("[uvbench]\noutput_dir = %s\npackage_managers = pip\ntests = check\n[test_check]\n"
                             "exec = python check.py\n" % os.path.join(home, "installed"))
            seconds, _ = timed_child([sys.executable, PYZ, "migrate", "uvbench", config, "--bundle", bundle, "--yes"],
                                     env=dict(quiet, PM_HOME=home, PATH=path))
            runs.append(seconds)
        times[label] = median(runs)
    return [figure("pip route, 40 pins: migrate with uv", times["uv"], "the same with pip alone", times["pip"], "s",
                   "uv faster", note="same pins, read back by pip")]


# -- 9. the software's venv ----------------------------------------------------------


MAKE_VENV = ("import sys; sys.path.insert(0, sys.argv[1]); import pm; "
             "sys.exit(pm.make_venv(pm.Attempt(pm.Store(sys.argv[2]), 'bench'), sys.argv[3], sys.argv[4])[0])")


def software_venv(work):
    """The pip route's venv for the base's Python: pm's make_venv (venv --without-pip, then pip from
    that Python's ensurepip wheels through pm's wheel installer) against `python -m venv` (ensurepip,
    which byte-compiles pip), each a fresh folder, side by side."""
    rows = []
    env = dict((k, v) for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE")
    for version in ("3.11", "newest"):
        python = find_python(version)
        times = {"pm": [], "venv": []}
        for run in range(1 if QUICK else 5):
            for side in ("pm", "venv"):
                target = os.path.join(work, "venv-%s-%d" % (side, run))
                command = [sys.executable, "-c", MAKE_VENV, ROOT, os.path.join(work, "venv-store"), python, target] \
                    if side == "pm" else [python, "-m", "venv", target]
                times[side].append(timed_child(command, env)[0])
                shutil.rmtree(target)
        rows.append(figure("the software's venv, Python %s" % version, median(times["pm"]), "python -m venv",
                           median(times["venv"]), "s", "faster than python -m venv",
                           note="the same files and scripts, pip not byte-compiled"))
    return rows


def main():
    started = time.time()
    work = tempfile.mkdtemp(prefix="pm-bench-all-")
    try:
        condas = realconda.build_all(find_python, ["25.11.1", "4.3.16-py3.6"])
        rows = []
        for label, step in (("minimal dependencies", lambda: minimal_deps(condas, work)),
                            ("packing", lambda: packing(condas, work)), ("uploading", lambda: uploading(work)),
                            ("start-up", startup), ("migration overhead", lambda: migration_overhead(condas, work)),
                            ("the air-gapped round trip", lambda: roundtrip.roundtrip(
                                condas, work, timed_child, median, figure, QUICK, PYZ)),
                            ("the pip route with uv", lambda: pip_route_with_uv(work)),
                            ("the software's venv", lambda: software_venv(work))):
            if os.environ.get("BENCH_ONLY", label) not in label:
                continue
            print("measuring %s ..." % label, file=sys.stderr, flush=True)
            rows += step()
        rows.append(figure("pm.pyz size", os.path.getsize(PYZ) / 1024.0, "", None, "KiB", "",
                           note="one file, the standard library only"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, stdout=subprocess.PIPE,
                            universal_newlines=True).stdout.strip()
    machine = {"cpu": pm.cpu_model().strip(" ()"), "cores": os.cpu_count(), "os": "%s %s" % (platform.system(),
                                                                                          platform.release()),
               "python": platform.python_version()}
    print("\npm %s (commit %s) on %s, %d cores%s; %.0f s%s" % (pm.VERSION, commit, machine["cpu"], machine["cores"],
                                                             "", time.time() - started, " (BENCH_QUICK)" if QUICK else ""))
    print("%-52s %10s  %-30s %10s %8s  %s" % ("figure", "pm", "anchor", "anchor", "ratio", "target / note"))
    for row in rows:
        print("%-52s %10s  %-30s %10s %8s  %s" % (
            row["figure"][:52], "%.3g %s" % (row["pm"], row["unit"]), row["anchor"][:30],
            "%.3g" % row["anchor_value"] if row["anchor_value"] else "-",
            "%.1fx" % row["ratio"] if row["ratio"] else "-", "; ".join(x for x in (row["target"], row["note"]) if x)))
    results = {"commit": commit, "machine": machine, "quick": QUICK, "seconds": round(time.time() - started, 1),
               "figures": rows}
    out = os.environ.get("BENCH_RESULTS") or os.path.join(HERE, "results.json")
    with open(out, "w") as handle:
        json.dump(results, handle, indent=1)
    print("\nwritten: %s" % os.path.relpath(out, ROOT))


if __name__ == "__main__":
    main()
