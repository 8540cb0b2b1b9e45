"""The build: one pm.pyz, byte-identical twice, syntax within the promised Python versions."""
import os
import shutil
import subprocess
import sys
import zipfile

import pm
from conftest import ROOT


def test_two_builds_are_byte_identical(tmp_path):
    first, second = str(tmp_path / "a.pyz"), str(tmp_path / "b.pyz")
    for target in (first, second):
        subprocess.run([sys.executable, os.path.join(ROOT, "build_zipapp.py"), "-o", target], check=True,
                       stdout=subprocess.PIPE)
    with open(first, "rb") as a, open(second, "rb") as b:
        assert a.read() == b.read()
    with open(first, "rb") as handle:
        assert handle.readline() == b"#!/usr/bin/env python3\n"
    with zipfile.ZipFile(first) as archive:
        assert archive.namelist() == ["__main__.py", "pm.py", "pm_probe.py"]
        assert archive.read("pm_probe.py").decode() == pm.PROBE_SOURCE
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in archive.infolist())


def vermin(target, path):
    exe = shutil.which("vermin") or os.path.join(os.path.dirname(sys.executable), "vermin")
    return subprocess.run([exe, "-t=%s" % target, "--no-tips", "--violations", "--eval-annotations", path],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)


def test_pm_needs_nothing_newer_than_python36():
    proc = vermin("3.6-", os.path.join(ROOT, "pm.py"))
    assert proc.returncode == 0, proc.stdout


def test_probe_and_entry_point_run_on_python27(tmp_path):
    probe = tmp_path / "pm_probe.py"
    probe.write_text(pm.PROBE_SOURCE)
    proc = vermin("2.7-", str(probe))
    assert proc.returncode == 0, proc.stdout
    sys.path.insert(0, ROOT)
    import build_zipapp
    entry = tmp_path / "main.py"
    entry.write_text(build_zipapp.MAIN)
    proc = vermin("2.7-", str(entry))
    assert proc.returncode == 0, proc.stdout
