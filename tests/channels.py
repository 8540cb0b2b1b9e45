"""Build local conda channels for tests: tiny hand-made packages and the real graphs in tests/fixtures.

A package is a real .tar.bz2 with info/index.json, info/paths.json and its files; the channel is
indexed with the standard library as conda-index does (repodata.json and the repodata.json.bz2 that
conda 4.3 reads, in noarch/ and linux-64/), so real conda and the stand-in install from it as from a mirror.
"""
import bz2
import hashlib
import io
import json
import os
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
# Copied from the shared fixtures (see its README); PM_SHARED=/path/to/shared reads the originals.
REAL_ENVS = os.path.join(os.environ["PM_SHARED"], "fixtures", "real-envs") if os.environ.get("PM_SHARED") \
    else os.path.join(HERE, "fixtures", "real-envs")


def make_package(channel, subdir, name, version, build="0", depends=(), files=None):
    """Write one conda package into channel/subdir; files maps relative paths to bytes."""
    files = files or {}
    folder = os.path.join(channel, subdir)
    os.makedirs(folder, exist_ok=True)
    index = {"name": name, "version": version, "build": build, "build_number": 0,
             "depends": list(depends), "subdir": subdir, "license": "BSD-3-Clause",
             "timestamp": 1700000000000}
    if subdir == "noarch":
        index["noarch"] = "generic"
    paths = {"paths_version": 1, "paths": [
        {"_path": p, "path_type": "hardlink", "sha256": hashlib.sha256(c).hexdigest(),
         "size_in_bytes": len(c)} for p, c in sorted(files.items())]}
    path = os.path.join(folder, "%s-%s-%s.tar.bz2" % (name, version, build))
    with tarfile.open(path, "w:bz2") as tar:
        add_member(tar, "info/index.json", json.dumps(index).encode())
        add_member(tar, "info/paths.json", json.dumps(paths).encode())
        add_member(tar, "info/files", "".join(p + "\n" for p in sorted(files)).encode())
        for member, content in sorted(files.items()):
            add_member(tar, member, content, 0o755 if member.startswith("bin/") else 0o644)
    return path


def add_member(tar, name, data, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 1700000000
    tar.addfile(info, io.BytesIO(data))


def index_channel(channel):
    """repodata.json and repodata.json.bz2 for every subdir, from the packages' info/index.json."""
    for subdir in ("noarch", "linux-64"):
        folder = os.path.join(channel, subdir)
        os.makedirs(folder, exist_ok=True)
        packages = {}
        for filename in sorted(os.listdir(folder)):
            if not filename.endswith(".tar.bz2"):
                continue
            path = os.path.join(folder, filename)
            with open(path, "rb") as handle:
                data = handle.read()
            with tarfile.open(path) as tar:
                record = json.load(tar.extractfile("info/index.json"))
            record.update(md5=hashlib.md5(data).hexdigest(), sha256=hashlib.sha256(data).hexdigest(), size=len(data))
            packages[filename] = record
        text = json.dumps({"info": {"subdir": subdir}, "packages": packages, "repodata_version": 1},
                          indent=1, sort_keys=True).encode()
        with open(os.path.join(folder, "repodata.json"), "wb") as handle:
            handle.write(text)
        with open(os.path.join(folder, "repodata.json.bz2"), "wb") as handle:
            handle.write(bz2.compress(text))
    return channel


def real_env_names():
    return sorted(n for n in os.listdir(REAL_ENVS) if os.path.isfile(os.path.join(REAL_ENVS, n, "graph.json")))


def load_graph(env_name, platform="linux-64"):
    with open(os.path.join(REAL_ENVS, env_name, "graph.json")) as handle:
        return json.load(handle)["platforms"][platform]["conda"]


def env_yml_specs(env_name):
    """The conda entries of a fixture's environment.yml (pip entries left out)."""
    import yaml
    with open(os.path.join(REAL_ENVS, env_name, "environment.yml")) as handle:
        doc = yaml.safe_load(handle)
    return [str(d) for d in doc.get("dependencies") or [] if not isinstance(d, dict)]


def channel_from_graph(channel, env_name):
    """A channel holding every linux-64 package of a real fixture, same names/versions/builds/depends."""
    for record in load_graph(env_name):
        make_package(channel, record["subdir"], record["name"], record["version"],
                     record["build"], record["depends"])
    return index_channel(channel)


def pinned_specs(env_name):
    return ["%s ==%s %s" % (r["name"], r["version"], r["build"]) for r in load_graph(env_name)]


GRIDCALC = b"""#!/bin/sh
# gridcalc: integer grid helper shipped by the example channel's gridtools package.
case "$1" in
  --version) echo "gridcalc 2.0"; exit 0 ;;
  smooth) shift ;;
  *) echo "usage: gridcalc smooth CELLS..." >&2; exit 2 ;;
esac
set -- 0 "$@" 0
prev=$1; shift; out=""
while [ $# -gt 1 ]; do
  cur=$1; next=$2
  out="$out $(( (prev + cur + next) / 3 ))"
  prev=$cur; shift
done
echo $out
"""

HEATPLOT = b"""#!/bin/sh
[ "$1" = "--version" ] && { echo "heatplot 0.3"; exit 0; }
echo "heatplot: $*"
"""

# name, version, build, depends, files: the example project's environment
EXAMPLE_PACKAGES = [
    ("libgrid", "1.2", "h0_0", [], {"lib/libgrid.txt": b"grid library\n"}),
    ("corelang", "3.1", "h1_0", ["corelang-pip"], {}),
    ("corelang-pip", "24.0", "h1_0", ["corelang >=3"], {}),
    ("gridtools", "2.0", "h2_0", ["libgrid >=1.0", "corelang >=3"], {"bin/gridcalc": GRIDCALC}),
    ("heatplot", "0.3", "h3_0", ["gridtools >=2"], {"bin/heatplot": HEATPLOT}),
    ("conda", "24.11.3", "h4_0", ["corelang"], {}),
    # a root dependency cycle, for environments whose minimal set has one to handle
    ("cycle-a", "1.0", "h5_0", ["cycle-b"], {}),
    ("cycle-b", "1.0", "h5_0", ["cycle-a"], {}),
]
EXAMPLE_SPECS = ["heatplot", "gridtools >=2"]
CYCLE_SPECS = EXAMPLE_SPECS + ["cycle-b"]


def example_channel(channel, builds=None, versions=None, leave_out=()):
    """The channel the example project's environment comes from. No package depends on a virtual
    package (__unix): conda 4.3 knows none.

    builds and versions override build strings and versions (name -> value), to imitate another
    platform or an older mirror; leave_out names packages the channel lacks.
    """
    for name, version, build, depends, files in EXAMPLE_PACKAGES:
        if name not in leave_out:
            make_package(channel, "noarch", name, (versions or {}).get(name, version),
                         (builds or {}).get(name, build), depends, files)
    return index_channel(channel)


# A Python project's environment (for pip) and a C project's (for apt).
PY_PACKAGES = [
    ("python", "3.11.7", "h1_0", [], {}),
    ("tinycalc", "1.0", "py_0", ["python >=3"], {  # as conda-built Python packages are: with their dist-info
        "lib/python3.11/site-packages/tinycalc/__init__.py": b"VERSION = '1.0'\n",
        "lib/python3.11/site-packages/tinycalc-1.0.dist-info/METADATA":
            b"Metadata-Version: 2.1\nName: tinycalc\nVersion: 1.0\n",
        "lib/python3.11/site-packages/tinycalc-1.0.dist-info/INSTALLER": b"conda\n"}),
    ("oddlib", "0.1", "h0_0", [], {}),
]
C_PACKAGES = [
    ("zlib", "1.2.13", "h4ab18f5_6", [], {}),
    ("make", "4.3", "hd18ef5c_1", [], {}),
]


def packages_channel(channel, packages):
    for name, version, build, depends, files in packages:
        make_package(channel, "noarch", name, version, build, depends, files)
    return index_channel(channel)



def conda_format_channel(channel, python):
    """The example channel with its packages as .conda archives only (as_conda_format for each)."""
    example_channel(channel)
    for filename in sorted(os.listdir(os.path.join(channel, "noarch"))):
        if filename.endswith(".tar.bz2"):
            as_conda_format(channel, "noarch", filename[:-len(".tar.bz2")], python)
    return channel


# A channel of packages that exercise a linker (pm's own, when the target has no conda): a prefix
# placeholder in a text file and one compiled into a binary, a noarch: python package with an entry
# point, a dependency cycle, a post-link script, and a package carried as .conda.
PLACEHOLDER = "/opt/conda-bld/pm_test_placehold" + "_placehold" * 20  # 232 characters, as conda-build's are long
HELLO_C = b'#include <stdio.h>\nstatic const char where[] = PREFIX "/share/hello";\n' \
          b'int main(void) { puts(where); return 0; }\n'


def make_linked_package(channel, subdir, name, version, build, depends, files, placeholders=None, noarch=None,
                        entry_points=None, constrains=None):
    """A .tar.bz2 with info/paths.json naming its placeholders (path -> mode) and, for noarch: python,
    info/link.json with its entry points."""
    folder = os.path.join(channel, subdir)
    os.makedirs(folder, exist_ok=True)
    index = {"name": name, "version": version, "build": build, "build_number": 0, "depends": list(depends),
             "subdir": subdir, "license": "BSD-3-Clause", "timestamp": 1700000000000}
    if noarch:
        index["noarch"] = noarch
    if constrains:
        index["constrains"] = list(constrains)
    paths = []
    for path, content in sorted(files.items()):
        item = {"_path": path, "path_type": "hardlink", "sha256": hashlib.sha256(content).hexdigest(),
                "size_in_bytes": len(content)}
        if path in (placeholders or {}):
            item.update(prefix_placeholder=PLACEHOLDER, file_mode=placeholders[path])
        paths.append(item)
    out = os.path.join(folder, "%s-%s-%s.tar.bz2" % (name, version, build))
    with tarfile.open(out, "w:bz2") as tar:
        add_member(tar, "info/index.json", json.dumps(index).encode())
        add_member(tar, "info/paths.json", json.dumps({"paths_version": 1, "paths": paths}).encode())
        add_member(tar, "info/files", "".join(p + "\n" for p in sorted(files)).encode())
        if noarch == "python":
            add_member(tar, "info/link.json", json.dumps({"noarch": {"type": "python", "entry_points": entry_points or []},
                                                          "package_metadata_version": 1}).encode())
        for path, content in sorted(files.items()):
            add_member(tar, path, content, 0o755 if path.startswith("bin/") else 0o644)
    return out


def linker_channel(channel, python, cc="cc"):
    """The linker's channel, indexed; python is the interpreter its 'python' package wraps (its
    version is the package's), cc builds the binary with the placeholder compiled in."""
    import subprocess
    version = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                             stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout.strip()
    short = ".".join(version.split(".")[:2])
    wrapper = ('#!/bin/sh\nPYTHONPATH="%s/lib/python%s/site-packages${PYTHONPATH:+:$PYTHONPATH}" exec %s "$@"\n'
               % (PLACEHOLDER, short, python)).encode()
    build = os.path.join(channel, "build")
    os.makedirs(build)
    with open(os.path.join(build, "hello.c"), "wb") as handle:
        handle.write(HELLO_C)
    subprocess.run([cc, "-O0", "-DPREFIX=\"%s\"" % PLACEHOLDER, "-o", os.path.join(build, "hello"),
                    os.path.join(build, "hello.c")], check=True)
    with open(os.path.join(build, "hello"), "rb") as handle:
        hello = handle.read()
    make_linked_package(channel, "linux-64", "python", version, "h0_0", [], {"bin/python": wrapper},
                        {"bin/python": "text"})
    make_linked_package(channel, "linux-64", "hello", "1.0", "h1_0", ["cyc-a"],
                        {"bin/hello": hello, "share/hello": b"hello data\n"}, {"bin/hello": "binary"})
    make_linked_package(channel, "noarch", "tinycli", "0.1", "py_0", ["python"],
                        {"site-packages/tinycli/__init__.py": b"def main():\n    print('tinycli ok')\n    return 0\n"},
                        noarch="python", entry_points=["tinycli = tinycli:main"])
    make_linked_package(channel, "noarch", "cyc-a", "1.0", "0", ["cyc-b"], {"share/cyc-a": b"a\n"}, noarch="generic")
    make_linked_package(channel, "noarch", "cyc-b", "1.0", "0", ["cyc-a"], {"share/cyc-b": b"b\n"}, noarch="generic")
    make_linked_package(channel, "noarch", "postlink", "1.0", "0", [],
                        {"bin/.postlink-post-link.sh": b'echo ran > "$PREFIX/postlink-ran"; sleep ${PM_TEST_POSTLINK_SLEEP:-0}\n'}, noarch="generic")
    make_linked_package(channel, "noarch", "zdata", "1.0", "0", [], {"share/zdata.txt": b"carried as .conda\n"},
                        noarch="generic")
    import shutil
    shutil.rmtree(build)
    index_channel(channel)
    return channel


LINKER_SPECS = ["hello", "tinycli", "postlink", "zdata"]


def as_conda_format(channel, subdir, stem, python):
    """Turn one package of an indexed channel into .conda (conda_package_handling under python, real
    conda 25's interpreter), moving its repodata entry to packages.conda."""
    import subprocess
    folder = os.path.join(channel, subdir)
    subprocess.run([python, "-c", "import sys\nfrom conda_package_handling.api import transmute\n"
                    "transmute(sys.argv[1], '.conda', out_folder=sys.argv[2])",
                    os.path.join(folder, stem + ".tar.bz2"), folder], check=True)
    os.remove(os.path.join(folder, stem + ".tar.bz2"))
    with open(os.path.join(folder, "repodata.json")) as handle:
        repodata = json.load(handle)
    entry = repodata["packages"].pop(stem + ".tar.bz2")
    with open(os.path.join(folder, stem + ".conda"), "rb") as handle:
        data = handle.read()
    entry.update(md5=hashlib.md5(data).hexdigest(), sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    repodata.setdefault("packages.conda", {})[stem + ".conda"] = entry
    text = json.dumps(repodata, indent=1, sort_keys=True).encode()
    with open(os.path.join(folder, "repodata.json"), "wb") as handle:
        handle.write(text)
    with open(os.path.join(folder, "repodata.json.bz2"), "wb") as handle:
        handle.write(bz2.compress(text))
