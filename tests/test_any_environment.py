"""The environment a user really has packs with no conda on the base: a conda-style prefix made
offline by py-rattler as pixi makes one (beside a pixi.toml), and another in micromamba's root, and
virtual environments made by `python -m venv` + real pip and by real uv, each with a wheel from an
index and (for the venvs) a local wheel. Each is packed with no conda anywhere (PATH without conda, no
CONDA_EXE), under Python 3.x and the prefix also under 2.7, and migrated with package_managers = pip
from a wheel folder; and, with --with-packages, under unshare -n with no index at all. The software's
own test checks every distribution at the base's version."""
import asyncio
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import rattler

import condastandin
import pipbase
import realconda
import wheels
from conftest import attempt_dirs, find_python, read_result, run_pm

CHECK = """import sys
{imports}
try:
    from importlib.metadata import version
except ImportError:
    version = None
print("python", "%d.%d" % sys.version_info[:2])
assert "%d.%d" % sys.version_info[:2] == "3.11", "the base's Python minor version"
for name, wanted in {pins!r}:
    got = version(name)
    assert got == wanted, (name, got, wanted)
print("all distributions as on the base")
"""
CONFIG = "[{name}]\noutput_dir = {out}\npackage_managers = {managers}\ntests = check\n[test_check]\nexec = python check.py\n"


def software(folder, pins):
    os.makedirs(folder)
    imports = "\n".join("import %s" % name for name, _ in pins)
    with open(os.path.join(folder, "check.py"), "w") as handle:
        handle.write(CHECK.format(imports=imports, pins=pins))
    return folder


def no_conda_env(home, **extra):
    """What a base without conda gives pack: no conda on PATH, no conda or environment variables."""
    env = dict((k, v) for k, v in os.environ.items()
               if not k.startswith(("CONDA", "MAMBA", "VIRTUAL_ENV", "PIXI", "PIP_")) and k != "PYTHONPATH")
    env.update(PATH="/usr/bin:/bin", PM_HOME=home, PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.update(extra)
    return env


def rattler_prefix(prefix, channel, specs, cache, history=None):
    """A conda-style prefix linked by py-rattler from a local channel, offline, as pixi links one."""
    records = condastandin.solve(specs, [channel])
    asyncio.run(rattler.install(records, prefix, cache_dir=cache, show_progress=False))
    if history:
        with open(os.path.join(prefix, "conda-meta", "history"), "w") as handle:
            handle.write(history)
    return prefix


def pack(python, pyz, software_dir, env_arg, out, env, *extra):
    args = ["pack", "-d", software_dir, "-o", out, "--yes"] + (["-e", env_arg] if env_arg else []) + list(extra)
    proc = run_pm(find_python(python), pyz, args, env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def bases(tmp_path_factory, pyz):
    work = str(tmp_path_factory.mktemp("any-env"))
    python = find_python("3.11")
    index = pipbase.index_folder(os.path.join(work, "index"))  # tinycalc 1.0, 1.1; numlite 2.0, 2.1
    local = wheels.make_wheel(os.path.join(work, "local"), "localkit", "0.2", {"localkit/__init__.py": "VALUE = 42\n"})
    channel = pipbase.python_channel(os.path.join(work, "channel"), python)
    cache = os.path.join(work, "rattler-cache")
    out = {"work": work, "index": index, "bundles": {}, "stderr": {}, "dry": {}}
    home = os.path.join(work, "pm-home")

    # pixi: a project with pixi.toml and its lockfile, its environment in .pixi/envs/default
    pixi = software(os.path.join(work, "pixisim"), [("numlite", "2.0"), ("tinycalc", "1.0")])
    for name in ("pixi.toml", "pixi.lock"):
        with open(os.path.join(pixi, name), "w") as handle:
            handle.write("# %s\n" % name)
    prefix = rattler_prefix(os.path.join(pixi, ".pixi", "envs", "default"), channel, ["python", "numlite"], cache)
    pipbase.pip_into(python, prefix, ["--find-links", index, "tinycalc==1.0"])
    out["pixi"] = {"software": pixi, "prefix": prefix}
    env = no_conda_env(home)
    for label, interpreter, extra in (("pixi-2.7", "2.7", ["--with-packages"]), ("pixi-3", "newest", [])):
        out["bundles"][label] = os.path.join(work, label + ".zip")
        out["stderr"][label] = pack(interpreter, pyz, pixi, None, out["bundles"][label], env, *extra).stderr
    out["dry"]["pixi"] = pack("2.7", pyz, pixi, None, os.path.join(work, "no.zip"), env, "--dry-run").stdout

    # micromamba: an environment of its root, found by name
    mamba_root = os.path.join(work, "mamba")
    rattler_prefix(os.path.join(mamba_root, "envs", "mm-env"), channel, ["python", "numlite"], cache,
                   "==> 2026-01-01 00:00:00 <==\n# cmd: micromamba create -n mm-env python numlite\n"
                   "# update specs: ['python', 'numlite']\n")
    out["mamba"] = {"root": mamba_root, "prefix": os.path.join(mamba_root, "envs", "mm-env")}
    out["dry"]["mamba"] = pack("newest", pyz, pixi, "mm-env", os.path.join(work, "no.zip"),
                               no_conda_env(home, MAMBA_ROOT_PREFIX=mamba_root), "--dry-run").stdout

    # venv + pip, and uv: tinycalc from the index, localkit from a local wheel
    pins = [("tinycalc", "1.0"), ("localkit", "0.2")]
    for kind in ("venv", "uv"):
        venv = os.path.join(work, kind + "-env")
        tool_env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1",
                        UV_CACHE_DIR=os.path.join(work, "uv-cache"), UV_NO_CONFIG="1", VIRTUAL_ENV=venv)
        if kind == "venv":
            commands = [[python, "-m", "venv", venv],
                        [os.path.join(venv, "bin", "pip"), "install", "-q", "--no-index", "--find-links", index,
                         "tinycalc==1.0", local],
                        [os.path.join(venv, "bin", "pip"), "uninstall", "-q", "-y", "setuptools"]]  # as 3.12+ venvs
        else:
            uv = os.path.join(os.path.dirname(sys.executable), "uv")
            commands = [[uv, "venv", "-q", "--python", python, venv],
                        [uv, "pip", "install", "-q", "--offline", "--no-index", "--find-links", index,
                         "tinycalc==1.0", local]]
        for command in commands:
            proc = subprocess.run(command, env=tool_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  universal_newlines=True, timeout=120)
            assert proc.returncode == 0, proc.stdout
        soft = software(os.path.join(work, kind + "sim"), pins)
        out[kind] = {"software": soft, "prefix": venv}
        key = kind + "-carried"
        out["bundles"][key] = os.path.join(work, key + ".zip")
        out["stderr"][key] = pack("newest", pyz, soft, venv, out["bundles"][key], env, "--with-packages").stderr
        active = no_conda_env(home, VIRTUAL_ENV=venv, PATH=os.path.join(venv, "bin") + ":/usr/bin:/bin")
        out["dry"][kind] = pack("newest", pyz, soft, None, os.path.join(work, "no.zip"), active, "--dry-run").stdout
    return out


def members(bundle):
    with zipfile.ZipFile(bundle) as archive:
        names = set(archive.namelist())
        read = dict((n, archive.read(n).decode()) for n in names if not n.endswith((".whl", ".zip", ".bz2", "/")))
    return names, read


def test_pack_says_what_kind_of_environment_left_and_how_it_was_read(bases):
    assert "conda-style prefix read without conda, made by pixi; read from conda-meta/*.json and site-packages " \
        "(no conda here)" in bases["dry"]["pixi"], "pixi's .pixi/envs/default found beside its pixi.toml"
    assert "environment %s: conda-style prefix read without conda, made by micromamba;" % bases["mamba"]["prefix"] \
        in bases["dry"]["mamba"], "found by name in $MAMBA_ROOT_PREFIX/envs"
    assert "environment %s: venv; read from pyvenv.cfg and site-packages (Python %s)" % (
        bases["venv"]["prefix"], pipbase.short_version(find_python("3.11"))) in bases["dry"]["venv"], "the active venv"
    assert "uv, made by uv " in bases["dry"]["uv"]
    assert "note: pixi's lockfile" in bases["stderr"]["pixi-3"]
    for label in bases["bundles"]:
        assert "no conda found" not in bases["stderr"][label]


def test_a_prefix_without_conda_is_written_as_conda_would_list_and_export_it(bases, tmp_path):
    names, read = members(bases["bundles"]["pixi-2.7"])
    assert {"env.yml", "conda-list.json", "min-deps.json", "python-dists.json"} <= names
    assert {"channel/linux-64/python-%s-h0_0.zip" % pipbase.short_version(find_python("3.11")),
            "channel/linux-64/numlite-2.0-py311_0.zip", "wheels/tinycalc-1.0-py3-none-any.whl"} <= names
    manifest = json.loads(read["manifest.json"])
    assert manifest["source"]["env_kind"] == "conda-style prefix read without conda"
    assert manifest["source"]["env_made_by"] == "pixi" and manifest["source"]["pixi_lock"].endswith("pixi.lock")
    assert manifest["env"]["python"] == pipbase.short_version(find_python("3.11"))
    env_yml = read["env.yml"]
    assert "  - numlite=2.0=py311_0\n" in env_yml and "  - pip:\n    - tinycalc==1.0\n" in env_yml
    assert "channels:\n  - file://%s\n" % os.path.join(bases["work"], "channel") in env_yml
    listed = json.loads(read["conda-list.json"])
    # real conda 25.11.1 lists the same prefix with the same fields
    conda = realconda.build_all(find_python, ["25.11.1"])["25.11.1"]
    site = realconda.RealCondaSite(conda, str(tmp_path / "conda"), [])
    real = json.loads(site.conda("list", "--json", "-p", bases["pixi"]["prefix"]).stdout)
    fields = ("name", "version", "build_string", "build_number", "channel", "base_url", "platform", "dist_name")
    assert [dict((f, r.get(f)) for f in fields) for r in listed if r["channel"] != "pypi"] == \
        [dict((f, r.get(f)) for f in fields) for r in real if r["channel"] != "pypi"]
    assert [(r["name"], r["version"], r["channel"]) for r in listed if r["channel"] == "pypi"] == \
        [(r["name"], r["version"], r["channel"]) for r in real if r["channel"] == "pypi"] == [("tinycalc", "1.0", "pypi")]
    history = members(bases["bundles"]["pixi-3"])[1]
    assert "env-history.yml" not in history, "pixi writes no conda-meta/history"


def test_a_venv_bundle_has_no_conda_records_and_carries_every_distribution(bases):
    for kind in ("venv", "uv"):
        names, read = members(bases["bundles"][kind + "-carried"])
        assert json.loads(read["conda-list.json"]) == [] and json.loads(read["min-deps.json"]) == []
        manifest = json.loads(read["manifest.json"])
        assert manifest["source"]["env_kind"] == kind and manifest["env"]["python"] == \
            pipbase.short_version(find_python("3.11"))
        dists = dict((d["name"], d) for d in json.loads(read["python-dists.json"])["dists"])
        assert (dists["tinycalc"]["source"], dists["localkit"]["source"]) == ("index", "local")
        assert {"wheels/tinycalc-1.0-py3-none-any.whl", "wheels/localkit-0.2-py3-none-any.whl"} <= names
        assert not any(n.startswith("wheels/pip-") or n.startswith("channel/") for n in names)
        assert "python=3.11" in read["env.yml"] and "    - tinycalc==1.0\n" in read["env.yml"]
        assert "localkit" not in read["env.yml"], "a local wheel is never asked of an index by name"


def migrate(pyz, name, bundle, tmp_path, managers, env, offline):
    config = tmp_path / (name + ".ini")
    config.write_text(CONFIG.format(name=name, out=str(tmp_path / "installed"), managers=managers))
    command = (["unshare", "-n"] if offline else []) + [find_python("newest"), pyz, "migrate", name, str(config),
                                                        "--bundle", bundle, "--yes"]
    return subprocess.run(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=600)


@pytest.mark.parametrize("label, name, managers, offline", [
    ("pixi-3", "pixisim", "pip", False), ("pixi-2.7", "pixisim", "conda", True),
    ("venv-carried", "venvsim", "pip", False), ("venv-carried", "venvsim", "pip", True),
    ("uv-carried", "uvsim", "pip", False), ("uv-carried", "uvsim", "pip", True)])
def test_every_kind_migrates_and_its_test_passes_with_every_distribution_at_the_bases_version(
        label, name, managers, offline, bases, pyz, tmp_path):
    """With an index (a wheel folder) by pip (a venv's local wheel from the bundle); with --with-packages,
    no network and no index: a venv's wheels by pip alone, a prefix's packages by pm's own linker (no
    conda on the target: pip cannot carry conda's packages)."""
    home = str(tmp_path / "home")
    index = bases["index"] if not offline else str(tmp_path / "empty")
    os.makedirs(index, exist_ok=True)
    env = no_conda_env(home, **wheels.pip_env(index))
    bundle = bases["bundles"][label]
    proc = migrate(pyz, name, bundle, tmp_path, managers, env, offline)
    assert proc.returncode == 0, proc.stderr
    assert "all distributions as on the base" in proc.stderr and "python 3.11" in proc.stderr
    result = read_result(attempt_dirs(home, name)[-1])
    assert result["status"] == "passed"
    report = json.loads(run_pm(find_python("newest"), pyz, ["report", name, "--json"], env).stdout)
    rows = dict((r["requirement"], r) for r in report["requirements"])
    pins = {"pixisim": [("numlite", "2.0"), ("tinycalc", "1.0")]}.get(name, [("tinycalc", "1.0"), ("localkit", "0.2")])
    for dist, version in pins:
        assert (rows[dist]["status"], rows[dist]["base_version"], rows[dist]["version"]) == \
            ("installed", version, version), rows[dist]
    assert not any(r["drift"] for r in report["requirements"] if r["requirement"] != "python"), report["requirements"]
    base = pipbase.short_version(find_python("3.11"))
    assert report["source"]["env_python"] == base, "the venv's own Python (pyvenv.cfg), not the one pm ran under"
    assert report["source"]["env_kind"] == {"pixisim": "conda-style prefix read without conda", "venvsim": "venv",
                                            "uvsim": "uv"}[name], report["source"]
    assert report["target"]["env_kind"] == ("a virtual environment (pip)" if managers == "pip" else
                                            "a prefix pm linked without conda"), report["target"]
    text = run_pm(find_python("newest"), pyz, ["report", name], env).stdout
    assert "environment" in text and report["source"]["env_kind"] in text, "the report says what kind left"
    assert report["target"]["env_python"].split(".")[:2] == base.split(".")[:2], "the base's minor version here"


def test_a_prefix_packed_without_conda_migrates_with_real_conda_too(bases, pyz, real_condas, tmp_path):
    """The pixi-style bundle (packed under 2.7 with no conda, --with-packages) on a real conda 25.11.1
    target with no channel and no network: conda installs the carried packages, pm the carried wheel."""
    target = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "target"), [])
    os.makedirs(str(tmp_path / "empty"))
    env = target.env(**wheels.pip_env(str(tmp_path / "empty")))
    proc = migrate(pyz, "pixisim", bases["bundles"]["pixi-2.7"], tmp_path, "conda", env, True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(run_pm(find_python("newest"), pyz, ["report", "pixisim", "--json"], env).stdout)
    rows = dict((r["requirement"], r) for r in report["requirements"])
    assert report["level"] == "exact" and rows["numlite"]["version"] == "2.0" and rows["tinycalc"]["version"] == "1.0"


def test_uv_on_the_target_installs_the_same_pins_and_the_rows_say_so(bases, pyz, tmp_path):
    """uv on PATH (the one tests/requirements.txt installs) takes the one exact resolve; pip reads back;
    each row names uv; doctor lists it."""
    home = str(tmp_path / "home")
    uv_dir = os.path.dirname(shutil.which("uv", path=os.path.dirname(sys.executable)))
    env = no_conda_env(home, **wheels.pip_env(bases["index"]))
    env["PATH"] = uv_dir + ":" + env["PATH"]
    proc = migrate(pyz, "venvsim", bases["bundles"]["venv-carried"], tmp_path, "pip", env, False)
    assert proc.returncode == 0, proc.stderr
    assert "with uv (every one pinned to the base's version, one resolve)" in proc.stderr
    assert "uv: 2 distributions installed, 2 at the base's version, 0 differ" in proc.stderr
    report = json.loads(run_pm(find_python("newest"), pyz, ["report", "venvsim", "--json"], env).stdout)
    rows = dict((r["requirement"], r) for r in report["requirements"])
    assert rows["tinycalc"]["how"].startswith("uv:tinycalc=1.0"), rows["tinycalc"]
    doctor = run_pm(find_python("newest"), pyz, ["doctor"], env)
    assert "uv (%s" % os.path.join(uv_dir, "uv") in doctor.stdout, doctor.stdout
