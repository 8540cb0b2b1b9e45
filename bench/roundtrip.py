"""The air-gapped round trip, pm against conda-pack 0.9.2 (make bench, section 7).

The environment is realistic: the scientific stack (numpy, scipy, pandas, matplotlib, pillow and
what they need) made into conda packages from real wheels, with prefix placeholders as real
packages have, and a 'python' package: a copy of a real CPython 3.11 (its standard library; text
files naming its prefix carry conda's placeholder), created by real conda 25.11.1 from a local
channel. The wheels are downloaded once into .bench-cache/wheels (pip, the machine's index); the
channel is built once into .bench-cache/realenv-<size>/ and reused.

For each round it measures, as whole processes with their peak RSS:
  pack     pm.pyz pack --with-packages          | conda-pack -p PREFIX -o env.tar.gz
  install  pm.pyz migrate (tests included) with | tar -x, conda-unpack, the same test
           no conda (unshare -n), conda 25.11.1
           and conda 4.3.16 on the target
The software's one test imports numpy, scipy, pandas and matplotlib and does a little with each.
BENCH_BASELINE=<commit> also runs the pm.pyz of that commit (one round), for a before/after table;
BENCH_SCALE=N makes the environment about N times as large (copies of the wheels' packages; one round).
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CACHE = os.path.join(ROOT, ".bench-cache")
PLACEHOLDER = "/opt/anaconda1anaconda2anaconda3" + "_placehold" * 20  # as conda-build pads it
WHEELS = ["numpy==1.26.4", "scipy==1.11.4", "pandas==2.1.4", "matplotlib==3.8.4", "pillow==10.4.0",
          "contourpy==1.2.1", "cycler==0.12.1", "fonttools==4.53.1", "kiwisolver==1.4.5", "packaging==24.1",
          "pyparsing==3.1.2", "python-dateutil==2.9.0.post0", "pytz==2024.1", "six==1.16.0", "tzdata==2024.1"]
QUICK_WHEELS = ["six==1.16.0", "pyparsing==3.1.2", "cycler==0.12.1"]
CHECK = """import sys
import numpy, scipy.linalg, pandas, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
frame = pandas.DataFrame({"x": numpy.arange(10.0)})
assert abs(scipy.linalg.det(numpy.eye(3)) - 1.0) < 1e-9 and frame.x.sum() == 45.0
plt.plot(frame.x)
print("ok", numpy.__version__, scipy.__version__, pandas.__version__, matplotlib.__version__)
"""
QUICK_CHECK = """import six, pyparsing, cycler
print("ok", six.__version__, pyparsing.__version__)
"""
CONFIG = "[realsim]\noutput_dir = %s\npackage_managers = conda\ntests = imports\n[test_imports]\nexec = python check.py\n"


def wheels(quick):
    """The wheels for CPython 3.11 on manylinux x86_64, downloaded once."""
    folder = os.path.join(CACHE, "wheels")
    wanted = QUICK_WHEELS if quick else WHEELS
    have = [os.path.basename(p).lower() for p in glob.glob(os.path.join(folder, "*.whl"))]
    missing = [w for w in wanted if not any(h.startswith(w.split("==")[0].replace("-", "_").lower() + "-" +
                                                          w.split("==")[1]) for h in have)]
    if missing:
        os.makedirs(folder, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.11", "--platform", "manylinux2014_x86_64", "-d", folder] + missing,
                       check=True)
    found = []
    for spec in wanted:
        name, version = spec.split("==")
        (path,) = [p for p in glob.glob(os.path.join(folder, "*.whl")) if os.path.basename(p).lower().startswith(
            "%s-%s-" % (name.replace("-", "_").lower(), version))]
        found.append((name, version, path))
    return found


def add_package(channel, name, version, stage, depends, placeholders=()):
    """stage (a folder laid out as in the prefix) as NAME-VERSION-0.tar.bz2 in channel/linux-64: info/
    first, with index.json and paths.json (text placeholders for the files listed)."""
    info = os.path.join(stage, "info")
    os.makedirs(info, exist_ok=True)
    paths = []
    for root, dirs, files in os.walk(stage):
        dirs[:] = sorted(d for d in dirs if os.path.join(root, d) != info)
        for filename in sorted(files):
            rel = os.path.relpath(os.path.join(root, filename), stage)
            entry = {"_path": rel, "path_type": "softlink" if os.path.islink(os.path.join(root, filename))
                     else "hardlink"}
            if rel in placeholders:
                entry.update(prefix_placeholder=PLACEHOLDER, file_mode="text")
            paths.append(entry)
    index = {"name": name, "version": version, "build": "0", "build_number": 0, "depends": depends,
             "subdir": "linux-64", "arch": "x86_64", "platform": "linux", "license": "see the wheel"}
    with open(os.path.join(info, "index.json"), "w") as handle:
        json.dump(index, handle)
    with open(os.path.join(info, "paths.json"), "w") as handle:
        json.dump({"paths": paths, "paths_version": 1}, handle)
    with open(os.path.join(info, "files"), "w") as handle:
        handle.write("".join(p["_path"] + "\n" for p in paths))
    with open(os.path.join(info, "has_prefix"), "w") as handle:
        handle.write("".join("%s text %s\n" % (PLACEHOLDER, p) for p in sorted(placeholders)))
    out = os.path.join(channel, "linux-64", "%s-%s-0.tar.bz2" % (name, version))
    with tarfile.open(out, "w:bz2") as tar:
        tar.add(info, "info")
        for entry in os.listdir(stage):
            if entry != "info":
                tar.add(os.path.join(stage, entry), entry)
    shutil.rmtree(stage)


def python_package(channel, work, quick):
    """'python' 3.11: a copy of a real CPython 3.11 (lib/python3.11 without its tests and
    site-packages); quick: a wrapper script around it."""
    source = subprocess.run([find_python("3.11"), "-c", "import sys; print(sys.base_prefix)"],
                            stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout.strip()
    stage = os.path.join(work, "stage-python")
    os.makedirs(os.path.join(stage, "bin"))
    placeholders = []
    if quick:
        with open(os.path.join(stage, "bin", "python"), "w") as handle:
            handle.write("#!/bin/sh\n# prefix: %s\nPYTHONPATH=\"$(dirname \"$0\")/../lib/python3.11/site-packages\" "
                         "exec %s/bin/python3.11 \"$@\"\n" % (PLACEHOLDER, source))
        os.chmod(os.path.join(stage, "bin", "python"), 0o755)
        placeholders.append("bin/python")
    else:
        shutil.copy2(os.path.join(source, "bin", "python3.11"), os.path.join(stage, "bin", "python3.11"))
        os.symlink("python3.11", os.path.join(stage, "bin", "python"))
        os.symlink("python3.11", os.path.join(stage, "bin", "python3"))
        os.makedirs(os.path.join(stage, "lib"))
        for lib in glob.glob(os.path.join(source, "lib", "libpython3*")):
            shutil.copy2(lib, os.path.join(stage, "lib"), follow_symlinks=False)
        shutil.copytree(os.path.join(source, "lib", "python3.11"), os.path.join(stage, "lib", "python3.11"),
                        symlinks=True, ignore=lambda folder, names: [n for n in names if n in ("test", "site-packages")
                                                                      and folder.endswith("python3.11")])
        os.makedirs(os.path.join(stage, "lib", "python3.11", "site-packages"))
        old = source.encode()
        for root, _, files in os.walk(stage):
            for filename in files:
                path = os.path.join(root, filename)
                if os.path.islink(path) or filename.endswith((".pyc", ".so")) or "libpython" in filename \
                        or filename == "python3.11":
                    continue
                with open(path, "rb") as handle:
                    data = handle.read()
                if old in data and b"\0" not in data:
                    with open(path, "wb") as handle:
                        handle.write(data.replace(old, PLACEHOLDER.encode()))
                    placeholders.append(os.path.relpath(path, stage))
    add_package(channel, "python", "3.11.7", stage, [], placeholders)


def wheel_package(channel, work, name, version, path, depends, copy=0):
    """One wheel as a conda package of its files under lib/python3.11/site-packages, with a small
    config file naming the prefix (a text placeholder, as many real packages have). copy N > 0: the
    same files as package NAME-copyN under site-packages/pmcopyN/ (BENCH_SCALE)."""
    if copy:
        name = "%s-copy%d" % (name, copy)
    stage = os.path.join(work, "stage-" + name)
    site = os.path.join(stage, "lib", "python3.11", "site-packages")
    if copy:
        site = os.path.join(site, "pmcopy%d" % copy)
    os.makedirs(site)
    with zipfile.ZipFile(path) as wheel:
        wheel.extractall(site)
    os.makedirs(os.path.join(stage, "etc"))
    with open(os.path.join(stage, "etc", name + ".conf"), "w") as handle:
        handle.write("prefix = %s\n" % PLACEHOLDER)
    for root, _, files in os.walk(stage):
        for filename in files:  # mtimes as a build leaves them
            os.utime(os.path.join(root, filename), (1700000000, 1700000000))
    # bytecode, as conda packages of Python code ship it (valid while the sources keep their mtimes)
    subprocess.run([find_python("3.11"), "-m", "compileall", "-q", "-j", "0", site], check=False,
                   stdout=subprocess.DEVNULL)
    add_package(channel, name.lower(), version, stage, ["python 3.11.*"] + depends, ["etc/%s.conf" % name])


def realistic_channel(work, quick, scale=1):
    """The channel (built once, kept in .bench-cache) and the specs of the environment; scale N > 1
    adds N - 1 copies of every wheel's package (BENCH_SCALE=10: about 4 GiB), built in parallel."""
    import channels
    from concurrent.futures import ProcessPoolExecutor
    found = wheels(quick)
    channel = os.path.join(CACHE, "realenv-quick" if quick else "realenv" if scale == 1 else "realenv-x%d" % scale)
    specs = ["python 3.11.7"] + ["%s%s %s" % (name.lower(), "-copy%d" % copy if copy else "", version)
                                 for copy in range(scale) for name, version, _ in found]
    if os.path.isfile(os.path.join(channel, "linux-64", "repodata.json")):
        return channel, specs
    shutil.rmtree(channel, ignore_errors=True)
    os.makedirs(os.path.join(channel, "linux-64"))
    sys.stderr.write("building the realistic environment's channel (once) ...\n")
    python_package(channel, work, quick)
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for done in [pool.submit(wheel_package, channel, work, name, version, path, [], copy)
                     for copy in range(scale) for name, version, path in found]:
            done.result()
    channels.index_channel(channel)
    return channel, specs


def find_python(version):
    from conftest import find_python as finder
    return finder(version)


def tree_size(prefix):
    total = files = 0
    for root, _, names in os.walk(prefix):
        for name in names:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                total += os.path.getsize(path)
                files += 1
    return total, files


def baseline_pyz(commit, work):
    """pm.pyz as it was at commit (BENCH_BASELINE), built from that commit's own files."""
    folder = os.path.join(work, "baseline-" + commit)
    os.makedirs(folder)
    for name in ("pm.py", "build_zipapp.py"):
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(subprocess.run(["git", "show", "%s:%s" % (commit, name)], cwd=ROOT, check=True,
                                        stdout=subprocess.PIPE).stdout)
    subprocess.run([sys.executable, "build_zipapp.py", "-o", "pm.pyz"], cwd=folder, check=True,
                   stdout=subprocess.DEVNULL)
    return os.path.join(folder, "pm.pyz")


def roundtrip(condas, work, timed_child, median, figure, quick, pyz):
    """Pack, bundle size and install for each route, pm beside conda-pack; rows for the table."""
    import realconda
    scale = int(os.environ.get("BENCH_SCALE") or 1)
    channel, specs = realistic_channel(work, quick, scale)
    base = realconda.RealCondaSite(condas["25.11.1"], os.path.join(work, "rt-base"), [channel])
    prefix = base.create("realenv", specs)
    software = os.path.join(work, "rt-src", "realsim")
    os.makedirs(software)
    with open(os.path.join(software, "check.py"), "w") as handle:
        handle.write(QUICK_CHECK if quick else CHECK)
    tools = (timed_child, median, figure)
    rows = []
    if os.environ.get("BENCH_BASELINE"):
        commit = os.environ["BENCH_BASELINE"]
        rows += measure(condas, work, tools, base, prefix, software, specs, baseline_pyz(commit, work), 1,
                        "pm %s: " % commit)
    return rows + measure(condas, work, tools, base, prefix, software, specs, pyz, 1 if quick or scale > 1 else 3,
                          "x%d: " % scale if scale > 1 else "")


def measure(condas, work, tools, base, prefix, software, specs, pyz, rounds, prefix_label):
    """rounds of pack and install on every route by pyz, and by conda-pack; the rows (medians)."""
    import realconda
    timed_child, median, figure = tools
    size, files = tree_size(prefix)
    conda_pack = os.path.join(os.path.dirname(sys.executable), "conda-pack")
    newest = find_python("newest")
    times = dict((key, []) for key in ("pm pack", "cp pack", "cp pack 2", "pm none", "pm 25", "pm 4.3", "cp install"))
    sizes = {}
    for number in range(rounds):
        run = os.path.join(work, "rt-%s%d" % (prefix_label.split(":")[0].replace(" ", "-"), number))
        os.makedirs(run)
        bundle, packed = os.path.join(run, "realsim.zip"), os.path.join(run, "realenv.tar.gz")
        times["pm pack"].append(timed_child([newest, pyz, "pack", "-d", software, "-e", "realenv", "-o", bundle,
                                             "--yes", "--with-packages"], base.env()))
        times["cp pack 2"].append(timed_child([conda_pack, "-p", prefix, "-o", packed, "-q", "--n-threads", "2"],
                                              base.env()))
        os.remove(packed)
        times["cp pack"].append(timed_child([conda_pack, "-p", prefix, "-o", packed, "-q"], base.env()))
        sizes = {"pm": os.path.getsize(bundle), "cp": os.path.getsize(packed)}
        for key, where in (("pm none", None), ("pm 25", "25.11.1"), ("pm 4.3", "4.3.16-py3.6")):
            config = os.path.join(run, key.replace(" ", "-") + ".ini")
            with open(config, "w") as handle:
                handle.write(CONFIG % os.path.join(run, "out-" + key.replace(" ", "-").replace(".", "")))
            if where is None:
                env = {"PATH": "/usr/bin:/bin", "HOME": os.path.join(run, "home"), "PM_HOME": os.path.join(run, "store"),
                       "LANG": "C.UTF-8"}
            else:
                target = realconda.RealCondaSite(condas[where], os.path.join(run, "target-" + where), [])
                env = target.env()
            times[key].append(timed_child(["unshare", "-n", newest, pyz, "migrate", "realsim", config, "--bundle",
                                           bundle] + (["--no-conda"] if where is None else []), env))
        unpacked = os.path.join(run, "cp-env")
        script = ("mkdir -p {d} && tar -xzf {t} -C {d} && export PATH={d}/bin:$PATH && conda-unpack && cd {s} && "
                  "python check.py"
                  .format(d=unpacked, t=packed, s=software))
        times["cp install"].append(timed_child(["unshare", "-n", "/bin/sh", "-c", script],
                                               {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}))
        shutil.rmtree(run)
    seconds = dict((key, median([t[0] for t in values])) for key, values in times.items())
    rss = dict((key, max(t[1] for t in values)) for key, values in times.items())
    label = prefix_label + "%d packages, %d files, %.0f MiB" % (len(specs), files, size / 1048576.0)
    rows = [figure("round trip pack (%s)" % label, seconds["pm pack"], "conda-pack", seconds["cp pack"], "s",
                   "fastest", note="peak RSS pm %.0f MiB, conda-pack %.0f MiB; conda-pack --n-threads 2: %.1f s, "
                   "%.0f MiB" % (rss["pm pack"], rss["cp pack"], seconds["cp pack 2"], rss["cp pack 2"])),
            figure(prefix_label + "round trip bundle size", sizes["pm"] / 1048576.0, "conda-pack's .tar.gz", sizes["cp"] / 1048576.0,
                   "MiB", "<= 1.1x conda-pack's")]
    for key, route in (("pm none", "no conda"), ("pm 25", "conda 25.11.1"), ("pm 4.3", "conda 4.3.16")):
        rows.append(figure(prefix_label + "install + tests, %s" % route, seconds[key], "tar -x + conda-unpack + tests",
                           seconds["cp install"], "s", "fastest",
                           note="peak RSS pm %.0f MiB, conda-pack's side %.0f MiB" % (rss[key], rss["cp install"])))
        rows.append(figure(prefix_label + "whole round trip, %s" % route, seconds["pm pack"] + seconds[key], "conda-pack + unpack",
                           seconds["cp pack"] + seconds["cp install"], "s", ">= 2x conda-pack"))
    return rows
