"""`pm.pyz migrate` with real apt: a C example needing zlib and make, compiled against what apt installs.

Runs as root (CI is root; .ci/run runs 'apt-get update' once)."""
import json
import os
import shutil

import pytest

import channels
from conftest import ROOT, CondaSite, find_python, run_pm

C_CONFIG = """[csim]
output_dir = {out}
package_managers = apt
tests = build
[test_build]
exec = make check
"""


def test_apt_finds_zlib1g_dev_installs_it_and_the_c_example_builds_against_it(pyz, tmp_path):
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.fail("this test needs apt-get and root: run it in CI (root) or as root on a Debian machine")
    channel = channels.packages_channel(str(tmp_path / "cchannel"), channels.C_PACKAGES)
    site = CondaSite(str(tmp_path), [channel], str(tmp_path / "home"))
    site.create("csim-env", ["zlib", "make"])
    bundle = str(tmp_path / "csim.zip")
    proc = run_pm(find_python("2.7"), pyz, ["pack", "-d", os.path.join(ROOT, "examples", "csim"), "-e", "csim-env",
                                            "-o", bundle, "--yes"], site.env())
    assert proc.returncode == 0, proc.stderr
    config = tmp_path / "csim.ini"
    config.write_text(C_CONFIG.format(out=str(tmp_path / "installed")))
    env = site.env(DEBIAN_FRONTEND="noninteractive")
    proc = run_pm(find_python("newest"), pyz, ["migrate", "csim", str(config), "--bundle", bundle, "--yes"], env,
                  timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "ok: zlib" in proc.stderr
    folder = os.path.join(site.home, "csim")
    attempt = sorted(d for d in os.listdir(folder) if d.startswith("2"))[-1]
    with open(os.path.join(folder, attempt, "result.json")) as handle:
        result = json.load(handle)
    packages = dict((r["requirement"], r) for r in result["packages"])
    assert packages["zlib"]["package"].startswith("apt:zlib1g-dev") and packages["zlib"]["status"] == "installed"
    assert packages["make"]["package"].startswith("apt:make") and packages["make"]["status"] == "installed"
    assert (tmp_path / "installed" / "csim" / "csim.c").exists()
