"""examples/fleet: the Ansible playbook run by real ansible-playbook (ansible-core) against localhost
with a local connection, and the Slurm job-array script run by bash as one array task would run it
(Slurm itself is not here: SLURM_ARRAY_TASK_ID and SLURMD_NODENAME stand in for it)."""
import json
import os
import subprocess
import sys

from conftest import ROOT, find_python

FLEET = os.path.join(ROOT, "examples", "fleet")
with open(os.path.join(ROOT, "examples", "heatsim-tests.ini")) as _handle:
    CONFIG = _handle.read()


def config(tmp_path, name, text=CONFIG):
    path = tmp_path / name
    path.write_text(text.format(out=str(tmp_path / ("installed-" + name))))
    return str(path)


def playbook(pyz, bundle, test_config, results, env, *extra):
    ansible = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    command = [ansible, "-i", "localhost,", "-c", "local", os.path.join(FLEET, "migrate.yml"),
               "-e", "ansible_python_interpreter=%s" % sys.executable, "-e", "pm_pyz=%s" % pyz,
               "-e", "bundle=%s" % bundle, "-e", "software=heatsim", "-e", "test_config=%s" % test_config,
               "-e", "results_dir=%s" % results, "-e", "python=%s" % find_python("newest"),
               "-e", "remote_tmp_parent=%s" % os.path.join(os.path.dirname(results), "remote")] + list(extra)
    return subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=600)


def test_the_ansible_playbook_migrates_collects_each_result_and_fails_on_a_failed_migration(pyz, conda_site, tmp_path,
                                                                                            heatsim_bundle):
    bundle = heatsim_bundle("newest", "heatsim.zip")
    env = dict(conda_site.env(), ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"), ANSIBLE_NOCOLOR="1")
    results = str(tmp_path / "results")
    (tmp_path / "remote").mkdir()
    good = playbook(pyz, bundle, config(tmp_path, "good.ini"), results, env)
    assert good.returncode == 0, good.stdout
    assert os.listdir(str(tmp_path / "remote")) == [], "the run's private folder is removed"
    with open(os.path.join(results, "localhost.json")) as handle:
        result = json.load(handle)
    assert result["status"] == "passed" and [t["status"] for t in result["tests"]] == ["passed", "passed"]
    failing = CONFIG.replace("tests = smooth, tools", "tests = smooth, broken") + "[test_broken]\nexec = exit 3\n"
    bad = playbook(pyz, bundle, config(tmp_path, "bad.ini", failing), results, env, "-e", "migrate_flags=--force")
    assert bad.returncode != 0 and "pm migrate heatsim on localhost exited 1: failed" in bad.stdout, bad.stdout
    with open(os.path.join(results, "localhost.json")) as handle:
        assert json.load(handle)["status"] == "failed"


def test_the_fleet_scripts_stage_into_a_new_private_folder_never_a_fixed_one():
    """A fixed /tmp/pm-fleet(-TASK), made with mkdir -p, could be made first by another user, who then
    swaps pm.pyz and runs code as the job's user: Slurm stages through mktemp -d, Ansible through its
    tempfile module, each removed at the end."""
    with open(os.path.join(FLEET, "migrate.yml")) as handle:
        playbook_text = handle.read()
    with open(os.path.join(FLEET, "migrate-array.sbatch")) as handle:
        script = handle.read()
    assert "/tmp" not in playbook_text and "ansible.builtin.tempfile:" in playbook_text
    assert "state: absent" in playbook_text
    assert 'scratch=$(mktemp -d "${TMPDIR:-/tmp}/pm-fleet-$task.XXXXXXXX")' in script and "mkdir -p \"$scratch\"" \
        not in script and "trap 'rm -rf \"$scratch\"' EXIT" in script


def test_the_slurm_array_script_migrates_on_its_node_and_writes_its_result(pyz, conda_site, tmp_path, heatsim_bundle):
    bundle = heatsim_bundle("newest", "heatsim.zip")
    planted = tmp_path / "pm-fleet-3"  # made first by someone else, with a link where pm.pyz goes
    planted.mkdir()
    (tmp_path / "theirs").write_text("their file\n")
    os.symlink(str(tmp_path / "theirs"), str(planted / "pm.pyz"))
    env = dict(conda_site.env(), SLURM_ARRAY_TASK_ID="3", SLURMD_NODENAME="node07", RESULTS_DIR=str(tmp_path / "r"),
               TMPDIR=str(tmp_path), PYTHON=find_python("newest"))
    proc = subprocess.run(["bash", os.path.join(FLEET, "migrate-array.sbatch"), pyz, bundle, "heatsim",
                           config(tmp_path, "slurm.ini")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "pm migrate heatsim on node07 (task 3): exit 0" in proc.stderr
    with open(str(tmp_path / "r" / "node07-3.json")) as handle:
        assert json.load(handle)["status"] == "passed"
    assert (tmp_path / "theirs").read_text() == "their file\n" and os.listdir(str(planted)) == ["pm.pyz"]
    assert not [n for n in os.listdir(str(tmp_path)) if n.startswith("pm-fleet-3.")], "the task's folder is removed"
