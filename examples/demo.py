"""The demo: pack the example project (examples/heatsim) from a conda environment into a bundle.

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
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import channels  # noqa: E402
from conftest import CondaSite, find_python  # noqa: E402


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

    step("pack under the oldest Python a base machine may have")
    python2 = find_python("2.7")
    bundle = os.path.join(work, "heatsim.bundle.zip")
    started = time.time()
    subprocess.run([python2, os.path.join(ROOT, "pm.pyz"), "pack", "-d", os.path.join(HERE, "heatsim"),
                    "-e", "heatsim-env", "-o", bundle, "--yes"], env=site.env(), check=True)
    print("packed in %.2f s with %s" % (time.time() - started, python2))

    step("what the bundle holds")
    with zipfile.ZipFile(bundle) as archive:
        manifest = json.loads(archive.read("manifest.json").decode())
        print("software  %s (%d files)" % (manifest["name"], manifest["software"]["files"]))
        print("source    %(os)s %(machine)s, %(libc)s, Python %(python)s, conda %(conda)s" % manifest["source"])
        print("env       %s: %d packages" % (manifest["env"]["name"], manifest["env"]["packages"]))
        print("direct    %s" % ", ".join(manifest["minimal"]))
        print("asked for %s" % ", ".join(manifest["requested_specs"]))
        for name in sorted(archive.namelist()):
            print("  %8d  %s" % (archive.getinfo(name).file_size, name))
    print("\nbundle: %s" % bundle)


if __name__ == "__main__":
    main()
