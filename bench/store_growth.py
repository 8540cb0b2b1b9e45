"""The store's size after the same session of normal use (issue 29's closing figure).

    python3 bench/store_growth.py PM_PYZ [--prune] [--work DIR]

Replays one fixed session against the given pm.pyz and prints, as du counts them, the store
(PM_HOME), the target conda's envs dir (where pm before 29 put its conda environments), and what
the store, that envs dir and conda's package cache take on disk together (a file conda hard-linked
counted once); --prune runs 'pm.pyz prune' at the end and prints them again.

The software: a real CPython 3.11 (a copy, as a conda package with prefix placeholders) and six,
pyparsing and cycler from real wheels, in an environment real conda 25.11.1 makes from a local
channel (built once, beside --work); one test imports them, and a failing test config.
The session, on each route (conda 25.11.1 from the channel; pm's linker with --no-conda from a
bundle packed --with-packages), every migrate with --force after the first (as a user does after
the first refusal):
  pass into A, fail into B, pass into B, pass into A, Ctrl-C (SIGINT to pm's process group while the
  environment is being made), pass into A.
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, HERE)

CHECK = "import six, pyparsing, cycler, json, sqlite3\nprint('ok', six.__version__, pyparsing.__version__)\n"
CONFIG = "[growsim]\noutput_dir = %s\npackage_managers = conda\ntests = imports\n[test_imports]\nexec = %s\n"
MAKING = ("creating the conda environment", "creating conda environment", "pm installs the")


def grow_channel(work):
    """A real CPython 3.11 and three real wheels as conda packages (built once, beside the work folder)."""
    import channels
    import roundtrip
    channel = os.path.join(os.path.dirname(os.path.abspath(work)), "growenv-channel")  # kept for the next run
    found = roundtrip.wheels(True)
    specs = ["python 3.11.7"] + ["%s %s" % (name.lower(), version) for name, version, _ in found]
    if not os.path.isfile(os.path.join(channel, "linux-64", "repodata.json")):
        shutil.rmtree(channel, ignore_errors=True)
        os.makedirs(os.path.join(channel, "linux-64"))
        roundtrip.python_package(channel, work, False)
        for name, version, path in found:
            roundtrip.wheel_package(channel, work, name, version, path, [])
        channels.index_channel(channel)
    return channel, specs


def du(*paths):
    """Bytes as 'du -sbc' counts them (a file hard-linked in several of the paths once)."""
    paths = [p for p in paths if os.path.exists(p)]
    if not paths:
        return 0
    return int(subprocess.run(["du", "-sbc"] + paths, stdout=subprocess.PIPE, universal_newlines=True,
                              check=True).stdout.split()[-2])


def migrate(pyz, env, config, bundle, extra, interrupt=False):
    """One migrate; with interrupt, SIGINT to its process group once it says it makes the environment."""
    command = [sys.executable, pyz, "migrate", "growsim", config, "--bundle", bundle] + extra
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            universal_newlines=True, start_new_session=True)
    sent = False
    for line in proc.stderr:
        if interrupt and not sent and any(word in line for word in MAKING):
            os.killpg(proc.pid, signal.SIGINT)
            sent = True
    proc.wait()
    return proc.returncode


def session(pyz, site, work, bundle, extra, label):
    """The fixed session on one route; the exit codes."""
    configs = {}
    for out in ("A", "B"):
        for good in (True, False):
            path = os.path.join(work, "%s-%s-%s.ini" % (label, out, "pass" if good else "fail"))
            with open(path, "w") as handle:
                handle.write(CONFIG % (os.path.join(work, "installed-" + label, out),
                                       "python check.py" if good else "python -c 'raise SystemExit(1)'"))
            configs[out, good] = path
    steps = [(("A", True), False), (("B", False), False), (("B", True), False), (("A", True), False),
             (("A", True), True), (("A", True), False)]
    codes = []
    for number, (key, interrupt) in enumerate(steps):
        codes.append(migrate(pyz, site.env(), configs[key], bundle, extra + (["--force"] if number else []),
                             interrupt))
    return codes


def main():
    import realconda
    from conftest import find_python
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pyz")
    parser.add_argument("--prune", action="store_true")
    parser.add_argument("--work", default=os.path.join(ROOT, ".bench-cache", "store-growth"))
    args = parser.parse_args()
    args.work = os.path.abspath(args.work)
    pyz = os.path.abspath(args.pyz)
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    condas = realconda.build_all(find_python, ["25.11.1"])
    channel, specs = grow_channel(args.work)
    base = realconda.RealCondaSite(condas["25.11.1"], os.path.join(args.work, "base"), [channel])
    base.create("growsim", specs)
    software = os.path.join(args.work, "src", "growsim")
    os.makedirs(software)
    with open(os.path.join(software, "check.py"), "w") as handle:
        handle.write(CHECK)
    bundles = {}
    for label, flags in (("conda", []), ("carried", ["--with-packages"])):
        bundles[label] = os.path.join(args.work, "growsim-%s.zip" % label)
        subprocess.run([sys.executable, pyz, "pack", "-d", software, "-e", "growsim", "-o", bundles[label], "--yes"]
                       + flags, env=base.env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = realconda.RealCondaSite(condas["25.11.1"], os.path.join(args.work, "target"), [channel])
    codes = {"conda": session(pyz, target, args.work, bundles["conda"], [], "conda"),
             "no-conda": session(pyz, target, args.work, bundles["carried"], ["--no-conda"], "carried")}
    print("session exit codes: %s" % codes)

    def sizes(when):
        store, envs = du(target.home), du(target.envs)
        disk = du(target.home, target.envs, os.path.join(target.base, "pkgs"))
        print("%-12s store %7.1f MiB   conda envs dir %7.1f MiB   store, envs and conda's package cache on disk "
              "(each file once) %7.1f MiB" % (when, store / 1048576.0, envs / 1048576.0, disk / 1048576.0))
    sizes("after:")
    if args.prune:
        subprocess.run([sys.executable, pyz, "prune"], env=target.env(), check=True, stdout=subprocess.DEVNULL)
        sizes("after prune:")


if __name__ == "__main__":
    main()
