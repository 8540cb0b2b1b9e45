"""The environment that arrives is the one that left: a base environment with conda packages and
what real pip installed on top (from an index, a local wheel, a git checkout, and the software
itself editable; tests/pipbase.py) is packed under Python 2.7 and 3.x, and migrated by every route:
real conda 25.11.1 and 4.3.16, pm's own linker, and pip. The offline routes run with no network at
all (unshare -n); the software's own test imports every package at the base's version, and the
software from the migrated tree."""
import json
import os
import subprocess
import zipfile

import pytest

import pipbase
import pm
import realconda
import wheels
from conftest import attempt_dirs, find_python, read_result, run_pm

CONFIG = """[pipsim]
output_dir = {out}
package_managers = {managers}
tests = check
[test_check]
exec = python check.py
"""


def dists_of(bundle):
    with zipfile.ZipFile(bundle) as archive:
        return dict((d["name"], d) for d in json.loads(archive.read("python-dists.json").decode())["dists"]), \
            set(archive.namelist())


@pytest.mark.parametrize("label", ["carried-2.7", "carried-3"])
def test_pack_records_each_python_distribution_and_carries_what_pip_installed(label, pip_base):
    dists, names = dists_of(pip_base["bundles"][label])
    assert dict((n, (d["version"], d["source"])) for n, d in dists.items()) == {
        "numlite": ("2.0", "conda"), "tinycalc": ("1.0", "index"), "localkit": ("0.2", "local"),
        "gitkit": ("0.3", "vcs"), "pipsim": ("0.6.0.post16", "editable")}
    assert dists["numlite"]["owner"] == "numlite" and dists["tinycalc"]["owner"] is None
    assert dists["gitkit"]["vcs"]["vcs"] == "git" and len(dists["gitkit"]["vcs"]["commit_id"]) == 40
    assert dists["pipsim"]["software"] and dists["pipsim"]["import_roots"] == ["src"]
    assert not any(d["software"] for n, d in dists.items() if n != "pipsim")
    carried = sorted(d.get("wheel") for d in dists.values() if d.get("wheel"))
    assert carried == ["wheels/gitkit-0.3-py3-none-any.whl", "wheels/localkit-0.2-py3-none-any.whl",
                       "wheels/tinycalc-1.0-py3-none-any.whl"]
    assert set(carried) <= names
    assert "pipsim 0.6.0.post16 is the software itself (installed editable" in pip_base["pack_output"][label]
    with zipfile.ZipFile(pip_base["bundles"][label]) as archive:
        with archive.open("wheels/gitkit-0.3-py3-none-any.whl") as member:
            with zipfile.ZipFile(member) as wheel:
                listed = sorted(wheel.namelist())
                record = wheel.read("gitkit-0.3.dist-info/RECORD").decode()
    assert "gitkit-0.3.dist-info/entry_points.txt" in listed and "gitkit/__init__.py" in listed
    assert not any(n.endswith(("INSTALLER", "direct_url.json")) or "bin/" in n for n in listed)
    assert "gitkit/__init__.py,sha256=" in record


def test_dry_run_lists_the_wheels_it_would_rebuild(pip_base, pyz, real_condas, tmp_path):
    site = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "again"), [])
    proc = run_pm(find_python("newest"), pyz, ["pack", "-d", pip_base["software"], "-e", pip_base["prefix"], "-o",
                                               str(tmp_path / "x.zip"), "--yes", "--with-packages", "--dry-run"],
                  site.env())
    assert proc.returncode == 0, proc.stderr
    assert "wheel      tinycalc 1.0" in proc.stdout and "rebuilt from lib/python3.11/site-packages/" in proc.stdout
    assert not os.path.exists(str(tmp_path / "x.zip"))


def write_config(tmp_path, managers):
    path = tmp_path / "pipsim.ini"
    path.write_text(CONFIG.format(out=str(tmp_path / "installed"), managers=managers))
    return str(path)


def migrate(pyz, bundle, config, env, *extra, offline=True):
    command = (["unshare", "-n"] if offline else []) + [find_python("newest"), pyz, "migrate", "pipsim", config,
                                                        "--bundle", bundle, "--yes"] + list(extra)
    return subprocess.run(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=600)


ROUTES = {"conda 25.11.1": ("25.11.1", "conda", []), "conda 4.3.16": ("4.3.16-py3.6", "conda", []),
          "pm's linker": ("25.11.1", "conda", ["--no-conda"]), "pip": ("25.11.1", "pip", [])}


@pytest.mark.parametrize("route, label", [("conda 25.11.1", "carried-2.7"), ("conda 4.3.16", "carried-3"),
                                          ("pm's linker", "carried-2.7"), ("pip", "carried-3")])
def test_with_no_network_every_route_brings_what_pip_installed_and_the_software_from_its_tree(
        route, label, pip_base, pyz, real_condas, tmp_path):
    key, managers, extra = ROUTES[route]
    target = realconda.RealCondaSite(real_condas[key], str(tmp_path / "target"), [])  # no channel at all
    env = target.env(**wheels.pip_env(pip_base["index"]))  # pip's route: the site's wheel mirror, a folder
    proc = migrate(pyz, pip_base["bundles"][label], write_config(tmp_path, managers), env, *extra)
    assert proc.returncode == 0, proc.stderr
    assert "all packages as on the base" in proc.stderr
    assert "pipsim 0.6.0.post16 is the software: installed editable from the tested copy" in proc.stderr
    attempt = attempt_dirs(target.home, "pipsim")[-1]
    result = read_result(attempt)
    assert result["status"] == "passed"
    report = json.loads(run_pm(find_python("newest"), pyz, ["report", "pipsim", "--json"], target.env()).stdout)
    rows = assert_every_base_package_has_one_row(pip_base["bundles"][label], report)
    assert report["source"]["env_python"] == report["target"]["env_python"] == pipbase.short_version(
        find_python("3.11")), "the environments' own Pythons, not the ones pm ran under"
    if managers == "conda":  # carried wheels: pm's own installer ran, not pip
        assert rows["tinycalc"]["how"].startswith("pm:tinycalc=1.0") and "pm's own wheel installer" in \
            rows["tinycalc"]["how"], rows["tinycalc"]
    for name, version in (("tinycalc", "1.0"), ("localkit", "0.2"), ("gitkit", "0.3"), ("pipsim", "0.6.0.post16"),
                          ("numlite", "2.0")):
        assert (rows[name]["status"], rows[name]["base_version"], rows[name]["version"]) == \
            ("installed", version, version), rows[name]
    assert "the software itself, editable from the migrated tree" in rows["pipsim"]["how"]
    assert not any(r["drift"] for r in report["requirements"])
    installed = str(tmp_path / "installed" / "pipsim")
    prefix = os.path.join(attempt, "venv") if managers == "pip" else result["env_prefix"]
    pth = os.path.join(prefix, "lib", "python3.11", "site-packages", "__pm_software__pipsim.pth")
    with open(pth) as handle:
        assert handle.read() == os.path.join(installed, "src") + "\n", "after the install the software is the installed copy"
    again = subprocess.run(["/bin/sh", "-c", result["activate"] + " && cd " + installed + " && python check.py"],
                           env=target.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert again.returncode == 0 and "pipsim from %s/src" % installed in again.stdout, again.stdout


def test_online_pip_pins_every_distribution_in_one_resolve_and_never_asks_the_index_for_the_software(
        pip_base, pyz, real_condas, tmp_path):
    """The index has newer releases of everything, and a release of the software itself: pm installs the
    base's versions in one pip install, never looks for pipsim or for oddlib (a conda package with no
    Python in it) there, and installs pipsim from the migrated tree."""
    folder = pipbase.index_folder(str(tmp_path / "mirror"))
    for name, version in (("pipsim", "0.6.0"), ("oddlib", "0.1"), ("localkit", "0.3"), ("gitkit", "0.4")):
        wheels.make_wheel(folder, name, version, {"%s/__init__.py" % name: "VALUE = 'a release'\n"})
    index = wheels.SimpleIndex(folder)
    target = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "target"), [])
    try:
        proc = migrate(pyz, pip_base["bundles"]["carried-3"], write_config(tmp_path, "pip"),
                       target.env(**index.pip_env()), offline=False)
    finally:
        index.close()
    assert proc.returncode == 0, proc.stderr
    assert "pip: 4 distributions installed, 4 at the base's version, 0 differ" in proc.stderr
    assert not any(r.startswith(("/simple/pipsim", "/simple/oddlib")) for r in index.requests), index.requests
    assert not any(r.startswith(("/files/tinycalc", "/files/localkit", "/files/gitkit")) for r in index.requests), \
        "the carried wheels are the ones installed"
    attempt = attempt_dirs(target.home, "pipsim")[-1]
    with open(os.path.join(attempt, "commands.log")) as handle:
        log = handle.read()
    assert log.count("-m pip install") == 1 and " index versions " not in log
    listed = subprocess.run([os.path.join(attempt, "venv", "bin", "python"), "-m", "pip", "list", "--format=json"],
                            stdout=subprocess.PIPE, universal_newlines=True).stdout
    got = dict((d["name"].lower(), d["version"]) for d in json.loads(listed))
    assert (got["numlite"], got["tinycalc"], got["pipsim"]) == ("2.0", "1.0", "0.6.0.post16")


def test_a_version_the_index_lacks_is_relaxed_to_the_nearest_and_reported_as_drift(pip_base, pyz, real_condas,
                                                                                   tmp_path):
    folder = pipbase.index_folder(str(tmp_path / "mirror"), numlite_versions=("1.0", "2.1", "3.0"))
    target = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "target"), [])
    proc = migrate(pyz, pip_base["bundles"]["carried-3"], write_config(tmp_path, "pip"),
                   target.env(**wheels.pip_env(folder)))
    assert proc.returncode == 1, proc.stderr  # the software's own test sees numlite 2.1, not 2.0
    assert "numlite 2.0 is not on the index for this Python and platform: relaxed to 2.1" in proc.stderr
    assert "pip: 4 distributions installed, 3 at the base's version, 1 differ: numlite 2.0 -> 2.1" in proc.stderr
    assert "differs    1: numlite 2.0 -> 2.1" in proc.stdout
    result = read_result(attempt_dirs(target.home, "pipsim")[-1])
    row = [r for r in result["packages"] if r["requirement"] == "numlite"][0]
    assert (row["base_version"], row["version"], row["drift"]) == ("2.0", "2.1", True)
    assert row["why"].startswith("relaxed: 2.0 is not on the index here, 2.1 is the nearest")
    report = run_pm(find_python("newest"), pyz, ["report", "pipsim"], target.env()).stdout
    assert "1 at another version than the base's" in report and "2.0 -> 2.1" in report
    with open(os.path.join(attempt_dirs(target.home, "pipsim")[-1], "report.html")) as handle:
        page = handle.read()
    assert "<th>base</th>" in page and '<td class="drift">2.1</td>' in page


def test_a_bundle_without_records_pins_every_python_package_and_takes_the_software_from_its_tree(
        pip_base, pyz, real_condas, tmp_path):
    """An older bundle (no python-dists.json): conda's list, read through conda's own metadata (a Python
    build string, pip's own entries), is pinned in one resolve; the software (pipsim 0.6.0.post16, a
    pip entry of conda's list) is never pinned or relaxed to a release: it comes from the migrated tree.
    What the index does not have is named in its row; every base package ends in one row."""
    from conftest import rewrite_bundle

    def older(members, manifest):
        for name in [n for n in members if n == "python-dists.json" or n.startswith("wheels/")]:
            del members[name]
            del manifest["members"][name]
    bundle = rewrite_bundle(pip_base["bundles"]["plain-3"], str(tmp_path / "older.zip"), older)
    folder = pipbase.index_folder(str(tmp_path / "mirror"))
    wheels.make_wheel(folder, "pipsim", "0.6.0", {"pipsim/__init__.py": "VERSION = 'a release'\n"})
    target = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "target"), [])
    proc = migrate(pyz, bundle, write_config(tmp_path, "pip"), target.env(**wheels.pip_env(folder)))
    assert "pipsim 0.6.0.post16 is the software itself: it comes from the migrated tree" in proc.stderr
    assert "pipsim 0.6.0.post16 is the software: installed editable from the tested copy" in proc.stderr
    rows = assert_every_base_package_has_one_row(bundle, migrate_report(pyz, target.env()))
    assert rows["numlite"]["version"] == "2.0" and "is a Python package (its build py311_0)" in rows["numlite"]["how"]
    assert rows["tinycalc"]["version"] == "1.0" and rows["oddlib"]["status"] == "skipped"
    assert "no system package manager is configured" in rows["oddlib"]["how"]
    assert (rows["pipsim"]["status"], rows["pipsim"]["version"]) == ("installed", "0.6.0.post16")
    assert "from the migrated tree" in rows["pipsim"]["how"]
    for name in ("localkit", "gitkit"):
        assert rows[name]["status"] == "failed" and "pip finds no %s==" % name in rows[name]["how"], rows[name]
    with open(os.path.join(attempt_dirs(target.home, "pipsim")[-1], "pip-requirements.txt")) as handle:
        assert "pipsim" not in handle.read()
    assert proc.returncode == 1  # check.py imports localkit, which nothing here has


def test_the_name_table_no_longer_sends_tools_to_unrelated_pypi_projects():
    assert pm.PIP_RENAMES["python-build"] == "build" and pm.PIP_RENAMES["dask-core"] == "dask"
    assert not pm.Requirement("make", "4.3", "hd18ef5c_1").python and "make" not in pm.PIP_RENAMES
    assert not any("pip" in names for names in pm.NAME_MAP.values()), "one table for PyPI names: PIP_RENAMES"

    class Apt(object):
        key, family = "apt", "apt"

        def search(self, expr, log=None):
            return [("markdown", "1.0.1-12"), ("python3-markdown", "3.4.1-2")]

    found = pm.find_candidates(pm.Requirement("markdown", "3.4.1", "pyhd8ed1ab_0"), [Apt()])
    assert [c.package for c in found] == ["python3-markdown"], "a Perl tool is no Python package"


def test_the_bases_python_is_found_through_pyenv_when_the_one_on_path_does_not_run(tmp_path, monkeypatch):
    """A broken pythonX.Y first on PATH (a stand-in for a pyenv shim whose version is not installed:
    a script that fails as such shims do) is passed over for pyenv's real interpreter."""
    shim = tmp_path / "bin" / "python3.11"
    shim.parent.mkdir()
    shim.write_text("#!/bin/sh\necho \"pyenv: python3.11: command not found\" >&2\nexit 127\n")
    shim.chmod(0o755)
    real = find_python("3.11")
    monkeypatch.setenv("PATH", str(shim.parent) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("PYENV_ROOT", os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(real)))))
    found = pm.base_interpreter("3.11.7")
    assert found and found != str(shim)
    assert subprocess.run([found, "-c", "import sys; assert sys.version_info[:2] == (3, 11)"]).returncode == 0
    assert pm.base_interpreter("3.99.1") is None


def test_a_conda_43_base_under_python_27_records_its_distributions_too(pyz, real_condas, tmp_path):
    """conda 4.3.16's records (its own conda-meta layout) and real pip's installs on top, read by the probe
    under Python 2.7: the conda-owned distribution, the one from an index and the software, editable."""
    python = find_python("3.11")
    channel = pipbase.python_channel(str(tmp_path / "channel"), python)
    site = realconda.RealCondaSite(real_condas["4.3.16-py2.7"], str(tmp_path / "conda"), [channel])
    prefix = site.create("pipsim-env", ["python ==%s" % pipbase.short_version(python), "numlite"])
    index = pipbase.index_folder(str(tmp_path / "index"))
    software = pipbase.software(str(tmp_path / "src" / "pipsim"))
    pipbase.pip_into(python, prefix, ["--find-links", index, "tinycalc==1.0"])
    pipbase.pip_into(python, prefix, ["-e", software])
    bundle = str(tmp_path / "b.zip")
    proc = run_pm(find_python("2.7"), pyz, ["pack", "-d", software, "-e", "pipsim-env", "-o", bundle, "--yes",
                                            "--with-packages"], site.env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    dists, names = dists_of(bundle)
    assert dict((n, (d["source"], d["owner"])) for n, d in dists.items()) == {
        "numlite": ("conda", "numlite"), "tinycalc": ("index", None), "pipsim": ("editable", None)}
    assert dists["pipsim"]["software"] and "wheels/tinycalc-1.0-py3-none-any.whl" in names


def test_what_pip_installed_from_a_path_or_a_vcs_is_never_taken_from_an_index_by_name(pip_base, pyz, real_condas,
                                                                                     tmp_path):
    """Packed without --with-packages, localkit (a local wheel) and gitkit (a git checkout) cannot come
    from anywhere: the index's projects of those names are other things, so they are named, not installed."""
    folder = pipbase.index_folder(str(tmp_path / "mirror"))
    for name, version in (("localkit", "0.2"), ("gitkit", "0.3")):
        wheels.make_wheel(folder, name, version, {"%s/__init__.py" % name: "VALUE = 'a namesake'\n"})
    target = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "target"), [])
    proc = migrate(pyz, pip_base["bundles"]["plain-3"], write_config(tmp_path, "pip"),
                   target.env(**wheels.pip_env(folder)))
    assert proc.returncode == 1, proc.stderr
    result = read_result(attempt_dirs(target.home, "pipsim")[-1])
    rows = dict((r["requirement"], r) for r in result["packages"])
    for name in ("localkit", "gitkit"):
        assert rows[name]["status"] == "failed" and "pack with --with-packages" in rows[name]["why"], rows[name]
    assert "gitkit 0.3 was installed from git+file://" in proc.stderr or "gitkit 0.3 was installed from file://" in \
        proc.stderr
    assert rows["tinycalc"]["version"] == "1.0" and rows["numlite"]["version"] == "2.0"


def test_software_installed_from_its_folder_as_a_copy_is_the_migrated_tree_on_the_target(pyz, real_condas, tmp_path):
    """`pip install .` (no -e) of a src-layout project: pack finds where its package lives in the tree
    (src/), and the target puts that on the path: the tests import the migrated code, no release."""
    python = find_python("3.11")
    channel = pipbase.python_channel(str(tmp_path / "channel"), python)
    site = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "conda"), [channel])
    software = pipbase.build_base(str(tmp_path / "base"), site, python, editable=False)
    bundle = str(tmp_path / "copy.zip")
    proc = run_pm(find_python("newest"), pyz, ["pack", "-d", software, "-e", "pipsim-env", "-o", bundle, "--yes",
                                               "--with-packages"], site.env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    dists, _ = dists_of(bundle)
    assert (dists["pipsim"]["source"], dists["pipsim"]["software"], dists["pipsim"]["import_roots"]) == \
        ("local", True, ["src"])
    assert not dists["pipsim"].get("wheel"), "the software travels as software/, never as a wheel"
    target = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "target"), [])
    done = migrate(pyz, bundle, write_config(tmp_path, "pip"), target.env(**wheels.pip_env(str(tmp_path / "base" /
                                                                                                 "index"))))
    assert done.returncode == 0 and "all packages as on the base" in done.stderr, done.stderr


def test_a_wheel_compiled_for_another_machine_is_named_first_and_the_index_serves_instead(pip_base, pyz, real_condas,
                                                                                       tmp_path):
    from conftest import rewrite_bundle
    old, new = "wheels/tinycalc-1.0-py3-none-any.whl", "wheels/tinycalc-1.0-cp311-cp311-macosx_11_0_arm64.whl"

    def foreign(members, manifest):
        members[new] = members.pop(old)
        manifest["members"][new] = manifest["members"].pop(old)  # its sums are computed anew
        members["python-dists.json"] = members["python-dists.json"].replace(old.encode(), new.encode())
    bundle = rewrite_bundle(pip_base["bundles"]["carried-3"], str(tmp_path / "foreign.zip"), foreign)
    target = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "target"), [])
    proc = migrate(pyz, bundle, write_config(tmp_path, "pip"), target.env(**wheels.pip_env(pip_base["index"])))
    assert proc.returncode == 0, proc.stderr
    assert "note: the bundle carries tinycalc-1.0-cp311-cp311-macosx_11_0_arm64.whl, compiled for another machine" \
        in proc.stderr.split("installing")[0], "named before anything is installed"
    rows = dict((r["requirement"], r) for r in read_result(attempt_dirs(target.home, "pipsim")[-1])["packages"])
    assert rows["tinycalc"]["version"] == "1.0" and "carried" not in rows["tinycalc"]["why"]


def assert_every_base_package_has_one_row(bundle, report):
    """The account: each conda package and each Python distribution of the base ends in exactly one row
    (installed at the base's version, at another with why, or not installed with why)."""
    with zipfile.ZipFile(bundle) as archive:
        names = archive.namelist()
        listed = json.loads(archive.read("conda-list.json").decode()) if "conda-list.json" in names else \
            json.loads(archive.read("min-deps.json").decode())
        dists = json.loads(archive.read("python-dists.json").decode())["dists"] if "python-dists.json" in names \
            else []
    rows, by_conda = {}, {}
    for row in report["requirements"]:
        key = pm.pip_name(row["requirement"])
        assert key not in rows, "two rows for %s: %s and %s" % (key, rows.get(key), row)
        rows[key] = row
        if row.get("conda"):
            by_conda[row["conda"]] = row
        assert row["status"] in ("installed", "failed", "skipped", "missing"), row
        if row["status"] != "installed" or row["version"] != row["base_version"]:
            assert row["how"], "a row that is not the base's version says why: %s" % row
    for record in listed:
        assert pm.pip_name(record["name"]) in rows or record["name"] in by_conda, \
            "conda package %s has no row" % record["name"]
    for dist in dists:
        assert pm.pip_name(dist["name"]) in rows or dist.get("owner") in rows, "distribution %s has no row" % dist
    return rows


def migrate_report(pyz, env):
    proc = run_pm(find_python("newest"), pyz, ["report", "pipsim", "--json"], env)
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


def index_with_a_conflict_and_a_build_failure(folder):
    """alpha 1.0 needs beta>=2 (PyPI's metadata) though the base ran beta 1.0; gamma 1.0 is only an
    sdist that cannot build here (its build needs what this index lacks), gamma 0.9 has a wheel."""
    import io
    import tarfile
    pipbase.index_folder(folder)
    wheels.make_wheel(folder, "alpha", "1.0", {"alpha/__init__.py": "VERSION = '1.0'\n"}, ["beta>=2"])
    for version in ("1.0", "2.0"):
        wheels.make_wheel(folder, "beta", version, {"beta/__init__.py": "VERSION = %r\n" % version})
    wheels.make_wheel(folder, "gamma", "0.9", {"gamma/__init__.py": "VERSION = '0.9'\n"})
    files = {"gamma-1.0/setup.py": "raise SystemExit('gamma cannot be built here')\n",
             "gamma-1.0/PKG-INFO": "Metadata-Version: 2.1\nName: gamma\nVersion: 1.0\n"}
    with tarfile.open(os.path.join(folder, "gamma-1.0.tar.gz"), "w:gz") as archive:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            archive.addfile(info, io.BytesIO(text.encode()))
    return folder


def test_one_failing_pin_is_relaxed_by_what_pip_names_and_never_empties_the_environment(pip_base, pyz, real_condas,
                                                                                       tmp_path):
    """The base's exact set is not consistent under the index's metadata (alpha 1.0 needs beta>=2), and
    one pinned sdist cannot be built here: pm relaxes only what pip names (beta to a version that fits,
    gamma to the nearest version with a wheel), installs everything else at the base's version, and
    says so in each row."""
    from conftest import rewrite_bundle

    def more_dists(members, manifest):
        data = json.loads(members["python-dists.json"].decode())
        for name in ("alpha", "beta", "gamma"):
            data["dists"].append({"name": name, "version": "1.0", "site": "lib/python3.11/site-packages",
                                  "entry": "%s-1.0.dist-info" % name, "owner": None, "installer": "pip",
                                  "source": "index", "software": False})
        members["python-dists.json"] = json.dumps(data).encode()
    bundle = rewrite_bundle(pip_base["bundles"]["carried-3"], str(tmp_path / "more.zip"), more_dists)
    folder = index_with_a_conflict_and_a_build_failure(str(tmp_path / "mirror"))
    target = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "target"), [])
    proc = migrate(pyz, bundle, write_config(tmp_path, "pip"), target.env(**wheels.pip_env(folder)))
    assert proc.returncode == 0, proc.stderr
    assert "gamma 1.0 cannot be built here: trying its wheels only" in proc.stderr
    assert "beta 1.0 conflicts with what the other pins need" in proc.stderr
    rows = assert_every_base_package_has_one_row(bundle, migrate_report(pyz, target.env()))
    assert (rows["alpha"]["version"], rows["beta"]["version"], rows["gamma"]["version"]) == ("1.0", "2.0", "0.9")
    assert "relaxed for a conflict" in rows["beta"]["how"] and "alpha 1.0 depends on beta>=2" in rows["beta"]["how"]
    assert "with a wheel" in rows["gamma"]["how"]
    for name in ("tinycalc", "numlite", "localkit", "gitkit"):
        assert rows[name]["status"] == "installed" and not rows[name]["drift"], rows[name]
    assert rows["oddlib"]["status"] == "skipped" and "installs no Python distribution" in rows["oddlib"]["how"]
    assert (rows["python"]["status"], rows["python"]["version"]) == ("installed", pipbase.short_version(
        find_python("3.11"))), "the venv's own Python, the base's minor version"


def test_an_unsolvable_set_falls_back_to_each_package_on_its_own(pip_base, pyz, real_condas, tmp_path):
    """pip fails in a way that names no requirement (a pin whose only file is a broken wheel): the
    levels after the one resolve still install every other package."""
    from conftest import rewrite_bundle

    def broken(members, manifest):
        data = json.loads(members["python-dists.json"].decode())
        data["dists"].append({"name": "brokenkit", "version": "1.0", "site": "lib/python3.11/site-packages",
                              "entry": "brokenkit-1.0.dist-info", "owner": None, "installer": "pip",
                              "source": "index", "software": False})
        members["python-dists.json"] = json.dumps(data).encode()
    bundle = rewrite_bundle(pip_base["bundles"]["carried-3"], str(tmp_path / "broken.zip"), broken)
    folder = pipbase.index_folder(str(tmp_path / "mirror"))
    with open(os.path.join(folder, "brokenkit-1.0-py3-none-any.whl"), "wb") as handle:
        handle.write(b"this is not a zip file")
    target = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "target"), [])
    proc = migrate(pyz, bundle, write_config(tmp_path, "pip"), target.env(**wheels.pip_env(folder)))
    assert "trying each on its own" in proc.stderr, proc.stderr
    rows = assert_every_base_package_has_one_row(bundle, migrate_report(pyz, target.env()))
    assert rows["brokenkit"]["status"] == "failed" and rows["brokenkit"]["how"]
    for name in ("tinycalc", "numlite", "localkit", "gitkit"):
        assert rows[name]["status"] == "installed" and not rows[name]["drift"], rows[name]
    assert proc.returncode == 0, "the software's own test needs none of brokenkit: " + proc.stderr


def test_a_python_conda_package_whose_files_the_base_did_not_list_still_goes_to_pip(pip_base, pyz, real_condas,
                                                                                  tmp_path):
    """numlite is a conda package built for Python (py311_0) and python-dists.json has no record of it
    (its files were not listed): it is pinned for pip from conda's own record, not lost."""
    from conftest import rewrite_bundle

    def unlisted(members, manifest):
        data = json.loads(members["python-dists.json"].decode())
        data["dists"] = [d for d in data["dists"] if d["name"] != "numlite"]
        members["python-dists.json"] = json.dumps(data).encode()
    bundle = rewrite_bundle(pip_base["bundles"]["carried-3"], str(tmp_path / "unlisted.zip"), unlisted)
    target = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "target"), [])
    proc = migrate(pyz, bundle, write_config(tmp_path, "pip"), target.env(**wheels.pip_env(pip_base["index"])))
    assert proc.returncode == 0, proc.stderr
    rows = assert_every_base_package_has_one_row(bundle, migrate_report(pyz, target.env()))
    assert rows["numlite"]["version"] == "2.0" and "is a Python package (its build py311_0)" in rows["numlite"]["how"]


def test_name_matching_comes_from_conda_metadata_on_every_real_environment():
    """Every conda package of the real environments is either a Python package with a name PyPI has
    (tests/fixtures/pypi-names.txt, from PyPI's project list) or not a Python package at all; C
    libraries and tools never become PyPI names."""
    import glob
    with open(os.path.join(os.path.dirname(__file__), "fixtures", "pypi-names.txt")) as handle:
        on_pypi = set(line.strip() for line in handle if line.strip() and not line.startswith("#"))
    not_on_pypi = {"esmpy", "qgis", "fenics-dolfinx"}  # Python packages that only conda distributes
    seen = {}
    for path in glob.glob(os.path.join(os.path.dirname(__file__), "fixtures", "real-envs", "*", "graph.json")):
        with open(path) as handle:
            for platform in json.load(handle)["platforms"].values():
                for record in platform.get("conda", []):
                    seen[record["name"]] = pm.conda_pypi_name(record["name"], record["build"], record["depends"])
    assert len(seen) > 1000
    python = dict((name, pypi) for name, pypi in seen.items() if pypi)
    assert 500 < len(python) < len(seen)
    for name, pypi in python.items():
        assert pm.pip_name(pypi) in on_pypi or name in not_on_pypi, "conda %s -> %s, which PyPI lacks" % (name, pypi)
    for name in ("hdf5", "libnetcdf", "openssl", "glib", "python", "python_abi", "libgcc-ng", "cmake", "qt-main"):
        assert seen.get(name, None) is None, name
    assert (seen["pyqt"], seen["numpy"], seen["petsc4py"], seen["python-gmsh"]) == ("PyQt5", "numpy", "petsc4py", "gmsh")
    assert pm.conda_pypi_name("hdf5", "nompi_h2d575fe_109") is None and pm.conda_pypi_name("h5py", "nompi_py311h_0")
    assert pm.conda_pypi_name("boule", "pypi_0", channel="pypi") == "boule"


@pytest.mark.parametrize("managers", ["pip", "conda"])
def test_the_original_tools_store_with_a_python_package_in_min_deps_migrates(managers, pip_base, pyz, real_condas,
                                                                             tmp_path):
    """platform-migrator 1.1.0's store (NAME/env.yml, min-deps.json of conda-list records, pkg.zip: the
    files its server writes, written here by hand from the base's own exports), with pip and with conda:
    numlite, a Python package by its conda build, is installed and the test imports it; every package
    of the base ends in one row."""
    target = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "target"),
                                     [os.path.join(pip_base["work"], "channel")] if managers == "conda" else [])
    store = os.path.join(target.home, "pipsim")
    os.makedirs(store)
    with zipfile.ZipFile(pip_base["bundles"]["plain-3"]) as archive:
        listed = json.loads(archive.read("conda-list.json").decode())
        with open(os.path.join(store, "env.yml"), "wb") as handle:
            handle.write(archive.read("env.yml"))
        with zipfile.ZipFile(os.path.join(store, "pkg.zip"), "w") as pkg:
            for name in archive.namelist():
                if name.startswith("software/pipsim/"):
                    pkg.writestr(name[len("software/"):], archive.read(name))
    with open(os.path.join(store, "min-deps.json"), "w") as handle:
        json.dump([r for r in listed if r["name"] in ("numlite", "oddlib")], handle)
    config = tmp_path / "original.ini"
    config.write_text("[pipsim]\noutput_dir = %s\npackage_managers = %s\ntests = numlite\n[test_numlite]\n"
                      "exec = python -c \"import numlite; assert numlite.VERSION == '2.0'; print('numlite', "
                      "numlite.VERSION)\"\n" % (tmp_path / "installed", managers))
    folder = pipbase.index_folder(str(tmp_path / "mirror"))
    proc = subprocess.run([find_python("newest"), pyz, "migrate", "pipsim", str(config), "--yes"],
                          env=target.env(**wheels.pip_env(folder)), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "numlite 2.0" in proc.stderr
    bundle = os.path.join(store, "bundles", "0001.zip")
    rows = assert_every_base_package_has_one_row(bundle, migrate_report(pyz, target.env()))
    assert (rows["numlite"]["status"], rows["numlite"]["version"]) == ("installed", "2.0")


def test_the_conda_route_installs_the_pip_part_itself_when_the_channels_have_no_pip(pip_base, pyz, real_condas,
                                                                                    tmp_path):
    """The base's pip was no conda package and this conda's channel has none: conda makes the environment
    at the exact level (pm does not let it add a pip), and the pip part is installed and reported as on
    the pip route, with the environment's own Python."""
    target = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "target"),
                                     [os.path.join(pip_base["work"], "channel")])
    folder = pipbase.index_folder(str(tmp_path / "mirror"))
    proc = migrate(pyz, pip_base["bundles"]["plain-3"], write_config(tmp_path, "conda"),
                   target.env(**wheels.pip_env(folder)))
    assert "lack 1 package: pip" not in proc.stderr, proc.stderr
    report = migrate_report(pyz, target.env())
    assert report["level"] == "exact", proc.stderr
    rows = assert_every_base_package_has_one_row(pip_base["bundles"]["plain-3"], report)
    assert (rows["tinycalc"]["status"], rows["tinycalc"]["version"]) == ("installed", "1.0")
    assert rows["tinycalc"]["how"].startswith("pip:tinycalc=1.0")
    assert rows["numlite"]["version"] == "2.0" and rows["localkit"]["status"] == "failed"
    assert proc.returncode == 1  # check.py imports localkit, which only --with-packages carries


FLAT_CHECK = """import importlib.util, os  # run with python -P: the script's own folder is not put on the path
import flatsim
here = os.path.dirname(os.path.abspath(__file__))
assert os.path.abspath(flatsim.__file__).startswith(here + os.sep), flatsim.__file__
assert importlib.util.find_spec("docs") is None, "the tree's loose folders were not importable on the base"
print("flatsim from the tree alone")
"""


def test_a_flat_layout_editable_install_exposes_the_package_alone_as_on_the_base(pyz, real_condas, tmp_path):
    """A flat-layout project installed editable through a finder that maps the package alone (as
    setuptools does): on the target too only the package is importable, not its folder's docs/."""
    python = find_python("3.11")
    channel = pipbase.python_channel(str(tmp_path / "channel"), python)
    site = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "conda"), [channel])
    prefix = site.create("flat-env", ["python"])
    software = pipbase.python_project(str(tmp_path / "src" / "flatsim"), "flatsim", "1.2", ".", "X = 1\n",
                                      finder=True)
    os.makedirs(os.path.join(software, "docs"))
    with open(os.path.join(software, "docs", "conf.py"), "w") as handle:
        handle.write("project = 'flatsim'\n")
    with open(os.path.join(software, "check.py"), "w") as handle:
        handle.write(FLAT_CHECK)
    pipbase.pip_into(python, prefix, ["-e", software])
    base = subprocess.run([os.path.join(prefix, "bin", "python"), "-P", os.path.join(software, "check.py")],
                          cwd=str(tmp_path), env=site.activated(prefix), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True)
    assert base.returncode == 0, "the base itself must pass: " + base.stdout
    bundle = str(tmp_path / "flat.zip")
    proc = run_pm(find_python("newest"), pyz, ["pack", "-d", software, "-e", "flat-env", "-o", bundle, "--yes"],
                  site.env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    dists, _ = dists_of(bundle)
    assert dists["flatsim"]["import_packages"] == ["flatsim"]
    config = tmp_path / "flat.ini"
    config.write_text("[flatsim]\noutput_dir = %s\npackage_managers = pip\ntests = check\n[test_check]\n"
                      "exec = python -P check.py\n" % (tmp_path / "installed"))  # -P: not the script's folder
    target = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "target"), [])
    done = subprocess.run(["unshare", "-n", find_python("newest"), pyz, "migrate", "flatsim", str(config), "--bundle",
                           bundle, "--yes"], env=target.env(**wheels.pip_env(str(tmp_path / "empty"))),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "flatsim from the tree alone" in done.stdout + done.stderr


def older_bundle(bundle, out):
    """A copy of a bundle as pm packed it before python-dists.json (no records, no wheels)."""
    from conftest import rewrite_bundle

    def older(members, manifest):
        for name in [n for n in members if n == "python-dists.json" or n.startswith("wheels/")]:
            del members[name]
            del manifest["members"][name]
    return rewrite_bundle(bundle, out, older)


@pytest.mark.parametrize("route", ["conda 25.11.1", "pm's linker", "apt and pip"])
def test_every_base_package_of_an_older_bundle_ends_in_one_row_on_every_route(route, pip_base, pyz, real_condas,
                                                                            tmp_path):
    """pm's older bundle format (carried packages, no python-dists.json) with no network: each package
    of the base ends in one row, and the software is linked from the migrated tree, never pinned."""
    key, managers, extra = dict(ROUTES, **{"apt and pip": ("25.11.1", "apt, pip", [])})[route]
    bundle = older_bundle(pip_base["bundles"]["carried-3"], str(tmp_path / "older.zip"))
    target = realconda.RealCondaSite(real_condas[key], str(tmp_path / "target"), [])
    proc = migrate(pyz, bundle, write_config(tmp_path, managers), target.env(**wheels.pip_env(pip_base["index"])),
                   *extra)
    assert proc.returncode == 1, proc.stderr  # check.py imports what pip installed, which this bundle lacks
    assert "pipsim 0.6.0.post16 is the software itself: it comes from the migrated tree" in proc.stderr
    rows = assert_every_base_package_has_one_row(bundle, migrate_report(pyz, target.env()))
    assert (rows["pipsim"]["status"], rows["pipsim"]["version"]) == ("installed", "0.6.0.post16"), rows["pipsim"]
    assert rows["pipsim"]["how"].startswith("pm:pipsim="), "pm linked it; no pip ran for it"
    assert rows["numlite"]["version"] == "2.0"
    attempt = attempt_dirs(target.home, "pipsim")[-1]
    prefix = os.path.join(attempt, "venv") if "pip" in managers else read_result(attempt)["env_prefix"]
    with open(os.path.join(prefix, "lib", "python3.11", "site-packages", "__pm_software__pipsim.pth")) as handle:
        assert handle.read() == "import __pm_software__pipsim_finder\n", "the package alone, not the tree's folder"


def test_an_index_pip_cannot_reach_is_named_once_and_not_asked_again_level_by_level(pip_base, pyz, real_condas,
                                                                                   tmp_path):
    """The index is a closed port on 127.0.0.1: pip's own words say it cannot reach it, so pm stops after
    that one install (no level would do better) and every row says why."""
    target = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "target"), [])
    env = target.env(PIP_INDEX_URL="http://127.0.0.1:9/simple/", PIP_CONFIG_FILE=os.devnull, PIP_RETRIES="1",
                     PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PIP_FIND_LINKS", None)
    proc = migrate(pyz, pip_base["bundles"]["plain-3"], write_config(tmp_path, "pip"), env, offline=False)
    assert proc.returncode == 1 and "pip cannot reach its index" in proc.stderr, proc.stderr
    attempt = attempt_dirs(target.home, "pipsim")[-1]
    with open(os.path.join(attempt, "commands.log")) as handle:
        assert handle.read().count("-m pip install") == 1
    rows = assert_every_base_package_has_one_row(pip_base["bundles"]["plain-3"], migrate_report(pyz, target.env()))
    assert rows["tinycalc"]["status"] == "failed" and "pip cannot reach its index" in rows["tinycalc"]["how"]
