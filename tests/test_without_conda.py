"""A target with neither conda nor network: pm links the bundle's carried packages itself. The base
is real conda 25.11.1 building the environment from a local channel (tests/channels.linker_channel:
a text and a compiled-in binary placeholder, noarch: python with an entry point, a .conda package,
a cycle, a post-link script); the target has no conda on PATH and runs under unshare -n (no
network); real conda 25.11.1 then reads the environment pm made."""
import json
import os
import shutil
import signal
import subprocess

import pytest

import channels
import realconda
from conftest import attempt_dirs, find_python, no_conda_env, read_result, rewrite_bundle, run_pm, wait_until

CHECK = """set -e
out=$(hello)
echo "hello says $out"
[ "$out" = "$CONDA_PREFIX/share/hello" ]
tinycli | grep "tinycli ok"
python -c "import tinycli"
cat "$CONDA_PREFIX/share/zdata.txt"
[ ! -e "$CONDA_PREFIX/postlink-ran" ]
"""
CONFIG = "[nativesim]\noutput_dir = {out}\npackage_managers = conda\ntests = check\n[test_check]\nexec = sh check.sh\n"


@pytest.fixture(scope="module")
def linked(tmp_path_factory, real_condas, pyz):
    """The base: its environment from the linker channel, packed --with-packages --as-tar-bz2, then
    --with-packages (packages unpacked from conda's cache), then once zdata's extracted copy is gone
    from the cache (to show its .conda stops pm); the channel is then taken away."""
    work = tmp_path_factory.mktemp("linker-base")
    conda_python = os.path.join(os.path.dirname(real_condas["25.11.1"]), "python")
    channel = channels.linker_channel(str(work / "channel"), find_python("newest"))
    channels.as_conda_format(channel, "noarch", "zdata-1.0-0", conda_python)
    base = realconda.RealCondaSite(real_condas["25.11.1"], str(work / "base"), [channel])
    prefix = base.create("native-env", channels.LINKER_SPECS)
    software = work / "src" / "nativesim"
    software.mkdir(parents=True)
    (software / "check.sh").write_text(CHECK)
    bundles = {}
    for label, extra in (("tar.bz2", ["--as-tar-bz2"]), ("unpacked", []), ("conda", [])):
        if label == "conda":
            shutil.rmtree(os.path.join(base.base, "pkgs", "zdata-1.0-0"))
        bundles[label] = str(work / ("nativesim-%s.zip" % label))
        proc = run_pm(find_python("newest"), pyz, ["pack", "-d", str(software), "-e", "native-env", "-o",
                                                   bundles[label], "--yes", "--with-packages"] + extra,
                      base.env(), timeout=300)
        assert proc.returncode == 0, proc.stderr
        bundles[label + "-stderr"] = proc.stderr
    shutil.rmtree(channel)
    listed = json.loads(base.conda("list", "--json", "-p", prefix).stdout)
    return dict(bundles, base=base, listing=sorted((r["name"], r["version"], r["build_string"]) for r in listed))



def config(tmp_path):
    path = tmp_path / "nativesim.ini"
    path.write_text(CONFIG.format(out=str(tmp_path / "installed")))
    return str(path)


def migrate(pyz, bundle, tmp_path, *extra, env=None):
    command = ["unshare", "-n", find_python("newest"), pyz, "migrate", "nativesim", config(tmp_path), "--bundle",
               bundle] + list(extra)
    return subprocess.run(command, env=env or no_conda_env(tmp_path), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=300)


def envs_left(tmp_path):
    folder = tmp_path / "store" / "nativesim" / "envs"
    return sorted(os.listdir(str(folder))) if folder.is_dir() else []


@pytest.mark.parametrize("form", ["tar.bz2", "unpacked"])
def test_without_conda_pm_links_the_carried_packages_and_real_conda_sees_a_normal_environment(form, pyz, linked,
                                                                                              tmp_path):
    assert "zdata 1.0 0: its .conda is carried as .tar.bz2 (--as-tar-bz2); its .tar.bz2 is rebuilt" in linked["tar.bz2-stderr"]
    proc = migrate(pyz, linked[form], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "no conda here: pm installs the 7 packages the bundle carries" in proc.stderr
    assert "postlink has a post-link script, which pm does not run" in proc.stderr
    assert "  [7/7] " in proc.stderr and proc.stderr.count("  [") == 7, "each package is linked once"
    result = read_result(attempt_dirs(str(tmp_path / "store"), "nativesim")[-1])
    prefix = result["env_prefix"]
    assert result["status"] == "passed" and result["level"] == "carried"
    assert "hello says %s/share/hello" % prefix in proc.stderr, "the binary prints the new prefix"
    assert not os.path.exists(os.path.join(prefix, "conda-meta", "pm-incomplete"))
    listed = json.loads(linked["base"].conda("list", "--json", "-p", prefix).stdout)
    assert sorted((r["name"], r["version"], r["build_string"]) for r in listed) == linked["listing"]
    (command,) = [l[len("to run it: "):] for l in proc.stdout.splitlines() if l.startswith("to run it: ")]
    ran = subprocess.run(["/bin/sh", "-c", command + " && hello && tinycli"], env=no_conda_env(tmp_path),
                         stdout=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert ran.stdout == "%s/share/hello\ntinycli ok\n" % prefix
    base_prefix = linked["base"].prefix("native-env")  # what conda linked: the packages' own member times
    for top in ("share", "lib"):
        for root, dirs, files in os.walk(os.path.join(base_prefix, top)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in files:
                rel = os.path.relpath(os.path.join(root, name), base_prefix)
                assert int(os.lstat(os.path.join(prefix, rel)).st_mtime) == int(os.lstat(os.path.join(root, name)).st_mtime), rel


def test_a_carried_conda_file_stops_pm_before_anything_is_made(pyz, linked, tmp_path):
    proc = migrate(pyz, linked["conda"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "carries 1 .conda: zdata-1.0-0.conda" in line and "--as-tar-bz2" in line
    assert envs_left(tmp_path) == []


def test_a_prefix_too_long_for_a_binary_placeholder_is_refused_and_nothing_is_left(pyz, linked, tmp_path):
    long_prefix = str(tmp_path / ("p" * 240))
    proc = migrate(pyz, linked["tar.bz2"], tmp_path, "--prefix", long_prefix)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "is longer than the 232-character placeholder compiled into bin/hello of hello-1.0-h1_0.tar.bz2" in line
    assert not os.path.exists(long_prefix)


@pytest.mark.parametrize("form", ["tar.bz2", "unpacked"])
def test_a_corrupt_carried_archive_is_named_and_nothing_is_left(form, pyz, linked, tmp_path):
    def spoil(members, manifest):
        if form == "unpacked":  # a deflated member whose bytes changed: its CRC no longer holds
            data = bytearray(members["channel/linux-64/hello-1.0-h1_0.zip"])
            data[data.index(b"bin/hello") + 40] ^= 0xFF
            members["channel/linux-64/hello-1.0-h1_0.zip"] = bytes(data)
        else:
            members["channel/linux-64/hello-1.0-h1_0.tar.bz2"] = b"BZh9 not really bzip2"
    spoilt = rewrite_bundle(linked[form], str(tmp_path / "spoilt.zip"), spoil)
    proc = migrate(pyz, spoilt, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "the carried package hello-1.0-h1_0.tar.bz2 cannot be read" in proc.stderr.strip().splitlines()[-1]
    assert envs_left(tmp_path) == []


def test_ctrl_c_mid_install_leaves_no_prefix_and_the_next_attempt_runs(pyz, linked, tmp_path):
    env = dict(no_conda_env(tmp_path), PM_TEST_POSTLINK_SLEEP="60")
    command = [find_python("newest"), pyz, "migrate", "nativesim", config(tmp_path), "--bundle", linked["tar.bz2"],
               "--allow-scripts"]
    proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)
    ran = wait_until(lambda: list((tmp_path / "store" / "nativesim" / "envs").glob("*/postlink-ran")), timeout=60)
    assert ran, "the post-link script never ran"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert envs_left(tmp_path) == []
    assert read_result(attempt_dirs(str(tmp_path / "store"), "nativesim")[-1])["status"] == "interrupted"
    again = migrate(pyz, linked["tar.bz2"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(envs_left(tmp_path)) == 1


def test_packages_carried_for_another_platform_are_named_before_anything_is_written(pyz, linked, tmp_path):
    other = rewrite_bundle(linked["tar.bz2"], str(tmp_path / "osx.zip"),
                           lambda members, manifest: manifest["packages"].update(platform="osx-arm64"))
    proc = migrate(pyz, other, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "the bundle carries its packages for osx-arm64, and this machine is linux-64" in proc.stderr
    assert "there is no conda here, and the bundle's packages are for osx-arm64" in proc.stderr
    assert envs_left(tmp_path) == []


def crafted_member(form, member, kind):
    """A package 'hello' holding one crafted member, as a .tar.bz2 or as an unpacked package's zip."""
    import io
    import tarfile
    import zipfile
    index = json.dumps({"name": "hello", "version": "1.0", "build": "h1_0"}).encode()
    buffer = io.BytesIO()
    if form == "unpacked":
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as package:
            package.writestr("info/index.json", index)
            info = zipfile.ZipInfo(member)
            info.external_attr = ((0o120777 if kind == "link" else 0o100644) << 16)
            package.writestr(info, b"../../../../etc" if kind == "link" else b"x\n")
        return buffer.getvalue()
    with tarfile.open(fileobj=buffer, mode="w:bz2") as tar:
        info = tarfile.TarInfo("info/index.json")
        info.size = len(index)
        tar.addfile(info, io.BytesIO(index))
        info = tarfile.TarInfo(member)
        if kind == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "../../../../etc"
            tar.addfile(info)
        else:
            info.size = 2
            tar.addfile(info, io.BytesIO(b"x\n"))
    return buffer.getvalue()


@pytest.mark.parametrize("form", ["tar.bz2", "unpacked"])
@pytest.mark.parametrize("member, kind", [("../../escaped.txt", "file"), ("bin/evil", "link")], ids=["dotdot", "link"])
def test_a_carried_archive_that_reaches_outside_the_prefix_is_refused_and_nothing_is_left(member, kind, form, pyz,
                                                                                         linked, tmp_path):
    name = "hello-1.0-h1_0.zip" if form == "unpacked" else "hello-1.0-h1_0.tar.bz2"

    def craft(members, manifest):
        assert "channel/linux-64/" + name in members
        members["channel/linux-64/" + name] = crafted_member(form, member, kind)
    crafted = rewrite_bundle(linked[form], str(tmp_path / "crafted.zip"), craft)
    proc = migrate(pyz, crafted, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "hello-1.0-h1_0.tar.bz2" in proc.stderr.strip().splitlines()[-1] and "Traceback" not in proc.stderr
    assert envs_left(tmp_path) == [] and not (tmp_path / "store" / "nativesim" / "escaped.txt").exists()
    assert not list(tmp_path.glob("**/escaped.txt"))


def test_a_later_migration_into_another_output_dir_leaves_the_earlier_install_its_environment(pyz, linked, tmp_path):
    """Two installs without conda into two output_dirs: after the second passes, the first still runs
    with the command its report printed (its environment is kept while its install is its own); once
    its environment is removed by hand, its report says so, and 'repair' brings it back."""
    first = migrate(pyz, linked["unpacked"], tmp_path)
    assert first.returncode == 0, first.stderr
    (command,) = [l[len("to run it: "):] for l in first.stdout.splitlines() if l.startswith("to run it: ")]
    first_attempt = attempt_dirs(str(tmp_path / "store"), "nativesim")[-1]
    other = tmp_path / "other"
    other.mkdir()
    (other / "nativesim.ini").write_text(CONFIG.format(out=str(other / "installed")))
    second = subprocess.run(["unshare", "-n", find_python("newest"), pyz, "migrate", "nativesim",
                             str(other / "nativesim.ini"), "--bundle", linked["unpacked"]], env=no_conda_env(tmp_path),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert len(envs_left(tmp_path)) == 2, "the first install's environment is kept"
    ran = subprocess.run(["/bin/sh", "-c", command + " && hello && tinycli"], env=no_conda_env(tmp_path),
                         stdout=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert ran.returncode == 0 and ran.stdout.endswith("tinycli ok\n"), ran.stdout
    shutil.rmtree(read_result(first_attempt)["env_prefix"])
    report = run_pm(find_python("newest"), pyz, ["report", "nativesim", os.path.basename(first_attempt)],
                    no_conda_env(tmp_path))
    assert "the environment this install runs with" in report.stdout and "is gone" in report.stdout, report.stdout
    assert "pm.pyz repair nativesim %s" % os.path.basename(first_attempt) in report.stdout
    repaired = subprocess.run(["unshare", "-n", find_python("newest"), pyz, "repair", "nativesim"],
                              env=no_conda_env(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
    assert repaired.returncode == 0, repaired.stderr
    ran = subprocess.run(["/bin/sh", "-c", command + " && hello && tinycli"], env=no_conda_env(tmp_path),
                         stdout=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert ran.returncode == 0 and ran.stdout.endswith("tinycli ok\n"), ran.stdout
