"""For clusters (issue 32): pm's ELF reader against pyelftools on every shared library of this
machine and on hostile input; the preflight that refuses a bundle whose carried library needs a newer
glibc than this machine has (the real loader refuses it too) before anything is written; the SBOM of
an attempt, validated against CycloneDX 1.5's JSON schema."""
import glob
import io
import os
import random
import struct
import subprocess

import pytest

import pm

PROBE = pm.PROBE


def shared_libraries():
    found = []
    for root, dirs, files in os.walk("/usr/lib"):
        for name in files:
            path = os.path.join(root, name)
            if ".so" in name and os.path.isfile(path) and not os.path.islink(path):
                found.append(path)
    return sorted(found)


def pyelftools_needs(path):
    """{library: sorted version names} and the defined names, as pyelftools reads them; None if not ELF."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection
    with open(path, "rb") as handle:
        if handle.read(4) != b"\x7fELF":
            return None
        handle.seek(0)
        try:
            elf = ELFFile(handle)
            needs, defines = {}, []
            for section in elf.iter_sections():
                if isinstance(section, GNUVerNeedSection):
                    for need, auxes in section.iter_versions():
                        needs.setdefault(need.name, []).extend(aux.name for aux in auxes)
                elif isinstance(section, GNUVerDefSection):
                    defines.extend(next(iter(auxes)).name for define, auxes in section.iter_versions()
                                   if define["vd_cnt"])
        except ELFError:
            return None
    return dict((lib, sorted(names)) for lib, names in needs.items()), sorted(defines)


def test_elf_reader_finds_the_version_needs_pyelftools_finds_in_every_shared_library_of_usr_lib():
    libraries = shared_libraries()
    assert len(libraries) > 50
    compared = with_glibc = 0
    for path in libraries:
        theirs = pyelftools_needs(path)
        ours = PROBE.elf_file(path)
        if theirs is None:
            assert ours is None or not ours["needs"], path
            continue
        assert ours is not None, path
        assert dict((lib, sorted(names)) for lib, names in ours["needs"].items()) == theirs[0], path
        assert sorted(ours["defines"]) == theirs[1], path
        compared += 1
        with_glibc += bool(PROBE.highest_version([n for ns in theirs[0].values() for n in ns], "GLIBC"))
    assert compared > 50 and with_glibc > 50


def test_elf_reader_names_the_highest_glibc_and_glibcxx_a_file_needs_and_what_libstdcxx_defines():
    libstdcxx = os.path.realpath(glob.glob("/usr/lib/*/libstdc++.so.6")[0])
    needs = PROBE.BinaryNeeds("conda", "libstdcxx").add_folder(None, [("lib/libstdc++.so.6", libstdcxx)]).to_json()
    assert needs["glibc_file"] == "lib/libstdc++.so.6" and PROBE.version_numbers(needs["glibc"]) >= (2, 17)
    assert PROBE.version_numbers(needs["glibcxx_defined"]) >= (3, 4, 20)
    assert PROBE.highest_version(["GLIBC_2.2.5", "GLIBC_2.34", "GLIBC_PRIVATE", "GLIBCXX_3.4.9", "GLIBC_2.4"],
                                 "GLIBC") == "2.34"
    assert PROBE.highest_version(["GLIBCXX_3.4.9", "GLIBCXX_3.4.29", "CXXABI_1.3.13"], "GLIBCXX") == "3.4.29"


def test_elf_reader_reads_the_x86_64_isa_level_of_the_gnu_property_note(tmp_path):
    source = tmp_path / "v3.c"
    source.write_text("int twice(int x) { return 2 * x; }\n")
    out = str(tmp_path / "libv3.so")
    built = subprocess.run(["cc", "-shared", "-fPIC", "-march=x86-64-v3", "-Wa,-mx86-used-note=yes",
                            "-Wl,-z,x86-64-v3", "-o", out, str(source)], stderr=subprocess.PIPE)
    if built.returncode:
        pytest.skip("this cc cannot mark an ISA level: %s" % built.stderr[-200:])
    assert PROBE.elf_file(out)["isa"] == 3


def test_a_truncated_or_scrambled_elf_file_is_not_elf_and_raises_nothing():
    libstdcxx = os.path.realpath(glob.glob("/usr/lib/*/libstdc++.so.6")[0])
    with open(libstdcxx, "rb") as handle:
        data = handle.read()
    assert PROBE.elf_read(io.BytesIO(data), len(data))["needs"]
    shoff = struct.unpack("<Q", data[40:48])[0]
    for cut in (0, 3, 16, 63, 64, 200, len(data) // 2, shoff + 100, len(data) - 1):
        assert PROBE.elf_read(io.BytesIO(data[:cut]), cut) is None or cut > shoff
    rng = random.Random(32)
    for _ in range(300):  # scrambled headers, section tables and version sections: an answer or None, never more
        broken = bytearray(data[:1 << 20] if shoff > 1 << 20 else data)
        for _ in range(rng.randint(1, 40)):
            where = rng.choice([rng.randrange(64), shoff + rng.randrange(max(1, len(broken) - shoff)),
                                rng.randrange(len(broken))])
            if where < len(broken):
                broken[where] = rng.randrange(256)
        found = PROBE.elf_read(io.BytesIO(bytes(broken)), len(broken))
        assert found is None or sum(len(n) for n in found["needs"].values()) <= PROBE.ELF_MAX_ENTRIES
    lying = bytearray(data[:64])  # a header whose section table lies past the end of the file
    lying[40:48] = struct.pack("<Q", 1 << 40)
    assert PROBE.elf_read(io.BytesIO(bytes(lying)), len(lying)) is None
    assert PROBE.elf_read(io.BytesIO(b"#!/bin/sh\n" * 10), 100) is None


# -- The preflight and the SBOM, end to end ---------------------------------------------------------

import hashlib  # noqa: E402
import json  # noqa: E402

import channels  # noqa: E402
import realconda  # noqa: E402
from conftest import attempt_dirs, find_python, no_conda_env, read_result, rewrite_bundle, run_pm  # noqa: E402

LIB_C = b'#include <stdio.h>\nint vneed(void) { puts("vneed"); return 7; }\n'
CHECK = 'python3 -c "import ctypes, os; print(ctypes.CDLL(os.environ[\'CONDA_PREFIX\'] + \'/lib/libvneed.so\').vneed())"\n'
CONFIG = "[vneedsim]\noutput_dir = {out}\npackage_managers = conda\ntests = load\n[test_load]\nexec = sh check.sh\n"


def elf_hash(name):
    value = 0
    for byte in name.encode():
        value = (value << 4) + byte
        high = value & 0xf0000000
        if high:
            value ^= high >> 24
        value &= ~high
    return value & 0xffffffff


def needing_glibc_9_99(data):
    """The library with its first GLIBC_ vernaux entry renamed GLIBC_9.99 (name and hash), as a binary
    built against a glibc from the future would be."""
    from elftools.elf.elffile import ELFFile
    elf = ELFFile(io.BytesIO(data))
    verneed, dynstr = elf.get_section_by_name(".gnu.version_r"), elf.get_section_by_name(".dynstr")
    out = bytearray(data)
    pos = verneed["sh_offset"]
    while True:
        _, count, _, aux, following = struct.unpack("<HHIII", data[pos:pos + 16])
        at = pos + aux
        for _ in range(count):
            _, _, _, name, next_aux = struct.unpack("<IHHII", data[at:at + 16])
            start = dynstr["sh_offset"] + name
            old = data[start:data.index(b"\0", start)]
            if old.startswith(b"GLIBC_2") and len(old) >= len(b"GLIBC_9.99"):
                out[start:start + len(old) + 1] = b"GLIBC_9.99" + b"\0" * (len(old) + 1 - len(b"GLIBC_9.99"))
                out[at:at + 4] = struct.pack("<I", elf_hash("GLIBC_9.99"))
                return bytes(out)
            at += next_aux
        if not following:
            raise AssertionError("no GLIBC_ need to patch")
        pos += following


@pytest.fixture(scope="module")
def vneed(tmp_path_factory, real_condas, pyz):
    """The base: real conda 25.11.1 makes an environment with vneed (lib/libvneed.so, built by cc), packed
    --with-packages; then its extracted copy in conda's cache is patched to need GLIBC_9.99 and packed
    again; a third bundle is the patched one without the record of its binaries (as older pm wrote)."""
    work = tmp_path_factory.mktemp("vneed-base")
    build = work / "build"
    build.mkdir()
    (build / "vneed.c").write_bytes(LIB_C)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(build / "libvneed.so"), str(build / "vneed.c")], check=True)
    good = (build / "libvneed.so").read_bytes()
    bad = needing_glibc_9_99(good)
    (build / "libbad.so").write_bytes(bad)
    loaded = subprocess.run([find_python("newest"), "-c", "import ctypes, sys; ctypes.CDLL(sys.argv[1])",
                             str(build / "libbad.so")], stderr=subprocess.PIPE, universal_newlines=True)
    assert loaded.returncode and "version `GLIBC_9.99' not found" in loaded.stderr  # the real loader refuses it
    channel = str(work / "channel")
    channels.make_linked_package(channel, "linux-64", "vneed", "1.0", "0", [], {"lib/libvneed.so": good})
    channels.index_channel(channel)
    base = realconda.RealCondaSite(real_condas["25.11.1"], str(work / "base"), [channel])
    base.create("vneed-env", ["vneed"])
    software = work / "src" / "vneedsim"
    software.mkdir(parents=True)
    (software / "check.sh").write_text(CHECK)
    bundles = {}
    for label in ("good", "bad"):
        if label == "bad":
            cached = os.path.join(base.base, "pkgs", "vneed-1.0-0", "lib", "libvneed.so")
            with open(cached, "wb") as handle:
                handle.write(bad)
        bundles[label] = str(work / ("vneedsim-%s.zip" % label))
        proc = run_pm(find_python("newest"), pyz, ["pack", "-d", str(software), "-e", "vneed-env", "-o",
                                                   bundles[label], "--yes", "--with-packages"], base.env(), timeout=300)
        assert proc.returncode == 0, proc.stderr
    bundles["older"] = rewrite_bundle(bundles["bad"], str(work / "vneedsim-older.zip"),
                                      lambda members, manifest: manifest.pop("binaries"))
    return bundles



def migrate(pyz, bundle, tmp_path, *extra):
    config = tmp_path / "vneedsim.ini"
    config.write_text(CONFIG.format(out=str(tmp_path / "installed")))
    return subprocess.run(["unshare", "-n", find_python("newest"), pyz, "migrate", "vneedsim", str(config), "--bundle",
                           bundle] + list(extra), env=no_conda_env(tmp_path), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=300)


def this_glibc():
    return os.confstr("CS_GNU_LIBC_VERSION").split()[-1]


def test_a_carried_library_needing_a_newer_glibc_is_refused_before_anything_is_written(vneed, pyz, tmp_path):
    proc = migrate(pyz, vneed["bad"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = "lib/libvneed.so in package vneed needs GLIBC_9.99; this machine has glibc %s" % this_glibc()
    assert line in proc.stderr and "--force-preflight" in proc.stderr
    assert not os.path.exists(str(tmp_path / "store" / "vneedsim")) and not os.path.exists(str(tmp_path / "installed"))
    doctor = run_pm(find_python("newest"), pyz, ["doctor", "--bundle", vneed["bad"]], no_conda_env(tmp_path))
    assert doctor.returncode == 1 and line in doctor.stdout, doctor.stdout + doctor.stderr
    fine = run_pm(find_python("newest"), pyz, ["doctor", "--bundle", vneed["good"]], no_conda_env(tmp_path))
    assert fine.returncode == 0 and "can run the bundle's binaries" in fine.stdout, fine.stdout + fine.stderr
    assert "glibc %s" % this_glibc() in fine.stdout


def test_force_preflight_goes_on_and_records_the_problem(vneed, pyz, tmp_path):
    proc = migrate(pyz, vneed["bad"], tmp_path, "--force-preflight")
    assert proc.returncode == 1, proc.stderr  # the test loads the library: the real loader refuses it
    result = read_result(attempt_dirs(str(tmp_path / "store"), "vneedsim")[-1])
    assert result["preflight"]["forced"] and "needs GLIBC_9.99" in result["preflight"]["problems"][0]
    assert result["tests"][0]["status"] == "failed"


def test_an_older_bundle_has_its_carried_files_checked_before_they_are_linked(vneed, pyz, tmp_path):
    proc = migrate(pyz, vneed["older"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "lib/libvneed.so in package vneed needs GLIBC_9.99" in proc.stderr
    attempt = attempt_dirs(str(tmp_path / "store"), "vneedsim")[-1]
    assert "needs GLIBC_9.99" in read_result(attempt)["preflight"]["problems"][0]
    envs = tmp_path / "store" / "vneedsim" / "envs"
    assert not envs.is_dir() or not os.listdir(str(envs))  # nothing linked
    assert not os.path.exists(str(tmp_path / "installed"))


def test_the_same_bundle_with_a_library_this_machine_loads_passes_and_writes_a_valid_sbom(vneed, pyz, tmp_path):
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    proc = migrate(pyz, vneed["good"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    attempt = attempt_dirs(str(tmp_path / "store"), "vneedsim")[-1]
    assert read_result(attempt)["preflight"] == {"problems": [], "forced": False,
                                                 "checked": "the binaries pack recorded"}
    with open(os.path.join(attempt, "sbom.cdx.json")) as handle:
        text = handle.read()
    errors = JsonStrictValidator(SchemaVersion.V1_5).validate_str(text)
    assert errors is None, errors
    sbom = json.loads(text)
    assert sbom["metadata"]["component"]["name"] == "vneedsim"
    vneed_component = next(c for c in sbom["components"] if c["name"] == "vneed")
    assert vneed_component["purl"].startswith("pkg:conda/vneed@1.0?build=0")
    with zipfile_open(vneed["good"]) as bundle:
        manifest = json.loads(bundle.read("manifest.json"))
    member = "channel/linux-64/vneed-1.0-0.zip"
    assert vneed_component["hashes"] == [{"alg": "SHA-256", "content": manifest["members"][member]["sha256"]}]
    properties = dict((p["name"], p["value"]) for p in sbom["metadata"]["component"]["properties"])
    assert properties["pm:test:load:status"] == "passed"
    with open(read_result(attempt)["tests"][0]["log"], "rb") as handle:
        assert properties["pm:test:load:log:sha256"] == hashlib.sha256(handle.read()).hexdigest()
    assert any(d["ref"] == "software:vneedsim" and "conda:vneed" in d["dependsOn"] for d in sbom["dependencies"])
    printed = run_pm(find_python("newest"), pyz, ["report", "vneedsim", "--sbom"], no_conda_env(tmp_path))
    assert printed.returncode == 0 and json.loads(printed.stdout) == sbom
    with open(os.path.join(attempt, "report.html")) as handle:
        assert 'href="sbom.cdx.json"' in handle.read()


def zipfile_open(path):
    import zipfile
    return zipfile.ZipFile(path)


# -- The preflight of __cuda: packages that depend on (or constrain) the CUDA driver ------------------

CUDA_CONFIG = "[cudasim]\noutput_dir = {out}\npackage_managers = conda\ntests = run\n[test_run]\nexec = sh run.sh\n"
CUDA_STUB = "int cuDriverGetVersion(int *version) { *version = %d; return 0; }\n"


@pytest.fixture(scope="module")
def cudaneed(tmp_path_factory, real_condas, pyz):
    """The base: real conda 25.11.1, told CUDA 12.2 is here (CONDA_OVERRIDE_CUDA: there is no GPU), makes an
    environment with gpukernel (depends on __cuda >=12.0) and gpuoptional (constrains __cuda >=12.0),
    packed --with-packages."""
    work = tmp_path_factory.mktemp("cuda-base")
    channel = str(work / "channel")
    channels.make_linked_package(channel, "noarch", "gpukernel", "1.0", "0", ["__cuda >=12.0"],
                                 {"share/gpukernel/kernel.txt": b"kernel\n"}, noarch="generic")
    channels.make_linked_package(channel, "noarch", "gpuoptional", "1.0", "0", [],
                                 {"share/gpuoptional/cpu.txt": b"cpu\n"}, noarch="generic",
                                 constrains=["__cuda >=12.0"])
    channels.index_channel(channel)
    base = realconda.RealCondaSite(real_condas["25.11.1"], str(work / "base"), [channel])
    base.conda("create", "-y", "-q", "-n", "cuda-env", "gpukernel", "gpuoptional",
               env=base.env(CONDA_OVERRIDE_CUDA="12.2"))
    software = work / "src" / "cudasim"
    software.mkdir(parents=True)
    (software / "run.sh").write_text("echo cudasim ran\n")
    bundle = str(work / "cudasim.zip")
    proc = run_pm(find_python("newest"), pyz, ["pack", "-d", str(software), "-e", "cuda-env", "-o", bundle,
                                               "--yes", "--with-packages"], base.env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return bundle


def cuda_driver(tmp_path, version):
    """A stand-in for the NVIDIA driver, which cannot exist on this machine (no GPU): a libcuda.so.1 built
    by cc whose cuDriverGetVersion answers version (12020 for CUDA 12.2). Returns the folder for
    LD_LIBRARY_PATH."""
    folder = tmp_path / ("driver-%d" % version)
    folder.mkdir()
    (folder / "cuda.c").write_text(CUDA_STUB % version)
    subprocess.run(["cc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(folder / "libcuda.so.1"),
                    str(folder / "cuda.c")], check=True)
    return str(folder)


def cuda_env(tmp_path, driver):
    env = no_conda_env(tmp_path)
    if driver:
        env["LD_LIBRARY_PATH"] = driver
    return env


def migrate_cudasim(pyz, bundle, tmp_path, driver, *extra):
    config = tmp_path / "cudasim.ini"
    config.write_text(CUDA_CONFIG.format(out=str(tmp_path / "installed")))
    return run_pm(find_python("newest"), pyz, ["migrate", "cudasim", str(config), "--bundle", bundle] + list(extra),
                  cuda_env(tmp_path, driver), timeout=300)


def nothing_written(tmp_path):
    return not os.path.exists(str(tmp_path / "store" / "cudasim")) and not os.path.exists(str(tmp_path / "installed"))


def test_a_cuda_driver_new_enough_for_the_packages_cuda_needs_passes(cudaneed, pyz, tmp_path):
    proc = migrate_cudasim(pyz, cudaneed, tmp_path, cuda_driver(tmp_path, 12020))
    assert proc.returncode == 0, proc.stderr
    assert read_result(attempt_dirs(str(tmp_path / "store"), "cudasim")[-1])["preflight"]["problems"] == []
    doctor = run_pm(find_python("newest"), pyz, ["doctor", "--bundle", cudaneed],
                    cuda_env(tmp_path, str(tmp_path / "driver-12020")))
    assert doctor.returncode == 0 and "NVIDIA driver: CUDA 12.2" in doctor.stdout, doctor.stdout + doctor.stderr
    assert "__cuda >=12.0 (depends)" in doctor.stdout and "__cuda >=12.0 (constrains)" in doctor.stdout


def test_a_cuda_driver_too_old_is_refused_before_anything_is_written(cudaneed, pyz, tmp_path):
    driver = cuda_driver(tmp_path, 11080)
    proc = migrate_cudasim(pyz, cudaneed, tmp_path, driver)
    assert proc.returncode == 2, proc.stderr
    for package in ("gpukernel", "gpuoptional"):
        assert "preflight: package %s needs __cuda >=12.0; this machine's NVIDIA driver supports CUDA 11.8" % package \
            in proc.stderr
    assert "--force-preflight" in proc.stderr and nothing_written(tmp_path)
    doctor = run_pm(find_python("newest"), pyz, ["doctor", "--bundle", cudaneed], cuda_env(tmp_path, driver))
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    assert "package gpukernel needs __cuda >=12.0; this machine's NVIDIA driver supports CUDA 11.8" in doctor.stdout


def test_without_a_cuda_driver_a_package_that_depends_on_cuda_is_refused_unless_forced(cudaneed, pyz, tmp_path):
    """A constraint on __cuda binds only where a driver is present (conda's reading): gpuoptional runs on
    a machine without one; gpukernel cannot."""
    import ctypes
    try:
        ctypes.CDLL("libcuda.so.1")
        pytest.skip("this machine has an NVIDIA driver (libcuda.so.1 loads)")
    except OSError:
        pass
    proc = migrate_cudasim(pyz, cudaneed, tmp_path, None)
    assert proc.returncode == 2, proc.stderr
    line = "package gpukernel needs a CUDA driver (__cuda >=12.0); none found (libcuda.so.1)"
    assert "preflight: " + line in proc.stderr and "gpuoptional" not in proc.stderr
    assert "login node without GPUs" in proc.stderr and nothing_written(tmp_path)
    proc = migrate_cudasim(pyz, cudaneed, tmp_path, None, "--force-preflight")
    assert proc.returncode == 0, proc.stderr
    preflight = read_result(attempt_dirs(str(tmp_path / "store"), "cudasim")[-1])["preflight"]
    assert preflight["forced"] and preflight["problems"] == [line]


def test_a_cuda_version_is_read_against_conda_version_specs():
    met = [("__cuda", "11.0"), ("__cuda >=11.2", "12.2"), ("__cuda>=11.2,<13", "12.2"), ("__cuda 12.*", "12.2"),
           ("__cuda =12", "12.0"), ("__cuda <11|>=12", "12.2"), ("__cuda ==12.2", "12.2"), ("__cuda !=11.8", "12.2")]
    unmet = [("__cuda >=12.0", "11.8"), ("__cuda >=11.2,<12", "12.2"), ("__cuda 11.*", "12.2"),
             ("__cuda <11|>=12.4", "12.2"), ("__cuda >12.2", "12.2"), ("__cuda !=12.2", "12.2")]
    assert all(pm.cuda_spec_met(spec, version) for spec, version in met)
    assert not any(pm.cuda_spec_met(spec, version) for spec, version in unmet)


def test_conda_override_cuda_names_the_gpu_nodes_cuda_for_the_preflight_and_conda_alike(cudaneed, pyz, real_site,
                                                                                          tmp_path):
    """On a login node without GPUs, conda's own CONDA_OVERRIDE_CUDA says which CUDA the GPU nodes have:
    the preflight takes it, and real conda 25.11.1 then creates the environment (its solver reads it too;
    --force-preflight alone would get past pm and not past conda)."""
    site = real_site("25.11.1", "target", home=str(tmp_path / "store"))
    config = tmp_path / "cudasim.ini"
    config.write_text(CUDA_CONFIG.format(out=str(tmp_path / "installed")))
    args = ["migrate", "cudasim", str(config), "--bundle", cudaneed]
    proc = run_pm(find_python("newest"), pyz, args, site.env(CONDA_OVERRIDE_CUDA="11.8"), timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert "package gpukernel needs __cuda >=12.0; CONDA_OVERRIDE_CUDA says CUDA 11.8" in proc.stderr
    assert nothing_written(tmp_path)
    proc = run_pm(find_python("newest"), pyz, args, site.env(CONDA_OVERRIDE_CUDA="12.2"), timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = read_result(attempt_dirs(str(tmp_path / "store"), "cudasim")[-1])
    assert result["preflight"]["problems"] == [] and result["level"] != "carried"  # conda made it
    assert result["env_prefix"].startswith(str(tmp_path / "store" / "cudasim" / "envs"))  # the install's own
