"""The demo round trip: serve, pack the example project (examples/heatsim) under Python 2.7, migrate, report.

The story our users live: the base machine runs an old conda (real conda 4.3.16 on Python 2.7), the
target a current one (real conda 25.11.1). Both are real conda, built offline by
../shared/real-conda/setup.sh into .real-conda/ (once; later runs reuse them), each with its own HOME
and condarc pointing at a local channel holding the example's packages. Everything else lives in
./demo-work; pm.pyz itself is run exactly as a user runs it.
"""
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import channels  # noqa: E402
import realconda  # noqa: E402
from conftest import find_python  # noqa: E402

BASE_CONDA, TARGET_CONDA = "4.3.16-py2.7", "25.11.1"


def example_config(out):
    with open(os.path.join(HERE, "heatsim-tests.ini")) as handle:
        return handle.read().replace("{out}", out)


def step(text):
    print("\n== %s" % text, flush=True)


def main():
    work = os.path.join(ROOT, "demo-work")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    step("real condas: %s on the base, %s on the target" % (BASE_CONDA, TARGET_CONDA))
    condas = realconda.build_all(find_python, [BASE_CONDA, TARGET_CONDA])
    channel = channels.example_channel(os.path.join(work, "channel"))
    base = realconda.RealCondaSite(condas[BASE_CONDA], os.path.join(work, "base"), [channel])
    target = realconda.RealCondaSite(condas[TARGET_CONDA], os.path.join(work, "target"), [channel],
                                     os.path.join(work, "pm-home"))
    step("base: conda %s creates the example environment 'heatsim-env'" % base.version)
    print("created %s" % base.create("heatsim-env", channels.EXAMPLE_SPECS))

    pyz = os.path.join(ROOT, "pm.pyz")
    python3 = find_python("newest")
    env = target.env()
    started = time.time()
    step("target: start the pm server")
    subprocess.run([python3, pyz, "serve", "start", "--port", "0"], env=env, check=True)
    with open(os.path.join(target.home, "server.pid")) as handle:
        server = json.load(handle)
    try:
        step("base: fetch the probe from the server and pack under the oldest Python a base machine may have")
        python2 = find_python("2.7")
        probe = os.path.join(work, "probe.py")
        with urllib.request.urlopen("%s/migrate?token=%s" % (server["url"], server["token"])) as response, \
                open(probe, "wb") as out:
            out.write(response.read())
        subprocess.run([python2, probe, "-d", os.path.join(HERE, "heatsim"), "-e", "heatsim-env", "--yes"],
                       env=base.env(), check=True)
        step("target: what the server stored")
        subprocess.run([python3, pyz, "serve", "status"], env=env, check=True)
        bundle = subprocess.run([python3, "-c", "import pm; print(pm.Store.default().latest_bundle('heatsim'))"], env=dict(
            env, PYTHONPATH=ROOT), stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout.strip()
        with zipfile.ZipFile(bundle) as archive:
            manifest = json.loads(archive.read("manifest.json").decode())
        print("software  %s (%d files)" % (manifest["name"], manifest["software"]["files"]))
        print("source    %(os)s %(machine)s, %(libc)s, Python %(python)s, conda %(conda)s" % manifest["source"])
        print("env       %s: %d packages" % (manifest["env"]["name"], manifest["env"]["packages"]))
        print("direct    %s" % ", ".join(manifest["minimal"]))
        print("asked for %s" % ", ".join(manifest["requested_specs"]))
    finally:
        subprocess.run([python3, pyz, "serve", "stop"], env=env)

    step("target: migrate with conda %s (new conda env, the software's own tests, install)" % target.version)
    config = os.path.join(work, "heatsim-tests.ini")
    with open(config, "w") as handle:
        handle.write(example_config(os.path.join(work, "installed")))
    code = subprocess.run([python3, pyz, "migrate", "heatsim", config], env=env).returncode
    step("report (also report.html in the attempt's folder)")
    subprocess.run([python3, pyz, "report", "heatsim"], env=env)
    print("round trip %s in %.1f s; installed in %s" % ("passed" if code == 0 else "FAILED", time.time() - started,
                                                       os.path.join(work, "installed", "heatsim")))
    return code




if __name__ == "__main__":
    sys.exit(main())
