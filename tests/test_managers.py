"""`pm.pyz migrate` without conda: package-manager configs, real pip against a local index."""
import json
import os
import shutil
import subprocess

import pytest

import channels
import pm
import realconda
import wheels
from conftest import ROOT, attempt_dirs, find_python, read_result, rewrite_bundle, run_pm

PIP_CONFIG = """[pysim]
output_dir = {out}
package_managers = pip
tests = check
[test_check]
exec = python check.py
"""


@pytest.fixture(scope="session")
def pysim_bundle(tmp_path_factory, pyz, real_condas):
    """examples/pysim packed once (under Python 2.7) from a real conda 25.11.1 env with python,
    tinycalc 1.0, oddlib; tests only read it."""
    work = tmp_path_factory.mktemp("pysim-base")
    channel = channels.packages_channel(str(work / "pychannel"), channels.PY_PACKAGES)
    site = realconda.RealCondaSite(real_condas["25.11.1"], str(work / "conda"), [channel])
    site.create("pysim-env", ["tinycalc", "oddlib"])
    bundle = str(work / "pysim.zip")
    proc = run_pm(find_python("2.7"), pyz, ["pack", "-d", os.path.join(ROOT, "examples", "pysim"),
                                            "-e", "pysim-env", "-o", bundle, "--yes"], site.env())
    assert proc.returncode == 0, proc.stderr
    return bundle


@pytest.fixture
def pysim(tmp_path, pysim_bundle, real_site):
    """The pysim bundle, a store of its own, a local wheel index and a test configuration for pip."""
    site = real_site("25.11.1", "conda", home=str(tmp_path / "home"))
    index = wheels.local_index(str(tmp_path / "wheels"))
    env = site.env(**wheels.pip_env(index))
    env["PATH"] = "/usr/bin:/bin:" + os.path.dirname(find_python("newest")) + ":" + env["PATH"]
    config = tmp_path / "pysim.ini"
    config.write_text(PIP_CONFIG.format(out=str(tmp_path / "installed")))
    return {"bundle": pysim_bundle, "env": env, "config": str(config), "home": site.home, "tmp": tmp_path}


def migrate(pyz, pysim, *extra, **kwargs):
    args = ["migrate", "pysim", pysim["config"], "--bundle", pysim["bundle"]] + list(extra)
    return run_pm(find_python(kwargs.get("version", "newest")), pyz, args, pysim["env"], stdin=kwargs.get("stdin"))


def last_result(pysim):
    attempt = attempt_dirs(pysim["home"], "pysim")[-1]
    return read_result(attempt), attempt


@pytest.mark.parametrize("version, source", [("3.6", "http index"), ("newest", "wheel folder"),
                                             ("newest", "http index")])
def test_pip_installs_the_base_version_into_the_softwares_own_venv(version, source, pyz, pysim):
    index = None
    if source == "http index":  # a site mirror: PIP_INDEX_URL, the other way offline targets reach pip
        index = wheels.SimpleIndex(str(pysim["tmp"] / "wheels"))
        env = dict((k, v) for k, v in pysim["env"].items() if k not in ("PIP_NO_INDEX", "PIP_FIND_LINKS"))
        pysim = dict(pysim, env=dict(env, **index.pip_env()))
    try:
        proc = migrate(pyz, pysim, "--yes", version=version)
    finally:
        if index:
            index.close()
    assert proc.returncode == 0, proc.stderr
    if index:
        assert "/simple/tinycalc/" in index.requests and "/files/tinycalc-1.0-py3-none-any.whl" in index.requests
    result, attempt = last_result(pysim)
    rows = dict((r["requirement"], r) for r in result["packages"])
    assert rows["tinycalc"]["status"] == "installed" and rows["tinycalc"]["package"] == "pip:tinycalc=1.0"
    assert rows["oddlib"]["status"] == "skipped"
    assert "python" not in rows or rows["python"]["status"] != "failed"
    assert "tinycalc 1.0 from %s" % os.path.join(attempt, "venv") in proc.stderr
    on_path = shutil.which("python3.11", path=pysim["env"]["PATH"])  # the base's minor, as `module load` gives it
    assert on_path, "this test needs python3.11 on PATH (tests/setup.sh)"
    assert "the base ran Python 3.11.7: the software's virtual environment uses %s" % on_path in proc.stderr
    with open(os.path.join(attempt, "venv", "pyvenv.cfg")) as handle:
        assert "version = 3.11." in handle.read()
    assert "installed" in proc.stdout and "skipped" in proc.stdout
    system = subprocess.run([find_python("newest"), "-c", "import tinycalc"], stderr=subprocess.PIPE)
    assert system.returncode != 0, "the system Python must stay untouched"


@pytest.mark.parametrize("version", ["3.6", "newest", "the system's python3"])
def test_the_softwares_venv_gets_the_pip_its_python_bundles_unpacked_not_compiled(version, tmp_path):
    """The venv's pip (and setuptools before 3.12) comes from the wheels its Python's ensurepip installs
    (pyenv's bundled ones; Debian's /usr/share/python-wheels for the system's), with the scripts
    `python -m venv` makes (pip, pip3, pip3.X) and no byte-compiling, which took ensurepip 5 s of every
    pip-route migration. Its scripts run where the venv's path has a blank or is too long for a '#!' line
    (pip's /bin/sh form), as `python -m venv`'s do."""
    python = "/usr/bin/python3" if version.startswith("the system") else find_python(version)
    assert os.path.isfile(python), "this test needs the system's python3 (apt-get install python3-venv)"
    attempt = pm.Attempt(pm.Store(str(tmp_path / "store")), "pysim")
    venv = str(tmp_path / {"3.6": "a venv", "newest": "v" + "x" * 200}.get(version, "venv"))
    assert pm.make_venv(attempt, python, venv) == (0, ""), open(attempt.log_path).read()
    told = subprocess.run([python, "-I", "-c", pm.ENSUREPIP_WHEELS], check=True, stdout=subprocess.PIPE,
                          universal_newlines=True).stdout.splitlines()
    minor, wheels = told[0], told[1:]
    scripts = set(os.listdir(os.path.join(venv, "bin")))
    assert {"pip", "pip" + minor[0], "pip" + minor} <= scripts and not [s for s in scripts if s.startswith("pip3.")
                                                                      and s != "pip" + minor], scripts
    site = os.path.join(venv, "lib", "python" + minor, "site-packages")
    assert not os.path.exists(os.path.join(site, "pip", "__pycache__")), "pip was byte-compiled"
    wanted = sorted("==".join(os.path.basename(w).split("-")[:2]) for w in wheels)
    assert [w for w in wanted if w.startswith("pip==")], wheels
    listed = subprocess.run([os.path.join(venv, "bin", "pip"), "freeze", "--all"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)
    assert listed.returncode == 0 and sorted(w for w in listed.stdout.split() if "==" in w) == wanted, \
        listed.stdout + listed.stderr
    assert "running ensurepip" not in open(attempt.log_path).read()


SITE_SECTION = """[site]
name = the site's software tree (a folder of NAME-VERSION entries)
exec = sh
search = ls {tree} | grep -i -- %s | sed 's/-\\([^-]*\\)$/ \\1/'
result_fmt = %p %v
install = touch {tree}/installed-%p
install_version = touch {tree}/installed-%p-%v
"""


def with_site_manager(pysim, entries):
    """A site's own package manager (an INI section, as the original tool lets users define one) over a
    real folder of NAME-VERSION entries, listed before pip in the test configuration."""
    tree = pysim["tmp"] / "site-tree"
    tree.mkdir(exist_ok=True)
    for entry in entries:
        (tree / entry).mkdir()
    ini = pysim["tmp"] / "site.ini"
    ini.write_text(SITE_SECTION.format(tree=str(tree)))
    with open(pysim["config"], "w") as handle:
        handle.write(PIP_CONFIG.replace("= pip\n", "= site, pip\n").format(out=str(pysim["tmp"] / "installed")))
    return ["--pck-mgr-configs", str(ini)], tree


def test_prompts_offer_numbered_candidates_for_what_is_no_python_package_and_choices_are_remembered(pyz, pysim):
    flags, tree = with_site_manager(pysim, ["oddlib-0.1", "oddlib-dev-0.1"])
    proc = migrate(pyz, pysim, *flags, stdin="what\n1\n")  # oddlib: a typo, then 1
    assert proc.returncode == 0, proc.stderr
    assert "1) site" in proc.stderr and "exact name" in proc.stderr and "0) skip" in proc.stderr
    assert "type a number from 0 to 2" in proc.stderr
    assert "tinycalc (on the base" not in proc.stderr, "a Python distribution is pip's, never a prompt"
    assert (tree / "installed-oddlib-0.1").exists()
    with open(os.path.join(pysim["home"], "pysim", "choices.json")) as handle:
        assert json.load(handle) == {"oddlib": "site:oddlib=0.1"}
    again = migrate(pyz, pysim, "--yes", "--force", *flags)
    assert again.returncode == 0, again.stderr
    assert "reusing the earlier choice site:oddlib=0.1" in again.stderr


def test_answers_file_overrides_and_a_failed_install_is_reported(pyz, pysim):
    answers = pysim["tmp"] / "answers.json"
    answers.write_text(json.dumps({"tinycalc": "pip:tinycalc=9.9", "oddlib": "skip"}))
    proc = migrate(pyz, pysim, "--answers", str(answers))
    assert proc.returncode == 1, proc.stderr
    result, _ = last_result(pysim)
    statuses = dict((r["requirement"], r["status"]) for r in result["packages"])
    assert statuses["tinycalc"] == "failed" and statuses["oddlib"] == "skipped"
    assert "failed    1: pip:tinycalc=9.9" in proc.stdout
    assert result["tests"][0]["status"] == "failed"
    answers.write_text(json.dumps({"tinycalc": "pip:tinycalc=1.1", "oddlib": "skip"}))
    proc = migrate(pyz, pysim, "--answers", str(answers))
    assert "tinycalc 1.1" in proc.stderr


def test_a_bad_answers_file_is_one_clear_error(pyz, pysim):
    answers = pysim["tmp"] / "answers.json"
    answers.write_text(json.dumps({"tinycalc": "pip tinycalc"}))
    proc = migrate(pyz, pysim, "--answers", str(answers))
    assert proc.returncode == 2 and "is not 'manager:package[=version]'" in proc.stderr


def test_a_manager_not_on_path_is_left_out_with_a_note(pyz, pysim):
    text = PIP_CONFIG.replace("package_managers = pip", "package_managers = spack, pip")
    with open(pysim["config"], "w") as handle:
        handle.write(text.format(out=str(pysim["tmp"] / "installed")))
    proc = migrate(pyz, pysim, "--yes")
    assert proc.returncode == 0, proc.stderr
    assert "spack (spack) is not on PATH here" in proc.stderr
    with open(pysim["config"], "w") as handle:
        handle.write(text.replace("spack, pip", "spack").format(out=str(pysim["tmp"] / "installed-again")))
    proc = migrate(pyz, pysim, "--yes")
    assert proc.returncode == 2 and "none of the package managers spack" in proc.stderr


# The original 1.1.0 sdist's config/package-managers.ini: its section names and command strings
# (comments left out), to show that its file loads and that test configurations naming its
# sections work unchanged.
ORIGINAL_SECTIONS = [
    ("pacman", "pacman", "sudo %e -S", "sudo %e -Q /var/cache/pacman/pkg/%p-%v-*", "%e -Ssq", "%p"),
    ("pip", "pip", "%e install --user", "%e install --user %p==%v", "%e search %s | grep '^%s' | cut -d ' ' -f 1,2",
     "%p (%v)"),
    ("pip-root", "pip", "sudo %e install", "sudo %e install %p==%v", "%e search %s | grep '^%s' | cut -d ' ' -f 1,2",
     "%p (%v)"),
    ("pip2", "pip2", "%e install --user", "install --user %p==%v", "%e search %s | grep '^%s' | cut -d ' ' -f 1,2",
     "%p (%v)"),
    ("pip2-root", "pip2", "sudo %e install", "sudo %e install %p==%v",
     "%e search %s | grep '^%s' | cut -d ' ' -f 1,2", "%p (%v)"),
    ("pip3", "pip3", "%e install --user", "%e install --user %p==%v",
     "%e search %s | grep '^%s' | cut -d ' ' -f 1,2", "%p (%v)"),
    ("pip3-root", "pip3", "sudo %e install", "sudo %e install %p==%v",
     "%e search %s | grep '^%s' | cut -d ' ' -f 1,2", "%p (%v)"),
    ("aptitude", "aptitude", "sudo %e -y install", "sudo %e -y install %p-%v",
     "%e search -q=2 %s | awk '{if ($2 == \"A\") {print $3} else {print $2}}'", "%p"),
    ("apt-get", "apt-get", "sudo %e -y install", "sudo %e -y install %p-%v",
     "apt-cache search -n %s | awk -F ' - ' '{print $2}'", "%p"),
]


def original_config(path):
    lines = []
    for key, exe, install, install_version, search, fmt in ORIGINAL_SECTIONS:
        lines += ["[%s]" % key, "name = %s" % key, "exec = %s" % exe, "install = %s" % install,
                  "install_version = %s" % install_version, "search = %s" % search, "result_fmt = %s" % fmt, ""]
    path.write_text("\n".join(lines))
    return str(path)


def test_the_original_tools_config_loads_and_its_pip3_section_works(pyz, pysim):
    config_file = original_config(pysim["tmp"] / "package-managers.ini")
    listed = run_pm(find_python("newest"), pyz, ["managers", "--pck-mgr-configs", config_file, "--json"], pysim["env"])
    assert listed.returncode == 0, listed.stderr
    assert set(r["key"] for r in json.loads(listed.stdout)) >= set(s[0] for s in ORIGINAL_SECTIONS)
    with open(pysim["config"], "w") as handle:
        handle.write(PIP_CONFIG.replace("= pip\n", "= pip3\n").format(out=str(pysim["tmp"] / "installed")))
    proc = migrate(pyz, pysim, "--yes", "--pck-mgr-configs", config_file)
    assert proc.returncode == 0, proc.stderr
    result, attempt = last_result(pysim)
    assert dict((r["requirement"], r["package"]) for r in result["packages"] if r["status"] == "installed") == \
        {"tinycalc": "pip3:tinycalc=1.0"}
    with open(os.path.join(attempt, "commands.log")) as handle:
        log = handle.read()
    assert "--user" not in log and "sudo" not in log and os.path.join(attempt, "venv", "bin", "python") + " -m pip" in log


def test_a_malformed_section_names_file_section_and_key(tmp_path):
    path = tmp_path / "bad.ini"
    path.write_text("[mine]\nname = mine\nsearch = mine find %s\nresult_fmt = %p\n")
    with pytest.raises(pm.PmError) as caught:
        pm.load_managers(pm.Store.default(), [str(path)])
    assert "no 'install' in [mine] of %s" % path in caught.value.what
    path.write_text("[mine]\nname = mine\nsearch = x\ninstall = x\nresult_fmt = %v\n")
    with pytest.raises(pm.PmError) as caught:
        pm.load_managers(pm.Store.default(), [str(path)])
    assert "result_fmt in [mine]" in caught.value.what


def test_candidates_rank_exact_and_mapped_names_first_then_the_closest_version():
    class Fake(object):
        key, family = "apt", "apt"

        def search(self, expr, log=None):
            return {"zlib": [("zlib1g", "1:1.2.13.dfsg-1"), ("zlib1g-dev", "1:1.2.13.dfsg-1"), ("lua-zlib", "1.2-3")],
                    "zlib1g-dev": [("zlib1g-dev", "1:1.2.13.dfsg-1")]}.get(expr, [])

    found = pm.find_candidates(pm.Requirement("zlib", "1.2.13"), [Fake()])
    assert [(c.package, c.rank) for c in found][:2] == [("zlib1g-dev", 0), ("zlib1g", 3)]
    assert pm.version_distance("1:1.2.13.dfsg-1", "1.2.13") < pm.version_distance("1.3.1-2", "1.2.13")
    assert pm.version_distance("1.2.11", "1.2.13") < pm.version_distance("1.1.0", "1.2.13")


def test_requirements_from_the_bundle_are_never_trusted_as_shell_text():
    reqs = pm.requirements_of([{"name": "ok-name", "version": "1"}, {"name": "x; rm -rf /", "version": "1"},
                               {"name": "conda", "version": "24"}, {"name": "_libgcc_mutex"}],
                              pm.EnvFile(pip=["pipped==2", "y==1; rm -rf /", "$(reboot)"]))
    assert [r.name for r in reqs] == ["ok-name", "pipped"]
    manager = pm.load_managers(pm.Store.default())["pip"]
    assert "'a b'" in manager.command(manager.install_cmd, "a b")


def test_a_requirement_found_nowhere_can_abort_the_migration(pyz, pysim):
    flags, _ = with_site_manager(pysim, [])
    proc = migrate(pyz, pysim, *flags, stdin="a\n")
    assert proc.returncode == 1
    assert "migration aborted: nothing provides oddlib" in proc.stderr
    result, _ = last_result(pysim)
    assert result["status"] == "error"


def test_the_stores_own_config_file_overrides_builtins(tmp_path, monkeypatch):
    monkeypatch.setenv("PM_HOME", str(tmp_path))
    (tmp_path / "config").mkdir()
    own = tmp_path / "config" / "package-managers.ini"
    own.write_text("[pip]\nname = our pip\nexec = pip3\nsearch = %e index versions %s\nresult_fmt = %p (%v)\n"
                   "install = %e install\n[site-mirror]\nname = site mirror\nexec = mirror-get\nsearch = mirror-get find\n"
                   "result_fmt = %p %v\ninstall = mirror-get install\n")
    managers = pm.load_managers(pm.Store.default())
    assert managers["pip"].name == "our pip" and managers["pip"].source == str(own)
    assert managers["site-mirror"].command(managers["site-mirror"].install_cmd, "zlib") == "mirror-get install zlib"
    assert not managers["site-mirror"].available()


def test_python_requirements_match_only_python_packages_of_system_managers():
    class Fake(object):
        key, family = "apt", "apt"

        def search(self, expr, log=None):
            return [("libpanel-dev", "6.4"), ("python3-panel", "1.2.3"), ("panel", "0.1")]

    python_req = pm.Requirement("panel", "1.2.3", "pyhd8ed1ab_0")
    assert python_req.python and pm.Requirement("numpy", "1.26", "py312h8753938_0").python
    assert not pm.Requirement("zlib", "1.2.13", "h4ab18f5_6").python
    assert [c.package for c in pm.find_candidates(python_req, [Fake()])] == ["python3-panel"], \
        "apt's 'panel' (like its Perl 'markdown') is no Python package, however exact the name"
    assert "libpanel-dev" in [c.package for c in pm.find_candidates(pm.Requirement("panel", "6.4"), [Fake()])]


def without_records(members, manifest):
    del members["python-dists.json"]
    del manifest["members"]["python-dists.json"]


def with_pip_section(bundle, out, entries):
    """env.yml listing packages pip installed (real conda exports them as a 'pip:' list; the
    conda stand-in has no pip), before its closing 'prefix:' line."""
    def add(members, manifest):
        text, prefix = members["env.yml"].decode().split("prefix:")
        members["env.yml"] = (text + "  - pip:\n" + "".join("    - %s\n" % e for e in entries) + "prefix:"
                              + prefix).encode()
    return rewrite_bundle(bundle, out, add)


def test_what_pip_installed_on_the_base_is_required_too_in_a_bundle_without_records(pyz, pysim):
    """A bundle packed before pm recorded the Python distributions: env.yml's pip list is read."""
    bundle = with_pip_section(pysim["bundle"], str(pysim["tmp"] / "with-pip.zip"),
                              ["gridkit==0.5", "TinyCalc==1.0", "git+https://example.org/x.git"])
    bundle = rewrite_bundle(bundle, str(pysim["tmp"] / "older.zip"), without_records)
    proc = migrate(pyz, dict(pysim, bundle=bundle), "--yes")
    assert proc.returncode == 0, proc.stderr
    assert "the pip entry 'git+https://example.org/x.git' is not NAME==VERSION" in proc.stderr
    result, _ = last_result(pysim)
    rows = [(r["requirement"], r["status"], r.get("package")) for r in result["packages"]]
    assert ("gridkit", "installed", "pip:gridkit=0.5") in rows
    assert [r[0].lower() for r in rows].count("tinycalc") == 1  # conda's tinycalc and pip's TinyCalc are one


def test_without_the_bases_python_here_the_venv_uses_pms_own_and_says_so(pyz, pysim):
    def python_399(members, manifest):
        members["conda-list.json"] = members["conda-list.json"].replace(b'"version": "3.11.7"', b'"version": "3.99.1"')
    bundle = rewrite_bundle(pysim["bundle"], str(pysim["tmp"] / "py399.zip"), python_399)
    proc = migrate(pyz, dict(pysim, bundle=bundle), "--yes", version="3.6")
    assert proc.returncode == 0, proc.stderr
    assert "note: the base ran Python 3.99.1 and this machine has no working python3.99 (PATH, pyenv, uv): the " \
           "software's virtual environment uses Python 3.6" in proc.stderr
    result, attempt = last_result(pysim)
    assert result["venv_python"] == find_python("3.6")


def test_result_fmt_is_the_regexp_the_original_documents(tmp_path):
    """A real shell search (printf) read through each documented form of result_fmt."""
    config = tmp_path / "mine.ini"
    sections = {"spaced": r"%p\s+%v", "plain": "%p %v", "parens": "%p (%v)", "bad": "%p [%v"}
    config.write_text("".join(
        "[%s]\nname = %s\nexec = sh\nsearch = printf 'tinycalc   1.0\\ntinycalc (1.1)\\n'\nresult_fmt = %s\n"
        "install = true\n" % (key, key, fmt) for key, fmt in sections.items()
        if key != "bad"))
    managers = pm.load_managers(pm.Store(str(tmp_path)), [str(config)])
    assert managers["spaced"].search("tinycalc") == [("tinycalc", "1.0"), ("tinycalc", "(1.1)")]
    assert managers["plain"].search("tinycalc") == [("tinycalc", "1.0"), ("tinycalc", "(1.1)")]
    assert managers["parens"].search("tinycalc") == [("tinycalc", "1.1")]
    config.write_text("[bad]\nname = bad\nexec = sh\nsearch = true\nresult_fmt = %p [%v\ninstall = true\n")
    with pytest.raises(pm.PmError) as caught:
        pm.load_managers(pm.Store(str(tmp_path)), [str(config)])
    assert "is not a regexp" in caught.value.what


def test_the_original_tools_shipped_config_gives_way_to_pms_own_sections(pyz, pysim):
    """platform-migrator 1.1.0's pip install writes its package-managers.ini into the store's config/.
    As shipped, its pip2 section installs with coreutils `install`; an edited section still wins."""
    os.makedirs(os.path.join(pysim["home"], "config"))
    shipped = original_config(pysim["tmp"] / "shipped.ini")
    store_file = os.path.join(pysim["home"], "config", "package-managers.ini")
    with open(shipped) as source, open(store_file, "w") as target:
        target.write(source.read())
    tools = pysim["tmp"] / "tools"
    tools.mkdir()
    os.symlink(os.path.join(os.path.dirname(find_python("newest")), "pip3"), str(tools / "pip2"))
    env = dict(pysim["env"], PATH=str(tools) + os.pathsep + pysim["env"]["PATH"], PM_HOME=pysim["home"])
    with open(pysim["config"], "w") as handle:
        handle.write(PIP_CONFIG.replace("= pip\n", "= pip2\n").format(out=str(pysim["tmp"] / "installed")))
    args = ["migrate", "pysim", pysim["config"], "--bundle", pysim["bundle"], "--yes"]
    proc = run_pm(find_python("newest"), pyz, args, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("holds platform-migrator 1.1.0's sections") == 1
    result, _ = last_result(pysim)
    assert {"tinycalc": "pip2:tinycalc=1.0"} == dict((r["requirement"], r["package"]) for r in result["packages"]
                                                     if r["status"] == "installed")
    with open(store_file) as handle:
        edited = handle.read().replace("install_version = install --user %p==%v", "install_version = %e install %p==%v")
    with open(store_file, "w") as handle:
        handle.write(edited)
    listed = json.loads(run_pm(find_python("newest"), pyz, ["managers", "--json"], env).stdout)
    assert dict((r["key"], r["source"]) for r in listed)["pip2"] == store_file, "the edited section is used"


def test_concurrent_migrations_keep_their_own_attempts_and_every_remembered_choice(pyz, pysim):
    """Four migrations of one software at once: three into their own output_dir, the fourth into the
    first's; each attempt whole, exactly one install per target, no remembered choice lost."""
    store_folder = os.path.join(pysim["home"], "pysim")
    os.makedirs(store_folder)
    with open(os.path.join(store_folder, "choices.json"), "w") as handle:
        json.dump({"otherlib": "skip"}, handle)  # a requirement of an older revision
    configs = []
    for n in range(4):
        config = pysim["tmp"] / ("pysim-%d.ini" % n)
        config.write_text(PIP_CONFIG.format(out=str(pysim["tmp"] / ("out-%d" % min(n, 2)))))
        configs.append(str(config))
    args = lambda config: [find_python("newest"), pyz, "migrate", "pysim", config, "--bundle", pysim["bundle"],
                           "--yes"]
    runs = [subprocess.Popen(args(config), env=pysim["env"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, universal_newlines=True) for config in configs]
    outcomes = [(run.wait(300), run.stderr.read()) for run in runs]
    for run in runs:
        run.stdout.close()
        run.stderr.close()
    codes = sorted(code for code, _ in outcomes)
    assert codes == [0, 0, 0, 2], outcomes
    assert [err for code, err in outcomes if code == 2][0].strip().endswith(
        "exists and is not empty %s pass --force to replace it, or change output_dir" % pm.DASH)
    results = [read_result(a) for a in attempt_dirs(pysim["home"], "pysim")]
    assert len(set(r["id"] for r in results)) == len(results)
    statuses = sorted(r["status"] for r in results)
    # refused at the install (its tests ran first), or before any work when the first install was already done
    assert statuses in (["error", "passed", "passed", "passed"], ["passed", "passed", "passed"]), statuses
    for refused in [r for r in results if r["status"] == "error"]:
        assert refused["tests"] and all(t["status"] == "passed" for t in refused["tests"]), "its tests stay recorded"
    for n in range(3):
        assert os.path.isfile(str(pysim["tmp"] / ("out-%d" % n) / "pysim" / "check.py"))
        assert [f for f in os.listdir(str(pysim["tmp"] / ("out-%d" % n))) if f.startswith(".pm-")] == []
    with open(os.path.join(store_folder, "choices.json")) as handle:
        choices = json.load(handle)
    assert choices == {"otherlib": "skip"}, "pip's pins are the base's versions, no choice to remember"


def test_the_installed_software_runs_with_its_tests_packages_by_the_one_command_printed(pyz, pysim):
    """The original pip-installed with --user, so the software ran after a migration; pm's packages
    stay in the attempt's venv, and the summary gives the command that uses them."""
    proc = migrate(pyz, pysim, "--yes")
    assert proc.returncode == 0, proc.stderr
    result, attempt = last_result(pysim)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("to run it: ")]
    assert len(lines) == 1, proc.stdout
    command = lines[0][len("to run it: "):]
    assert command == ". %s && cd %s" % (os.path.join(attempt, "venv", "bin", "activate"),
                                         os.path.join(str(pysim["tmp"]), "installed", "pysim"))
    assert result["activate"] == command.split(" && cd ")[0]
    clean = {"PATH": "/usr/bin:/bin", "HOME": pysim["env"]["HOME"]}
    ran = subprocess.run(["/bin/sh", "-c", command + " && python check.py"], env=clean, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
    assert ran.returncode == 0 and "tinycalc 1.0 from %s" % os.path.join(attempt, "venv") in ran.stdout, ran.stdout


def test_a_remembered_choice_for_a_manager_not_used_here_is_not_the_default(pyz, pysim):
    flags, _ = with_site_manager(pysim, ["oddlib-0.1"])
    store_folder = os.path.join(pysim["home"], "pysim")
    os.makedirs(store_folder)
    with open(os.path.join(store_folder, "choices.json"), "w") as handle:
        json.dump({"oddlib": "apt:oddlib=0.1"}, handle)  # from a run that listed apt
    proc = migrate(pyz, pysim, *flags, stdin="\n")  # oddlib: the default
    assert proc.returncode == 0, proc.stderr
    assert "the earlier choice apt:oddlib=0.1 is for apt, which this configuration does not use here" in proc.stderr
    assert "choice [1]:" in proc.stderr and "choice [apt:" not in proc.stderr
    result, _ = last_result(pysim)
    assert dict((r["requirement"], r.get("package")) for r in result["packages"])["oddlib"] == "site:oddlib=0.1"
    again = migrate(pyz, pysim, "--yes", "--force", *flags)
    assert again.returncode == 0 and "reusing the earlier choice site:oddlib=0.1" in again.stderr, again.stderr


def test_a_choice_whose_install_failed_is_not_remembered(pyz, pysim):
    flags, tree = with_site_manager(pysim, ["oddlib-0.1"])
    ini = pysim["tmp"] / "site.ini"
    ini.write_text(ini.read_text().replace("install = touch", "install = false && touch")
                   .replace("install_version = touch", "install_version = false && touch"))
    proc = migrate(pyz, pysim, "--yes", *flags)
    assert proc.returncode == 0, proc.stderr  # the tests need tinycalc only
    result, _ = last_result(pysim)
    assert dict((r["requirement"], r["status"]) for r in result["packages"])["oddlib"] == "failed"
    choices = os.path.join(pysim["home"], "pysim", "choices.json")
    assert not os.path.exists(choices) or "oddlib" not in json.load(open(choices))
    again = migrate(pyz, pysim, "--yes", "--force", *flags)
    assert "reusing the earlier choice" not in again.stderr, again.stderr


def test_a_new_package_manager_family_is_one_table_entry(tmp_path, monkeypatch):
    """Void Linux's xbps, known to pm by one FAMILIES entry and its INI section: its sections are of its
    family, its name variants are tried, and a Python requirement matches only its Python packages."""
    monkeypatch.setitem(pm.FAMILIES, "xbps", pm.Family(("xbps", "xbps-install"), variants=("%s-devel", "python3-%s"),
                                                       python_form="python3-%s", python_prefixes=("python3-",),
                                                       needs_root=True))
    path = tmp_path / "xbps.ini"
    path.write_text("[void]\nname = XBPS\nexec = xbps-install\nsearch = xbps-query -Rs %s\nresult_fmt = %p %v\n"
                    "install = %e -y %p\n")
    manager = pm.load_managers(pm.Store.default(), [str(path)])["void"]
    assert manager.family == "xbps" and pm.family_of(manager).needs_root
    assert pm.name_variants("python-zstd", "xbps") == ["python3-zstd", "zstd-devel"]

    class Fake(object):
        key, family = "void", "xbps"

        def search(self, expr, log=None):
            return [("zstd", "1.5.6_1"), ("zstd-devel", "1.5.6_1"), ("python3-zstd", "1.5.5_2")]

    assert [c.package for c in pm.find_candidates(pm.Requirement("zstd", "1.5.5", "py312h1_0"), [Fake()])] == \
        ["python3-zstd"]
    assert [c.package for c in pm.find_candidates(pm.Requirement("zstd", "1.5.6"), [Fake()])][:2] == \
        ["zstd", "zstd-devel"]


def test_requirement_rows_of_older_attempts_are_read_and_written_as_they_were():
    """result.json's rows keep exactly their keys (a skipped row has no version, a pip row names its conda
    package even when none), so an attempt written by an older pm reads, and writes back, the same."""
    older = [{"requirement": "oddlib", "status": "skipped", "base_version": None, "why": "nothing found"},
             {"requirement": "zlib", "status": "installed", "package": "apt:zlib1g-dev=1:1.2.13", "why": "chosen",
              "base_version": "1.2.13", "version": "1:1.2.13", "drift": True},
             {"requirement": "numlite", "status": "failed", "base_version": "2.0", "version": None, "package": None,
              "why": "pip finds no numlite==2.0 here", "drift": False, "conda": "numlite"}]
    rows = [pm.RequirementRow.from_json(row) for row in older]
    assert [row.to_json() for row in rows] == older
    assert [row.report_json()["how"] for row in rows] == ["nothing found", "apt:zlib1g-dev=1:1.2.13, chosen",
                                                          "pip finds no numlite==2.0 here"]
    assert rows[1].report_json()["drift"] is True and rows[0].report_json()["drift"] is False
