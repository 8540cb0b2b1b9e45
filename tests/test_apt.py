"""`pm.pyz migrate` with real apt: a C example needing zlib and make, compiled against what apt installs.

Runs as root (CI is root; .ci/run runs 'apt-get update' once)."""
import os
import shutil
import subprocess
import tempfile

import pytest

import channels
from conftest import ROOT, attempt_dirs, find_python, read_result, run_pm

C_CONFIG = """[csim]
output_dir = {out}
package_managers = apt
tests = build
[test_build]
exec = make check
"""


def need_root_and_apt():
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.fail("this test needs apt-get and root: run it in CI (root) or as root on a Debian machine")


def csim_bundle(pyz, tmp_path, real_site):
    """The C example packed under Python 2.7 from a real conda 25.11.1 env holding conda's zlib and make."""
    channel = channels.packages_channel(str(tmp_path / "cchannel"), channels.C_PACKAGES)
    site = real_site("25.11.1", "conda", [channel], str(tmp_path / "home"))
    site.create("csim-env", ["zlib", "make"])
    bundle = str(tmp_path / "csim.zip")
    proc = run_pm(find_python("2.7"), pyz, ["pack", "-d", os.path.join(ROOT, "examples", "csim"), "-e", "csim-env",
                                            "-o", bundle, "--yes"], site.env())
    assert proc.returncode == 0, proc.stderr
    return site, bundle


def test_apt_finds_zlib1g_dev_installs_it_and_the_c_example_builds_against_it(pyz, tmp_path, real_site):
    need_root_and_apt()
    site, bundle = csim_bundle(pyz, tmp_path, real_site)
    config = tmp_path / "csim.ini"
    config.write_text(C_CONFIG.format(out=str(tmp_path / "installed")))
    env = site.env(DEBIAN_FRONTEND="noninteractive")
    proc = run_pm(find_python("newest"), pyz, ["migrate", "csim", str(config), "--bundle", bundle, "--yes"], env,
                  timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "ok: zlib" in proc.stderr and "needs root" not in proc.stderr
    result = read_result(attempt_dirs(site.home, "csim")[-1])
    packages = dict((r["requirement"], r) for r in result["packages"])
    assert packages["zlib"]["package"].startswith("apt:zlib1g-dev") and packages["zlib"]["status"] == "installed"
    assert packages["make"]["package"].startswith("apt:make") and packages["make"]["status"] == "installed"
    assert (tmp_path / "installed" / "csim" / "csim.c").exists()


def test_without_root_apt_is_named_up_front_and_its_installs_fail_cleanly(pyz, tmp_path, real_site):
    """pm runs as the real user 'nobody' (setpriv), with Debian's own python3: pyenv's live under
    /root, which nobody cannot enter."""
    need_root_and_apt()
    python, setpriv = "/usr/bin/python3", shutil.which("setpriv")
    assert os.path.exists(python) and setpriv, "this test needs /usr/bin/python3 and setpriv (util-linux)"
    site, bundle = csim_bundle(pyz, tmp_path, real_site)
    shared = tempfile.mkdtemp(prefix="pm-nobody-", dir="/tmp")  # outside root-only folders (pytest's, TMPDIR)
    try:
        os.chmod(shared, 0o777)
        for source in (pyz, bundle):
            shutil.copy(source, shared)
        config = os.path.join(shared, "csim.ini")
        with open(config, "w") as handle:
            handle.write(C_CONFIG.format(out=os.path.join(shared, "installed")))
        env = {"PATH": "/usr/bin:/bin", "HOME": shared, "PM_HOME": os.path.join(shared, "home"), "LANG": "C.UTF-8"}
        proc = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", python,
                               os.path.join(shared, "pm.pyz"), "migrate", "csim", config, "--bundle",
                               os.path.join(shared, "csim.zip"), "--yes"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              universal_newlines=True, env=env, timeout=300)
        assert "Traceback" not in proc.stderr, proc.stderr
        assert "note: apt installs system packages, which needs root, and pm runs as uid 65534" in proc.stderr
        assert "installing zlib1g-dev with apt" in proc.stderr and "  failed (exit 100)" in proc.stderr
        assert "failed    2: apt:make=" in proc.stdout and ", apt:zlib1g-dev=" in proc.stdout, proc.stdout
    finally:
        shutil.rmtree(shared, ignore_errors=True)
