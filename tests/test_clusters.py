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
    assert needs["glibc_file"] == "lib/libstdc++.so.6" and PROBE.version_key(needs["glibc"]) >= (2, 17)
    assert PROBE.version_key(needs["glibcxx_defined"]) >= (3, 4, 20)
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
