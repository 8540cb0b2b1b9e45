"""Benchmark: `pm.pyz pack` on the largest real fixture environment, under each promised interpreter.

CryoInTheCloud's hub image (915 linux-64 packages) is built with the conda stand-in from a channel
holding its real names, versions, builds and depends (empty contents). Reported per interpreter:
median wall time of 3 packs, and how much of it the stand-in conda's four calls take (measured
apart), so pm's own share shows. Also the in-process time of the minimal-set computation for every
fixture, next to the number of solver runs platform-migrator 1.1.0 would make for the same
environment (one `conda create --dry-run` per installed package).
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import channels  # noqa: E402
import pm  # noqa: E402
from conftest import CondaSite, find_python  # noqa: E402

ENV = "CryoInTheCloud__hub-image"


def timed(command, env):
    started = time.time()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.time() - started


def main():
    work = tempfile.mkdtemp(prefix="pm-pack-bench-")
    try:
        channel = channels.channel_from_graph(os.path.join(work, "channel"), ENV)
        site = CondaSite(work, [channel], os.path.join(work, "home"))
        prefix = site.create("cryo", channels.pinned_specs(ENV), channels.env_yml_specs(ENV))
        software = os.path.join(work, "hub")
        os.makedirs(software)
        with open(os.path.join(software, "notebook.txt"), "w") as handle:
            handle.write("hello\n")
        env = site.env()
        conda_calls = [["env", "export", "-p", prefix], ["env", "export", "-p", prefix, "--from-history"],
                       ["list", "--json", "-p", prefix], ["info", "--json"]]
        conda = sorted(sum(timed(["conda"] + c, env) for c in conda_calls) for _ in range(3))[1]
        print("pack of %s (915 packages), median of 3; stand-in conda's 4 calls take %.2f s of it" % (ENV, conda))
        for version in ("2.7", "3.6", "newest"):
            python = find_python(version)
            command = [python, os.path.join(ROOT, "pm.pyz"), "pack", "-d", software, "-e", "cryo",
                       "-o", os.path.join(work, "out.zip"), "--yes"]
            runs = sorted(timed(command, env) for _ in range(3))
            print("  %-40s %.2f s total, %.2f s pm's own" % (python, runs[1], runs[1] - conda))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    probe = pm.load_probe()
    print("\nminimal set per fixture (in-process, median of 5)")
    print("  %-34s %9s %9s %8s %10s" % ("environment", "packages", "yml specs", "minimal", "ms"))
    for name in channels.real_env_names():
        records = channels.load_graph(name)
        specs = channels.env_yml_specs(name)
        requested = dict((probe.spec_name(s), s) for s in specs)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            minimal = probe.minimal_set(probe.dependency_graph(records), requested)
            times.append(time.perf_counter() - started)
        print("  %-34s %9d %9d %8d %10.1f" % (name, len(records), len(specs), len(minimal), sorted(times)[2] * 1000))
    print("(platform-migrator 1.1.0 runs one 'conda create --dry-run' per installed package: 915 solver runs for %s)"
          % ENV)


if __name__ == "__main__":
    main()
