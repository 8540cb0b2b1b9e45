"""The build: one pm.pyz, byte-identical twice, syntax within the promised Python versions."""
import os
import shutil
import subprocess

import pytest
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


def run_help(pyz, python, cache, *flags, **verb):
    env = dict(os.environ, XDG_CACHE_HOME=cache)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return subprocess.run([python] + list(flags) + [pyz] + verb.get("verb", []) + ["--help"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, env=env, timeout=60)


def test_pm_pyz_keeps_its_compiled_code_and_survives_a_broken_cache(pyz, tmp_path):
    """zipimport compiles pm.py on every start; pm.pyz keeps the code objects in ~/.cache/pm-UID instead."""
    from conftest import find_python
    mine = "pm-%d" % os.getuid()
    for version in ("2.7", "newest"):
        python = find_python(version)
        verb = ["pack"] if version == "2.7" else []  # Python 2.7's top help is a constant: it compiles nothing
        cache = str(tmp_path / ("cache-" + version))
        assert run_help(pyz, python, cache, "-B", verb=verb).returncode == 0
        assert not os.path.exists(os.path.join(cache, mine)), "-B: no bytecode written"
        assert run_help(pyz, python, cache, verb=verb).returncode == 0
        (tag,) = os.listdir(os.path.join(cache, mine))
        folder = os.path.join(cache, mine, tag)
        kept = sorted(os.listdir(folder))
        assert [name.split("-")[0] for name in kept] == (["pm_probe"] if version == "2.7" else ["pm", "pm_probe"])
        assert oct(os.stat(folder).st_mode & 0o777) == oct(0o700)
        assert all(os.stat(os.path.join(folder, n)).st_mode & 0o777 == 0o600 for n in kept)
        for name in kept:
            with open(os.path.join(folder, name), "wb") as handle:
                handle.write(b"not a code object")
        proc = run_help(pyz, python, cache, verb=verb)
        assert proc.returncode == 0 and "pack" in proc.stdout, proc.stderr


PLANTED = "import os\nopen(os.environ['PLANT_MARK'], 'w').write('ran')\n"


@pytest.mark.parametrize("how", ["a cache writable by others", "a cache file without the source's hash",
                                 "a link planted at the temp name"])
def test_code_planted_in_the_cache_never_runs(how, pyz, tmp_path):
    """Another user sharing XDG_CACHE_HOME (HPC sites set it so) plants code where pm.pyz keeps its own:
    it must never run, and nothing is written through a planted link."""
    import hashlib
    import marshal
    import zipfile
    from conftest import find_python
    python = find_python("newest")
    cache = tmp_path / "cache"
    assert run_help(pyz, python, str(cache)).returncode == 0
    (tag,) = os.listdir(str(cache / ("pm-%d" % os.getuid())))
    folder = cache / ("pm-%d" % os.getuid()) / tag
    (kept,) = [n for n in os.listdir(str(folder)) if n.startswith("pm-")]
    with zipfile.ZipFile(pyz) as archive:
        source = archive.read("pm.py")
    evil = marshal.dumps(compile(PLANTED, "evil", "exec"))
    mark = tmp_path / "mark"
    if how == "a cache writable by others":
        (folder / kept).write_bytes(hashlib.sha256(source).digest() + evil)
        os.chmod(str(folder), 0o777)
    elif how == "a cache file without the source's hash":
        (folder / kept).write_bytes(b"\0" * 32 + evil)
    else:
        os.remove(str(folder / kept))  # pm.pyz writes it anew, through KEPT.PID.part
        (tmp_path / "victim").write_text("precious\n")

    def plant_at_the_childs_temp_name():
        """Runs in the child between fork and exec, so its pid is the one pm.pyz names its temp file by."""
        if how == "a link planted at the temp name":
            link = str(folder / ("%s.%d.part" % (kept, os.getpid())))
            os.symlink(str(tmp_path / "victim"), link)
            with open(str(tmp_path / "planted"), "w") as handle:
                handle.write(link)
    env = dict(os.environ, XDG_CACHE_HOME=str(cache), PLANT_MARK=str(mark))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    proc = subprocess.run([python, pyz, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, env=env, timeout=60, preexec_fn=plant_at_the_childs_temp_name)
    assert proc.returncode == 0 and "pack" in proc.stdout, proc.stderr
    assert not mark.exists(), "planted code ran"
    if how == "a link planted at the temp name":
        link = (tmp_path / "planted").read_text()
        assert (tmp_path / "victim").read_text() == "precious\n", "pm.pyz wrote its code through the link"
        assert not os.path.lexists(link), "pm.pyz met the link at its temp name and removed it"
