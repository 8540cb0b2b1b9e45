"""Real conda on both sides: 4.3.16 (on Python 2.7 and 3.6) and 25.11.1, from ../shared/real-conda.

Each round trip creates the base environment with real conda, packs it with pm.pyz under a real
interpreter, migrates it on a target with another real conda, runs the example's own tests there
and installs it. Every site has its own HOME, condarc, envs dir and package cache.
"""
import json
import os
import shutil
import signal
import subprocess
import zipfile

import pytest

import channels
import realconda
from realconda import conda_meta
from conftest import ROOT, attempt_dirs, find_python, read_result, rewrite_bundle, run_pm, wait_until

with open(os.path.join(ROOT, "examples", "heatsim-tests.ini")) as _handle:
    CONFIG = _handle.read()

# base conda, how the environment is given to pack, the Python that packs, target conda
MATRIX = [
    ("4.3.16-py2.7", "name", "2.7", "25.11.1"),
    ("4.3.16-py2.7", "active", "2.7", "4.3.16-py3.6"),
    ("4.3.16-py3.6", "prefix-outside", "newest", "25.11.1"),
    ("4.3.16-py3.6", "prefix-inside", "2.7", "4.3.16-py2.7"),
    ("25.11.1", "prefix-outside", "2.7", "4.3.16-py3.6"),
    ("25.11.1", "name", "newest", "25.11.1"),
    ("25.11.1", "active", "3.6", "4.3.16-py2.7"),
]


def write_config(tmp_path, text=CONFIG):
    path = tmp_path / "tests.ini"
    path.write_text(text.format(out=str(tmp_path / "installed")))
    return str(path)


def make_base_env(site, how, tmp_path):
    """The example environment on the base; returns (pack's -e argument or None, env for pack, prefix)."""
    if how == "prefix-outside":
        prefix = site.create(str(tmp_path / "elsewhere" / "heatsim-env"), channels.CYCLE_SPECS)
        return prefix, site.env(), prefix
    prefix = site.create("heatsim-env", channels.CYCLE_SPECS)
    if how == "name":
        return "heatsim-env", site.env(), prefix
    if how == "prefix-inside":
        return prefix, site.env(), prefix
    return None, site.activated(prefix), prefix


def export_as_conda_writes_it(site, prefix):
    """What this conda's own 'conda env export' prints for the prefix (4.3 takes only -n NAME)."""
    if site.version.startswith("4."):
        parent, name = os.path.split(prefix)
        return site.conda("env", "export", "-n", name, env=site.env(CONDA_ENVS_PATH=parent)).stdout
    return site.conda("env", "export", "-p", prefix).stdout


def pack(pyz, site, software, bundle, how, python, tmp_path):
    wanted, env, prefix = make_base_env(site, how, tmp_path)
    args = ["pack", "-d", software, "-o", bundle, "--yes"] + (["-e", wanted] if wanted else [])
    proc = run_pm(find_python(python), pyz, args, env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return prefix, proc


@pytest.mark.parametrize("base_key, how, python, target_key", MATRIX,
                         ids=["%s-%s-pack%s-to-%s" % case for case in MATRIX])
def test_round_trip_between_real_condas(base_key, how, python, target_key, pyz, real_site, example_software,
                                        tmp_path):
    base = real_site(base_key, "base")
    bundle = str(tmp_path / "heatsim.zip")
    prefix, packed = pack(pyz, base, example_software, bundle, how, python, tmp_path)
    assert "1 asked for" not in packed.stderr and "(3 asked for in its history)" in packed.stderr, packed.stderr

    with zipfile.ZipFile(bundle) as archive:
        manifest = json.loads(archive.read("manifest.json").decode())
        env_yml = archive.read("env.yml").decode()
        min_deps = json.loads(archive.read("min-deps.json").decode())
    assert manifest["source"]["conda"] == base.version
    assert manifest["minimal"] == ["cycle-b", "heatplot"], "one member stands for the root cycle"
    assert sorted(manifest["requested_specs"])[0].startswith("cycle-b")
    assert set(s.split("[")[0].split(" ")[0] for s in manifest["requested_specs"]) == \
        {"heatplot", "gridtools", "cycle-b"}, "the history's specs, in this conda's format"
    assert env_yml == export_as_conda_writes_it(base, prefix), "env.yml is what that conda wrote"
    listed = dict((row["name"], row) for row in json.loads(base.conda("list", "--json", "-p", prefix).stdout))
    for row in min_deps:
        expected = dict(listed[row["name"]], requested=True)
        assert row == expected, "min-deps.json rows are that conda's own 'conda list --json' rows"

    target = real_site(target_key, "target")
    python3 = find_python("newest")
    proc = run_pm(python3, pyz, ["migrate", "heatsim", write_config(tmp_path), "--bundle", bundle],
                  target.env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "ok: smoothing step" in proc.stderr and "heatplot 0.3" in proc.stderr
    (attempt,) = attempt_dirs(target.home, "heatsim")
    result = read_result(attempt)
    assert result["status"] == "passed" and result["level"] == "exact"
    assert result["env_prefix"] == os.path.join(target.home, "heatsim", "envs", os.path.basename(attempt))
    assert conda_meta(result["env_prefix"]) == conda_meta(prefix), "the same packages, versions and builds"
    assert conda_meta(target.prefix("heatsim")) == conda_meta(prefix), "the environment NAME is a copy of it"
    assert os.path.isfile(str(tmp_path / "installed" / "heatsim" / "heatsim.sh"))
    (command,) = [line[len("to run it: "):] for line in proc.stdout.splitlines() if line.startswith("to run it: ")]
    clean = dict(target.env(), PATH="/usr/bin:/bin")
    ran = subprocess.run(["/bin/sh", "-c", command + " && sh heatsim.sh 1 && heatplot --version"], env=clean,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)
    assert ran.returncode == 0 and "heatplot 0.3" in ran.stdout, command + "\n" + ran.stdout


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, real_condas, pyz):
    """One bundle packed on each base conda (4.3.16 under Python 2.7, and 25.11.1), from a channel
    that is taken away after packing, as the base's mirror is not on the target."""
    out = {}
    for key in ("4.3.16-py2.7", "25.11.1"):
        folder = tmp_path_factory.mktemp("base-" + key)
        base_channel = channels.example_channel(str(folder / "base-channel"))
        site = realconda.RealCondaSite(real_condas[key], str(folder / "site"), [base_channel])
        site.create("heatsim-env", channels.CYCLE_SPECS)
        software = str(folder / "heatsim")
        shutil.copytree(os.path.join(ROOT, "examples", "heatsim"), software)
        bundle = str(folder / "heatsim.zip")
        proc = run_pm(find_python("2.7"), pyz, ["pack", "-d", software, "-e", "heatsim-env", "-o", bundle, "--yes"],
                      site.env(), timeout=300)
        assert proc.returncode == 0, proc.stderr
        shutil.rmtree(base_channel)
        out[key] = bundle
    return out


TARGETS = ["4.3.16-py3.6", "25.11.1"]


def migrate_on(pyz, target, bundle, tmp_path):
    return run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path), "--bundle", bundle],
                  target.env(), timeout=600)


@pytest.mark.parametrize("target_key", TARGETS)
def test_a_build_the_target_channel_lacks_falls_back_to_no_builds(target_key, pyz, bundles, real_site, tmp_path):
    other = channels.example_channel(str(tmp_path / "other-builds"),
                                          builds={"gridtools": "h9_9", "libgrid": "h9_9"})
    target = real_site(target_key, "target", [other])
    proc = migrate_on(pyz, target, bundles["4.3.16-py2.7"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "gridtools" in proc.stderr, "the missing build is named"
    result = read_result(attempt_dirs(target.home, "heatsim")[0])
    assert result["level"] == "no-builds"
    assert conda_meta(result["env_prefix"])["gridtools"] == ("2.0", "h9_9")


@pytest.mark.parametrize("target_key", TARGETS)
def test_a_version_the_target_channel_lacks_falls_back_to_direct_requirements(target_key, pyz, bundles,
                                                                                real_site, tmp_path):
    older = channels.example_channel(str(tmp_path / "older"), versions={"libgrid": "1.1"})
    target = real_site(target_key, "target", [older])
    proc = migrate_on(pyz, target, bundles["25.11.1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = read_result(attempt_dirs(target.home, "heatsim")[0])
    assert result["level"] == "direct"
    assert conda_meta(result["env_prefix"])["libgrid"] == ("1.1", "h0_0")


@pytest.mark.parametrize("target_key", TARGETS)
def test_every_package_the_channel_lacks_is_named_at_once(target_key, pyz, bundles, real_site, tmp_path):
    poor = channels.example_channel(str(tmp_path / "poor"), leave_out=("heatplot", "cycle-a", "cycle-b"))
    target = real_site(target_key, "target", [poor])
    proc = migrate_on(pyz, target, bundles["4.3.16-py2.7"], tmp_path)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "lack 2 packages" in last and "heatplot" in last and "cycle-b" in last, proc.stderr
    assert "Traceback" not in proc.stderr
    result = read_result(attempt_dirs(target.home, "heatsim")[0])
    assert result["status"] == "error" and not os.path.isdir(target.prefix("heatsim"))


def run_it(target, command, then):
    """The command a report printed, in a new shell with nothing of conda on PATH, then more."""
    clean = dict(target.env(), PATH="/usr/bin:/bin")
    return subprocess.run(["/bin/sh", "-c", command + " && " + then], env=clean, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)


def printed_command(proc):
    (command,) = [line[len("to run it: "):] for line in proc.stdout.splitlines() if line.startswith("to run it: ")]
    return command


@pytest.mark.parametrize("target_key", TARGETS)
def test_every_install_keeps_its_own_environment_through_later_migrations(target_key, pyz, bundles, real_site,
                                                                          tmp_path):
    """Two installs into two output_dirs, then a third with --force into the first's: the second still
    runs with the command it printed (its own environment), and the environment named after the
    software (--env-name sim) follows the newest install."""
    target = real_site(target_key, "target")
    commands = []
    for out, extra in (("one", []), ("two", []), ("one", ["--force"])):
        config = tmp_path / ("%s.ini" % out)
        config.write_text(CONFIG.format(out=str(tmp_path / out)))
        proc = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", str(config), "--bundle",
                                                   bundles["4.3.16-py2.7"], "--env-name", "sim"] + extra,
                      target.env(), timeout=600)
        assert proc.returncode == 0, proc.stderr
        commands.append(printed_command(proc))
    first, second, third = [read_result(a) for a in attempt_dirs(target.home, "heatsim")]
    assert len(set([first["env_prefix"], second["env_prefix"], third["env_prefix"]])) == 3
    for command in commands[1:]:
        ran = run_it(target, command, "sh heatsim.sh 1 && heatplot --version && echo $CONDA_PREFIX")
        assert ran.returncode == 0 and "heatplot 0.3" in ran.stdout, command + "\n" + ran.stdout
    assert second["env_prefix"] in run_it(target, commands[1], "echo $CONDA_PREFIX").stdout
    assert not os.path.exists(first["env_prefix"]), "the first install was replaced: its environment goes"
    assert "heatplot" in conda_meta(target.prefix("sim"))
    with open(os.path.join(target.prefix("sim"), "conda-meta", "pm-made")) as handle:
        assert json.load(handle)["copy_of"] == third["env_prefix"], "NAME follows the newest install"
    history = json.loads(run_pm(find_python("newest"), pyz, ["history", "heatsim", "--json"], target.env()).stdout)
    assert [row["environment_gone"] for row in history] == [None, None, None], history


@pytest.mark.parametrize("target_key", TARGETS)
def test_an_environment_named_so_that_pm_did_not_make_is_left_alone(target_key, pyz, bundles, real_site, tmp_path):
    target = real_site(target_key, "target")
    mine = target.create("sim", ["libgrid"])
    before = conda_meta(mine)
    args = ["migrate", "heatsim", write_config(tmp_path), "--bundle", bundles["4.3.16-py2.7"], "--env-name", "sim"]
    proc = run_pm(find_python("newest"), pyz, args, target.env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "the conda environment sim (%s) was not made by pm, so pm leaves it" % mine in proc.stderr
    assert conda_meta(mine) == before
    ran = run_it(target, printed_command(proc), "heatplot --version")
    assert ran.returncode == 0 and "heatplot 0.3" in ran.stdout, ran.stdout
    # an environment that cannot be built leaves nothing behind
    unbuildable = rewrite_bundle(bundles["4.3.16-py2.7"], str(tmp_path / "unbuildable.zip"), needs_nosuchpkg)
    failed = run_pm(find_python("newest"), pyz, args[:3] + ["--bundle", unbuildable] + args[5:] + ["--force"],
                    target.env(), timeout=600)
    assert failed.returncode == 1 and "nosuchpkg" in failed.stderr, failed.stderr
    assert not os.path.exists(read_result(attempt_dirs(target.home, "heatsim")[-1]).get("env_prefix") or
                              os.path.join(target.home, "heatsim", "envs",
                                           os.path.basename(attempt_dirs(target.home, "heatsim")[-1])))
    assert conda_meta(mine) == before


def test_history_says_an_environment_is_gone_and_repair_brings_it_back(pyz, bundles, real_site, tmp_path):
    """An install's environment removed by hand: history says so (and names the fix), 'repair' migrates
    the attempt's bundle again into the same prefix, and the command the first report printed runs."""
    target = real_site("25.11.1", "target")
    first = migrate_on(pyz, target, bundles["25.11.1"], tmp_path)
    assert first.returncode == 0, first.stderr
    (attempt,) = attempt_dirs(target.home, "heatsim")
    prefix = read_result(attempt)["env_prefix"]
    shutil.rmtree(prefix)
    history = run_pm(find_python("newest"), pyz, ["history", "heatsim"], target.env())
    assert "environment gone: %s" % prefix in history.stdout, history.stdout
    assert "pm.pyz repair heatsim %s" % os.path.basename(attempt) in history.stdout
    assert run_it(target, printed_command(first), "heatplot --version").returncode != 0
    repaired = run_pm(find_python("newest"), pyz, ["repair", "heatsim", "--json"], target.env(), timeout=600)
    assert repaired.returncode == 0, repaired.stderr
    (row,) = json.loads(repaired.stdout)["installs"]
    assert row["status"] == "repaired" and row["environment"] == prefix and row["id"] == os.path.basename(attempt)
    ran = run_it(target, printed_command(first), "sh heatsim.sh 1 && heatplot --version")
    assert ran.returncode == 0 and "heatplot 0.3" in ran.stdout, ran.stdout
    history = json.loads(run_pm(find_python("newest"), pyz, ["history", "heatsim", "--json"], target.env()).stdout)
    assert [r["environment_gone"] for r in history] == [None, None]
    nothing = run_pm(find_python("newest"), pyz, ["repair", "heatsim"], target.env())
    assert nothing.returncode == 0 and "nothing to repair" in nothing.stderr
    removed = run_pm(find_python("newest"), pyz, ["repair", "heatsim", row["attempt"], "--remove"], target.env())
    assert removed.returncode == 0, removed.stderr
    assert not os.path.exists(str(tmp_path / "installed" / "heatsim"))
    pruned = run_pm(find_python("newest"), pyz, ["prune", "heatsim"], target.env())
    assert pruned.returncode == 0 and not os.path.exists(prefix), pruned.stdout


def needs_nosuchpkg(members, manifest):
    """A bundle whose environment needs a package no channel has."""
    members["env.yml"] = members["env.yml"].replace(b"dependencies:", b"dependencies:\n- nosuchpkg=1.0=0", 1)
    records = json.loads(members["min-deps.json"].decode()) + [{"name": "nosuchpkg", "version": "1.0"}]
    members["min-deps.json"] = json.dumps(records).encode()


@pytest.mark.parametrize("base_key", ["4.3.16-py2.7", "25.11.1"])
def test_pack_lists_a_real_condas_environments_base_first_and_asks(base_key, pyz, real_site, example_software,
                                                                    tmp_path):
    base = real_site(base_key, "base")
    prefix = base.create("heatsim-env", channels.EXAMPLE_SPECS)
    out = str(tmp_path / "chosen.zip")
    proc = run_pm(find_python("2.7"), pyz, ["pack", "-d", example_software, "-n", "heatsim", "-o", out],
                  base.env(), stdin="2\n", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "1) %s" % base.root in proc.stderr and "2) %s" % prefix in proc.stderr, proc.stderr
    with zipfile.ZipFile(out) as archive:
        assert json.loads(archive.read("manifest.json").decode())["env"]["prefix"] == prefix


# A post-link script that, when the migrate under test asks for it, says conda is linking and waits for a go.
SLOW_LINK = b"""#!/bin/sh
if [ -n "$PM_TEST_SLOW_LINK" ]; then
    touch "$PM_TEST_SLOW_LINK.started"
    n=0
    while [ ! -e "$PM_TEST_SLOW_LINK.go" ] && [ $n -lt 1200 ]; do sleep 0.1; n=$((n+1)); done
fi
"""


def runs_of(pid):
    """Processes still running that pm (PID pid) started through run_command."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open("/proc/%s/environ" % entry, "rb") as handle:
                if b"\0PM_RUN_ID=%d-" % pid in b"\0" + handle.read():
                    found.append(int(entry))
        except (OSError, ValueError):
            pass
    return found


def wait_for(path, seconds=300):
    assert wait_until(lambda: os.path.exists(path), timeout=seconds), "conda never reached the post-link script"


def slow_link_target(pyz, real_site, example_software, tmp_path):
    """(a conda 25.11.1 target, a bundle) whose environment holds slowlink: conda's link of it waits at
    PM_TEST_SLOW_LINK's gate when the migration under test sets it."""
    channel = str(tmp_path / "channel")
    channels.example_channel(channel)
    channels.make_package(channel, "noarch", "slowlink", "1.0", "0", (), {"bin/.slowlink-post-link.sh": SLOW_LINK})
    channels.index_channel(channel)
    base = real_site("25.11.1", "base", [channel])
    base.create("heatsim-env", channels.EXAMPLE_SPECS + ["slowlink"])
    bundle = str(tmp_path / "b.zip")
    proc = run_pm(find_python("newest"), pyz, ["pack", "-d", example_software, "-e", "heatsim-env", "-o", bundle,
                                               "--yes"], base.env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return real_site("25.11.1", "target", [channel]), bundle


def test_an_environment_repair_is_rebuilding_is_not_taken_for_a_leftover_by_another_migration(
        pyz, real_site, example_software, tmp_path):
    """While 'repair' has conda rebuild an install's environment (at the install's own path, an earlier
    attempt's id), a migration of the same software started beside it took that half-made folder for one
    left by a killed pm and removed it under conda. The repairing attempt records the prefix it makes."""
    target, bundle = slow_link_target(pyz, real_site, example_software, tmp_path)
    first = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path), "--bundle", bundle],
                   target.env(), timeout=600)
    assert first.returncode == 0, first.stderr
    prefix = read_result(attempt_dirs(target.home, "heatsim")[0])["env_prefix"]
    shutil.rmtree(prefix)
    gate = str(tmp_path / "gate")
    repair = subprocess.Popen([find_python("newest"), pyz, "repair", "heatsim"], env=target.env(PM_TEST_SLOW_LINK=gate),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                              start_new_session=True)
    try:
        wait_for(gate + ".started")
        assert os.path.isdir(prefix) and not os.path.exists(os.path.join(prefix, "conda-meta", "pm-made"))
        other = tmp_path / "other"
        other.mkdir()
        beside = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(other), "--bundle", bundle],
                        target.env(), timeout=600)
        assert beside.returncode == 0, beside.stderr
        assert "left unfinished" not in beside.stderr and os.path.isdir(prefix), beside.stderr
    finally:
        with open(gate + ".go", "w"):
            pass
        _, err = repair.communicate(timeout=600)
    assert repair.returncode == 0, err
    ran = run_it(target, printed_command(first), "sh heatsim.sh 1 && heatplot --version")
    assert ran.returncode == 0 and "heatplot 0.3" in ran.stdout, ran.stdout + ran.stderr


def test_ctrl_c_during_a_conda_create_removes_what_conda_made_and_the_next_run_removes_a_leftover(
        pyz, real_site, example_software, tmp_path):
    """Ctrl-C (SIGINT to pm's process group) while conda creates the attempt's environment: pm removes
    it, the earlier install's environment stays, the attempt is 'interrupted'. A pm killed outright
    (SIGKILL) leaves one: its attempt shows 'interrupted' once the process is gone, and the next run
    removes it unasked."""
    target, bundle = slow_link_target(pyz, real_site, example_software, tmp_path)
    args = [find_python("newest"), pyz, "migrate", "heatsim", write_config(tmp_path), "--bundle", bundle, "--force"]
    first = subprocess.run(args, env=target.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=600)
    assert first.returncode == 0, first.stderr
    before = conda_meta(target.prefix("heatsim"))
    envs = os.path.join(target.home, "heatsim", "envs")

    def building():
        return os.path.join(envs, os.path.basename(attempt_dirs(target.home, "heatsim")[-1]))
    gate = str(tmp_path / "gate")
    slow = target.env(PM_TEST_SLOW_LINK=gate)

    interrupted = subprocess.Popen(args, env=slow, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   universal_newlines=True, start_new_session=True)
    wait_for(gate + ".started")
    cut = building()
    assert os.path.isdir(cut)
    os.killpg(interrupted.pid, signal.SIGINT)  # as Ctrl-C does: pm's process group
    _, err = interrupted.communicate(timeout=120)
    assert interrupted.returncode == 130, err
    assert not os.path.exists(cut), "pm removes the environment it was building"
    assert conda_meta(target.prefix("heatsim")) == before
    assert read_result(attempt_dirs(target.home, "heatsim")[-1])["status"] == "interrupted"

    os.remove(gate + ".started")
    killed = subprocess.Popen(args, env=slow, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, start_new_session=True)
    wait_for(gate + ".started")
    left = building()
    os.killpg(killed.pid, signal.SIGKILL)  # nothing of pm can clean up
    killed.communicate(timeout=60)
    with open(gate + ".go", "w"):
        pass
    assert wait_until(lambda: not runs_of(killed.pid), timeout=120), "the killed pm's conda never ended"
    assert os.path.isdir(left), "a killed pm leaves the environment it was building"
    history = json.loads(run_pm(find_python("newest"), pyz, ["history", "heatsim", "--json"], target.env()).stdout)
    assert [row["status"] for row in history] == ["interrupted", "interrupted", "passed"], history
    report = run_pm(find_python("newest"), pyz, ["report", "heatsim"], target.env())
    assert "running" not in report.stdout, report.stdout

    again = subprocess.run(args, env=target.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "removing %s, left unfinished by an earlier attempt" % left in again.stderr, again.stderr
    assert not os.path.exists(left)
    assert read_result(attempt_dirs(target.home, "heatsim")[-1])["status"] == "passed"
