"""Modulefiles: with modulefiles = DIR in the test configuration, a passed install leaves
DIR/NAME/VERSION.lua (Lmod) and DIR/NAME/VERSION (Tcl). Real Lmod (Debian's lmod, installed with
apt-get) and real Environment Modules (Debian's environment-modules, unpacked from its .deb into a
folder: the two packages conflict as installed packages) load them in bash: the software's test
runs as pm's test did, with what conda's activate.d script sets, and `module unload` takes it all
away. The environment is made by pm's own linker (no conda on the target) from a real conda base, by
real conda 25.11.1 on the target (the conda route), or by pip in the software's own virtual
environment (the pip route); a later pass and prune remove the modulefiles of the environments they
remove."""
import glob
import os
import shutil
import subprocess

import pytest

import channels
import realconda
from conftest import attempt_dirs, find_python, no_conda_env, read_result, run_pm
import test_managers

pysim_bundle, pysim = test_managers.pysim_bundle, test_managers.pysim  # the pip route's base and target (fixtures)
LMOD_INIT = "/usr/share/lmod/lmod/init/bash"
CHECK = """set -e
[ "$(hello)" = "$CONDA_PREFIX/share/hello" ]
tinycli | grep -q "tinycli ok"
[ "$MODSIM_DATA" = "$CONDA_PREFIX/share/modsim" ]
echo "modsim check ok"
"""
ACTIVATE = b'export MODSIM_DATA="$CONDA_PREFIX/share/modsim"\n'
CONFIG = ("[modsim]\noutput_dir = {out}\npackage_managers = conda\ntests = check\nmodulefiles = {mods}\n"
          "[test_check]\nexec = sh check.sh\n")


def apt_get(*args):
    proc = subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300"] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail("apt-get %s failed (these tests need Debian's apt and root):\n%s" % (" ".join(args),
                                                                                        proc.stdout[-2000:]))


@pytest.fixture(scope="session")
def lmod():
    """Debian's lmod, installed (apt-get install -y lmod) when it is not yet."""
    if not os.path.isfile(LMOD_INIT):
        apt_get("install", "-y", "lmod")
    assert os.path.isfile(LMOD_INIT), "apt-get installed lmod, and there is no %s" % LMOD_INIT
    return "source %s" % LMOD_INIT


@pytest.fixture(scope="session")
def tcl_modules(tmp_path_factory):
    """Debian's environment-modules, unpacked from its .deb (apt-get download) into a folder."""
    folder = str(tmp_path_factory.mktemp("environment-modules"))
    proc = subprocess.run(["apt-get", "download", "environment-modules"], cwd=folder, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
    debs = glob.glob(os.path.join(folder, "environment-modules_*.deb"))
    if proc.returncode != 0 or not debs:
        pytest.fail("apt-get download environment-modules failed:\n%s" % proc.stdout[-2000:])
    tree = os.path.join(folder, "tree")
    subprocess.run(["dpkg-deb", "-x", debs[0], tree], check=True)
    modulecmd = glob.glob(os.path.join(tree, "usr", "lib", "*", "modulecmd.tcl")) or \
        glob.glob(os.path.join(tree, "usr", "lib", "modulecmd.tcl"))
    tclsh = shutil.which("tclsh8.6") or shutil.which("tclsh")
    if not modulecmd or not tclsh:
        pytest.fail("no modulecmd.tcl in the unpacked environment-modules, or no tclsh (apt-get install tcl8.6)")
    # what the package's init/bash does, with the unpacked tree's paths
    return 'export MODULESHOME=%s; eval "$(%s %s bash autoinit)"' % (
        os.path.join(tree, "usr", "share", "modules"), tclsh, modulecmd[0])


@pytest.fixture(scope="module")
def modbase(tmp_path_factory, real_condas, pyz):
    """A base made by real conda from the linker channel plus a package with an activate.d script,
    packed --with-packages."""
    work = tmp_path_factory.mktemp("modules-base")
    channel = channels.linker_channel(str(work / "channel"), find_python("newest"))
    channels.make_linked_package(channel, "noarch", "modsim-activate", "1.0", "0", [],
                                 {"etc/conda/activate.d/modsim.sh": ACTIVATE, "share/modsim": b"data\n"},
                                 noarch="generic")
    channels.index_channel(channel)
    base = realconda.RealCondaSite(real_condas["25.11.1"], str(work / "base"), [channel])
    base.create("modsim-env", ["hello", "tinycli", "modsim-activate"])
    software = work / "src" / "modsim"
    software.mkdir(parents=True)
    (software / "check.sh").write_text(CHECK)
    bundle = str(work / "modsim.zip")
    proc = run_pm(find_python("newest"), pyz, ["pack", "-d", str(software), "-e", "modsim-env", "-o", bundle,
                                               "--yes", "--with-packages"], base.env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return bundle



def migrate(pyz, bundle, tmp_path, *extra):
    config = tmp_path / "modsim.ini"
    config.write_text(CONFIG.format(out=str(tmp_path / "installed"), mods=str(tmp_path / "modulefiles")))
    return run_pm(find_python("newest"), pyz, ["migrate", "modsim", str(config), "--bundle", bundle, "--no-conda"]
                  + list(extra), no_conda_env(tmp_path), timeout=300)


def in_bash(init, script, tmp_path):
    env = dict(no_conda_env(tmp_path), TERM="dumb")
    return subprocess.run(["bash", "--noprofile", "--norc", "-c", init + "\n" + script], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)


LOAD = """set -e
module use {mods}
module load modsim
echo "loaded PATH=$PATH"
echo "loaded CONDA_PREFIX=$CONDA_PREFIX"
cd {installed} && sh check.sh
module unload modsim
echo "unloaded PATH=$PATH"
echo "unloaded MODSIM_DATA=${{MODSIM_DATA-unset}} CONDA_PREFIX=${{CONDA_PREFIX-unset}}"
"""


@pytest.mark.parametrize("system", ["lmod", "tcl_modules"])
def test_module_load_runs_the_installed_software_as_its_test_did_and_unload_removes_it(system, request, pyz,
                                                                                      modbase, tmp_path):
    init = request.getfixturevalue(system)
    proc = migrate(pyz, modbase, tmp_path)
    assert proc.returncode == 0, proc.stderr
    attempt = attempt_dirs(str(tmp_path / "store"), "modsim")[-1]
    result = read_result(attempt)
    version = os.path.basename(attempt)  # no Python record of the software, a bundle outside the store
    mods = str(tmp_path / "modulefiles")
    assert sorted(result["modulefiles"]) == [os.path.join(mods, "modsim", version),
                                             os.path.join(mods, "modsim", version + ".lua")]
    assert "module use %s && module load modsim/%s" % (mods, version) in proc.stdout + proc.stderr
    lua = open(os.path.join(mods, "modsim", version + ".lua")).read()
    assert 'source_sh("bash", "%s/etc/conda/activate.d/modsim.sh")' % result["env_prefix"] in lua
    assert 'conflict("modsim")' in lua and "tests passed: check" in lua
    assert "installed in: %s" % result["installed_to"] in lua
    tcl = open(os.path.join(mods, "modsim", version)).read()
    assert tcl.startswith("#%Module") and "setenv MODSIM_DATA" in tcl and "conflict modsim" in tcl
    installed = result["installed_to"]
    bin_dir = os.path.join(result["env_prefix"], "bin")
    proc = in_bash(init, LOAD.format(mods=mods, installed=installed), tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "modsim check ok" in lines
    assert "loaded CONDA_PREFIX=%s" % result["env_prefix"] in lines
    loaded = [l for l in lines if l.startswith("loaded PATH=")][0]
    unloaded = [l for l in lines if l.startswith("unloaded PATH=")][0]
    assert loaded.split("=", 1)[1].split(":")[0] == bin_dir
    assert bin_dir not in unloaded.split("=", 1)[1].split(":")
    assert "unloaded MODSIM_DATA=unset CONDA_PREFIX=unset" in lines
    proc = in_bash(init, "module use %s\nmodule whatis modsim 2>&1; module help modsim 2>&1" % mods, tmp_path)
    assert "migrated by pm from" in proc.stdout + proc.stderr and "tests passed: check" in proc.stdout + proc.stderr


def load_and_unload(systems, request, mods, name, script, tmp_path):
    """Under each module system: module load NAME runs script (in the install), module unload takes the
    environment's bin off PATH again; the output of each run."""
    outputs = []
    for system in systems:
        body = ("set -e\nmodule use {mods}\nmodule load {name}\necho \"loaded PATH=$PATH\"\n{script}\n"
                "module unload {name}\necho \"unloaded PATH=$PATH\"\n"
                "echo \"unloaded CONDA_PREFIX=${{CONDA_PREFIX-unset}} VIRTUAL_ENV=${{VIRTUAL_ENV-unset}}\"\n")
        proc = in_bash(request.getfixturevalue(system), body.format(mods=mods, name=name, script=script), tmp_path)
        assert proc.returncode == 0, (system, proc.stdout + proc.stderr)
        lines = proc.stdout.splitlines()
        assert "unloaded CONDA_PREFIX=unset VIRTUAL_ENV=unset" in lines, (system, proc.stdout)
        outputs.append((lines, [l.split("=", 1)[1].split(":") for l in lines if l.startswith(("loaded PATH=",
                                                                                               "unloaded PATH="))]))
    return outputs


CONDA_CHECK = '[ "$(hello)" = "$CONDA_PREFIX/share/hello" ] && [ "$MODSIM_DATA" = "$CONDA_PREFIX/share/modsim" ] ' \
              '&& echo "modsim check ok"'


def test_module_load_runs_what_the_conda_route_installed_and_unload_removes_it(request, pyz, modbase, real_site,
                                                                              tmp_path):
    """The same bundle on a target with real conda 25.11.1: conda makes the environment (from the carried
    packages), and its modulefiles work under Lmod and Environment Modules alike."""
    site = real_site("25.11.1", "target", home=str(tmp_path / "store"))
    config = tmp_path / "modsim.ini"  # tinycli is left out: the channel's python has no bin/pythonX.Y for its shebang
    config.write_text(CONFIG.format(out=str(tmp_path / "installed"), mods=str(tmp_path / "modulefiles")).replace(
        "exec = sh check.sh", "exec = " + CONDA_CHECK))
    proc = run_pm(find_python("newest"), pyz, ["migrate", "modsim", str(config), "--bundle", modbase],
                  site.env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = read_result(attempt_dirs(str(tmp_path / "store"), "modsim")[-1])
    assert result["level"] != "carried"  # conda made it, as the install's own environment in the store
    assert result["env_prefix"].startswith(str(tmp_path / "store" / "modsim" / "envs"))
    bin_dir = os.path.join(result["env_prefix"], "bin")
    script = "cd %s && %s" % (result["installed_to"], CONDA_CHECK)
    for lines, (loaded, unloaded) in load_and_unload(["lmod", "tcl_modules"], request, str(tmp_path / "modulefiles"),
                                                     "modsim", script, tmp_path):
        assert "modsim check ok" in lines and loaded[0] == bin_dir and bin_dir not in unloaded


def test_module_load_runs_what_the_pip_route_installed_and_unload_removes_it(request, pyz, pysim, tmp_path):
    """Without conda in package_managers: pip installs into the software's own virtual environment, and
    module load puts that environment's python first, as pm's test had it."""
    config = tmp_path / "pysim-modules.ini"
    with open(pysim["config"]) as handle:
        config.write_text(handle.read().replace("tests = check\n", "tests = check\nmodulefiles = %s\n"
                                                % (tmp_path / "modulefiles")))
    proc = run_pm(find_python("newest"), pyz, ["migrate", "pysim", str(config), "--bundle", pysim["bundle"],
                                               "--yes"], pysim["env"], timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = read_result(attempt_dirs(pysim["home"], "pysim")[-1])
    venv = os.path.join(os.path.dirname(result["tests"][0]["log"]), "venv")
    script = "cd %s && python check.py" % result["installed_to"]
    for lines, (loaded, unloaded) in load_and_unload(["lmod", "tcl_modules"], request, str(tmp_path / "modulefiles"),
                                                     "pysim", script, tmp_path):
        assert "tinycalc 1.0 from %s" % os.path.join(venv, "lib") in "\n".join(lines)
        assert loaded[0] == os.path.join(venv, "bin") and os.path.join(venv, "bin") not in unloaded


def test_a_later_pass_and_prune_remove_the_modulefiles_of_the_environments_they_remove(pyz, modbase, tmp_path):
    assert migrate(pyz, modbase, tmp_path).returncode == 0
    first = read_result(attempt_dirs(str(tmp_path / "store"), "modsim")[-1])
    proc = migrate(pyz, modbase, tmp_path, "--force")
    assert proc.returncode == 0, proc.stderr
    second = read_result(attempt_dirs(str(tmp_path / "store"), "modsim")[-1])
    assert not os.path.isdir(first["env_prefix"])  # the pass replaced its install and removed its environment
    assert not any(os.path.exists(p) for p in first["modulefiles"])
    assert all(os.path.isfile(p) for p in second["modulefiles"])
    shutil.rmtree(second["installed_to"])  # its install gone: prune removes the attempt, and its modulefiles
    proc = run_pm(find_python("newest"), pyz, ["prune", "modsim"], no_conda_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert not any(os.path.exists(p) for p in second["modulefiles"])
    assert os.listdir(str(tmp_path / "modulefiles" / "modsim")) == []


def test_modulefiles_must_be_an_absolute_folder(pyz, modbase, tmp_path):
    proc = migrate(pyz, modbase, tmp_path, "--modulefiles", "relative/mods")
    assert proc.returncode == 2
    assert "--modulefiles is not an absolute folder" in proc.stderr
    assert not (tmp_path / "store" / "modsim").exists()
