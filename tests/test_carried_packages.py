"""pack --with-packages carries every package of the environment, and migrate creates the
environment from the bundle alone: real conda 4.3.16 and 25.11.1 on both sides, the base's channel
taken away after pack, the target with no channel configured and (unshare -n, as root) no network."""
import json
import os
import shutil
import subprocess
import zipfile

import pytest

import channels
import realconda
from realconda import conda_meta
from conftest import ROOT, attempt_dirs, find_python, read_result, rewrite_bundle, run_pm

with open(os.path.join(ROOT, "examples", "heatsim-tests.ini")) as _handle:
    CONFIG = _handle.read()


def write_config(tmp_path):
    path = tmp_path / "tests.ini"
    path.write_text(CONFIG.format(out=str(tmp_path / "installed")))
    return str(path)


def base_site(real_condas, key, tmp_path, channel=None):
    """A base conda with the example environment, from a channel of its own."""
    channel = channel or channels.example_channel(str(tmp_path / "base-channel"))
    site = realconda.RealCondaSite(real_condas[key], str(tmp_path / "base"), [channel])
    site.create("heatsim-env", channels.EXAMPLE_SPECS)
    return site, channel


def pkgs_dir(site):
    return os.path.join(site.base, "pkgs")


def pack(pyz, site, software, out, *extra, python="2.7"):
    return run_pm(find_python(python), pyz, ["pack", "-d", software, "-e", "heatsim-env", "-o", out, "--yes",
                                             "--with-packages"] + list(extra), site.env(), timeout=300)


def migrate_offline(pyz, target, bundle, tmp_path):
    """migrate in a network namespace with no network at all: any leak fails."""
    command = ["unshare", "-n", find_python("newest"), pyz, "migrate", "heatsim", write_config(tmp_path),
               "--bundle", bundle]
    return subprocess.run(command, env=target.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=600)


@pytest.mark.parametrize("base_key, python, target_key", [("25.11.1", "newest", "4.3.16-py3.6"),
                                                          ("4.3.16-py2.7", "2.7", "25.11.1")])
def test_a_target_with_no_channel_and_no_network_gets_the_bases_environment(base_key, python, target_key, pyz,
                                                                           real_condas, example_software, tmp_path):
    base, channel = base_site(real_condas, base_key, tmp_path)
    os.remove(os.path.join(pkgs_dir(base), "libgrid-1.2-h0_0.tar.bz2"))  # as after 'conda clean --tarballs'
    shutil.rmtree(os.path.join(pkgs_dir(base), "heatplot-0.3-h3_0"))  # only its archive is left
    bundle = str(tmp_path / "heatsim.zip")
    packed = pack(pyz, base, example_software, bundle, python=python)
    assert packed.returncode == 0, packed.stderr
    assert "rebuilt" not in packed.stderr
    with zipfile.ZipFile(bundle) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("manifest.json").decode())
        with archive.open("channel/noarch/libgrid-1.2-h0_0.zip") as inner, zipfile.ZipFile(inner) as package:
            assert package.namelist()[0].startswith("info/") and "info/repodata_record.json" not in package.namelist()
    carried = dict((c["name"], c) for c in manifest["packages"]["carried"])
    assert set(carried) == set(conda_meta(base.prefix("heatsim-env")))
    assert carried["libgrid"]["form"] == "unpacked" and carried["heatplot"]["form"] == "archive"
    assert {"channel/noarch/repodata.json", "channel/noarch/repodata.json.bz2", "channel/linux-64/repodata.json",
            "channel/noarch/heatplot-0.3-h3_0.tar.bz2", "channel/noarch/libgrid-1.2-h0_0.zip"} <= names
    shutil.rmtree(channel)  # the base's mirror is not on the target
    target = realconda.RealCondaSite(real_condas[target_key], str(tmp_path / "target"), [])
    proc = migrate_offline(pyz, target, bundle, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "using the %d packages the bundle carries, offline" % len(carried) in proc.stderr
    result = read_result(attempt_dirs(target.home, "heatsim")[-1])
    assert result["status"] == "passed" and result["level"] == "exact"
    assert conda_meta(result["env_prefix"]) == conda_meta(base.prefix("heatsim-env"))
    assert not os.path.exists(os.path.join(attempt_dirs(target.home, "heatsim")[-1], "channel"))


def test_dry_run_lists_what_would_be_carried_and_writes_nothing(pyz, real_condas, example_software, tmp_path):
    base, _ = base_site(real_condas, "25.11.1", tmp_path)
    out = str(tmp_path / "never.zip")
    proc = pack(pyz, base, example_software, out, "--dry-run", python="newest")
    assert proc.returncode == 0, proc.stderr
    assert "unpacked   noarch/heatplot-0.3-h3_0.zip" in proc.stdout
    assert "5 packages" in proc.stdout and "0 missing" in proc.stdout
    assert not os.path.exists(out) and [f for f in os.listdir(str(tmp_path)) if f.startswith(".pm-")] == []
    alone = run_pm(find_python("newest"), pyz, ["pack", "-d", example_software, "-e", "heatsim-env", "-o", out,
                                                "--yes", "--level", "9"], base.env(), timeout=300)
    assert alone.returncode == 2 and "--level go with --with-packages" in alone.stderr.strip().splitlines()[-1]
    assert not os.path.exists(out)


def test_a_missing_or_corrupt_archive_is_named_and_nothing_is_written(pyz, real_condas, example_software, tmp_path):
    base, _ = base_site(real_condas, "25.11.1", tmp_path)
    cache = pkgs_dir(base)
    with open(os.path.join(cache, "heatplot-0.3-h3_0.tar.bz2"), "r+b") as handle:
        handle.seek(20)
        handle.write(b"corrupt!")
    shutil.rmtree(os.path.join(cache, "heatplot-0.3-h3_0"))
    os.remove(os.path.join(cache, "libgrid-1.2-h0_0.tar.bz2"))
    shutil.rmtree(os.path.join(cache, "libgrid-1.2-h0_0"))
    out = str(tmp_path / "b.zip")
    proc = pack(pyz, base, example_software, out, python="newest")
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "2 packages of the environment cannot be carried" in line and "does not match its record's md5" in line
    assert "libgrid 1.2 h0_0 (not in conda's package caches" in line and "--allow-missing" in line
    assert not os.path.exists(out)
    allowed = pack(pyz, base, example_software, out, "--allow-missing", python="newest")
    assert allowed.returncode == 0, allowed.stderr
    with zipfile.ZipFile(out) as archive:
        manifest = json.loads(archive.read("manifest.json").decode())
    assert sorted(m["name"] for m in manifest["packages"]["missing"]) == ["heatplot", "libgrid"]


def test_a_bundle_packed_for_another_platform_says_so_and_takes_this_condas_channels(pyz, real_condas, real_site,
                                                                                      example_software, tmp_path):
    base, _ = base_site(real_condas, "25.11.1", tmp_path)
    bundle = str(tmp_path / "b.zip")
    assert pack(pyz, base, example_software, bundle, python="newest").returncode == 0
    other = rewrite_bundle(bundle, str(tmp_path / "osx.zip"),
                           lambda members, manifest: manifest["packages"].update(platform="osx-arm64"))
    target = real_site("25.11.1", "target")  # with the example channel, as a mirror would be
    proc = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path), "--bundle", other],
                  target.env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "the bundle carries its packages for osx-arm64, and this conda is linux-64" in proc.stderr


def test_conda_43_gets_a_conda_format_base_unpacked_and_is_told_when_only_conda_files_are_left(
        pyz, real_condas, example_software, tmp_path):
    python = os.path.join(os.path.dirname(real_condas["25.11.1"]), "python")
    channel = channels.conda_format_channel(str(tmp_path / "conda-channel"), python)
    base, _ = base_site(real_condas, "25.11.1", tmp_path, channel)
    assert any(f.endswith(".conda") for f in os.listdir(pkgs_dir(base)))
    target = realconda.RealCondaSite(real_condas["4.3.16-py3.6"], str(tmp_path / "target"), [])
    for label, extra in (("unpacked", []), ("tar-bz2", ["--as-tar-bz2"])):
        bundle = str(tmp_path / (label + ".zip"))
        packed = pack(pyz, base, example_software, bundle, *extra, python="newest")
        assert packed.returncode == 0, packed.stderr
        proc = migrate_offline(pyz, target, bundle, tmp_path)
        assert proc.returncode == 0, (label, proc.stderr)
        result = read_result(attempt_dirs(target.home, "heatsim")[-1])
        assert conda_meta(result["env_prefix"]) == conda_meta(base.prefix("heatsim-env"))
        shutil.rmtree(result["env_prefix"])
        shutil.rmtree(str(tmp_path / "installed"))
    for entry in os.listdir(pkgs_dir(base)):  # only the .conda archives are left in the cache
        if os.path.isdir(os.path.join(pkgs_dir(base), entry, "info")):
            shutil.rmtree(os.path.join(pkgs_dir(base), entry))
    bundle = str(tmp_path / "conda-files.zip")
    assert pack(pyz, base, example_software, bundle, python="newest").returncode == 0
    envs = os.path.join(target.home, "heatsim", "envs")
    before = (os.listdir(target.envs), os.listdir(envs))  # the conda environment heatsim: the last install's copy
    proc = migrate_offline(pyz, target, bundle, tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "conda 4.3.16 reads no .conda packages, and the bundle carries 5: " in line and "--as-tar-bz2" in line
    assert (os.listdir(target.envs), os.listdir(envs)) == before, "nothing is created"


@pytest.mark.parametrize("member, kind", [("../../escaped.txt", "file"), ("lib/evil", "link")], ids=["dotdot", "link"])
def test_a_crafted_unpacked_package_is_refused_on_a_conda_target_and_nothing_is_left(member, kind, pyz, real_condas,
                                                                                    example_software, tmp_path):
    """The conda route extracts unpacked packages into the channel's own cache: a member leading out of
    its package is refused there, before conda runs, and the channel and its cache go."""
    import io
    base, _ = base_site(real_condas, "25.11.1", tmp_path)
    bundle = str(tmp_path / "heatsim.zip")
    assert pack(pyz, base, example_software, bundle, python="newest").returncode == 0

    def craft(members, manifest):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as package:
            package.writestr("info/index.json", json.dumps({"name": "libgrid", "version": "1.2", "build": "h0_0"}))
            info = zipfile.ZipInfo(member)
            info.external_attr = (0o120777 if kind == "link" else 0o100644) << 16
            package.writestr(info, b"../../../../etc" if kind == "link" else b"x\n")
        assert "channel/noarch/libgrid-1.2-h0_0.zip" in members
        members["channel/noarch/libgrid-1.2-h0_0.zip"] = buffer.getvalue()
    crafted = rewrite_bundle(bundle, str(tmp_path / "crafted.zip"), craft)
    target = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "target"), [])
    proc = migrate_offline(pyz, target, crafted, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "libgrid-1.2-h0_0.tar.bz2" in proc.stderr.strip().splitlines()[-1] and "Traceback" not in proc.stderr
    assert not [e for e in os.listdir(target.envs) if not e.startswith(".")], "no environment is made"
    assert not os.path.exists(os.path.join(attempt_dirs(target.home, "heatsim")[-1], "channel"))
    assert not list(tmp_path.glob("**/escaped.txt"))
