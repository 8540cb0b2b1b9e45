"""The demo round trip: serve, pack the example project (examples/heatsim) under Python 2.7, migrate, report.

There is no conda on this machine, so the demo uses pm's test stand-in for conda (tests/condastandin.py,
py-rattler underneath) with a local channel holding the example's packages. Everything lives in
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
from conftest import CondaSite, find_python  # noqa: E402


def example_config(out):
    with open(os.path.join(HERE, "heatsim-tests.ini")) as handle:
        return handle.read().replace("{out}", out)


def step(text):
    print("\n== %s" % text, flush=True)


def main():
    work = os.path.join(ROOT, "demo-work")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    step("a conda (stand-in) with the example environment 'heatsim-env'")
    channel = channels.example_channel(os.path.join(work, "channel"))
    site = CondaSite(work, [channel], os.path.join(work, "pm-home"))
    site.create("heatsim-env", channels.EXAMPLE_SPECS)
    print("created %s" % site.prefix("heatsim-env"))

    pyz = os.path.join(ROOT, "pm.pyz")
    python3 = find_python("newest")
    env = site.env()
    started = time.time()
    step("target: start the pm server")
    subprocess.run([python3, pyz, "serve", "start", "--port", "0"], env=env, check=True)
    with open(os.path.join(site.home, "server.pid")) as handle:
        server = json.load(handle)
    try:
        step("base: fetch the probe from the server and pack under the oldest Python a base machine may have")
        python2 = find_python("2.7")
        probe = os.path.join(work, "probe.py")
        with urllib.request.urlopen("%s/migrate?token=%s" % (server["url"], server["token"])) as response, \
                open(probe, "wb") as out:
            out.write(response.read())
        subprocess.run([python2, probe, "-d", os.path.join(HERE, "heatsim"), "-e", "heatsim-env", "--yes"],
                       env=env, check=True)
        step("target: what the server stored")
        subprocess.run([python3, pyz, "serve", "status"], env=env, check=True)
        bundle = subprocess.run([python3, "-c", "import pm; print(pm.latest_bundle('heatsim'))"], env=dict(
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

    step("target: migrate (new conda env, the software's own tests, install)")
    config = os.path.join(work, "heatsim-tests.ini")
    with open(config, "w") as handle:
        handle.write(example_config(os.path.join(work, "installed")))
    code = subprocess.run([python3, pyz, "migrate", "heatsim", config], env=env).returncode
    step("report")
    subprocess.run([python3, pyz, "list"], env=env)
    print("round trip %s in %.1f s; installed in %s" % ("passed" if code == 0 else "FAILED", time.time() - started,
                                                       os.path.join(work, "installed", "heatsim")))
    return code




if __name__ == "__main__":
    sys.exit(main())
