"""`pm.pyz migrate` with conda: real conda 25.11.1 creates environments, tests really run in them."""
import glob
import hashlib
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import threading
import zipfile

import pytest

import channels
import pm
from conftest import (ROOT, attempt_dirs, find_python, read_bytes, read_result, rewrite_bundle,
                      run_pm, wait_until)

with open(os.path.join(ROOT, "examples", "heatsim-tests.ini")) as _handle:
    CONFIG = _handle.read()


def write_config(tmp_path, text=None, **values):
    path = tmp_path / "tests.ini"
    values.setdefault("out", str(tmp_path / "installed"))
    path.write_text((text or CONFIG).format(**values))
    return str(path)


def pack(pyz, site, software, out, python="2.7"):
    proc = run_pm(find_python(python), pyz, ["pack", "-d", software, "-e", "heatsim-env", "-o", out, "--yes"],
                  site.env())
    assert proc.returncode == 0, proc.stderr
    return out


def attempts(site, name="heatsim"):
    return attempt_dirs(site.home, name)


@pytest.mark.parametrize("version", ["3.6", "newest"])
def test_round_trip_pack_py27_unpack_migrate_installs(version, pyz, conda_site, tmp_path, heatsim_bundle):
    bundle = heatsim_bundle()
    python = find_python(version)
    assert run_pm(python, pyz, ["unpack", bundle], conda_site.env()).returncode == 0
    proc = run_pm(python, pyz, ["migrate", "heatsim", write_config(tmp_path)], conda_site.env())
    assert proc.returncode == 0, proc.stderr
    assert "ok: smoothing step" in proc.stderr and "heatplot 0.3" in proc.stderr
    assert "smooth" in proc.stdout and "passed" in proc.stdout
    installed = tmp_path / "installed" / "heatsim"
    assert (installed / "heatsim.sh").exists()
    assert stat.S_IMODE(os.stat(str(installed / "heatsim.sh")).st_mode) == 0o755
    (attempt,) = attempts(conda_site)
    result = read_result(attempt)
    with open(os.path.join(attempt, "commands.log")) as handle:
        assert result["status"] == "passed" and result["level"] == "exact", handle.read()
    assert [t["status"] for t in result["tests"]] == ["passed", "passed"]
    assert os.path.exists(os.path.join(attempt, "env.yml")) and not os.path.exists(os.path.join(attempt, "work"))
    with open(os.path.join(attempt, "test-smooth.log")) as handle:
        assert "ok: smoothing step" in handle.read()
    with open(os.path.join(attempt, "env.yml")) as handle:
        assert "prefix" not in handle.read()


def test_a_failing_test_fails_the_migration_but_every_test_runs(pyz, conda_site, tmp_path, heatsim_bundle):
    bundle = heatsim_bundle("newest")
    text = CONFIG.replace("tests = smooth, tools", "tests = broken, smooth, tools") + \
        "[test_broken]\nexec = echo about to fail; exit 3\n"
    proc = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path, text), "--bundle", bundle],
                  conda_site.env())
    assert proc.returncode == 1, proc.stderr
    result = read_result(attempts(conda_site)[0])
    assert [(t["name"], t["status"], t["exit_code"]) for t in result["tests"]] == \
        [("broken", "failed", 3), ("smooth", "passed", 0), ("tools", "passed", 0)]
    assert result["status"] == "failed" and not (tmp_path / "installed").exists()


def test_a_bundle_from_another_platform_migrates_through_the_fallback(pyz, tmp_path, real_site, example_software):
    base_channel = channels.example_channel(str(tmp_path / "base-channel"))
    base = real_site("25.11.1", "base", [base_channel])
    base.create("heatsim-env", channels.EXAMPLE_SPECS)
    bundle = pack(pyz, base, example_software, str(tmp_path / "b.zip"))
    shutil.rmtree(base_channel)  # the base's mirror is not on the target
    other_builds = channels.example_channel(str(tmp_path / "other-channel"),
                                            builds=dict((p[0], "linux_aarch64_1") for p in channels.EXAMPLE_PACKAGES))
    target = real_site("25.11.1", "target", [other_builds])
    proc = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path), "--bundle", bundle],
                  target.env())
    assert proc.returncode == 0, proc.stderr
    result = read_result(attempts(target)[0])
    assert result["level"] == "no-builds"
    assert os.path.exists(os.path.join(attempts(target)[0], "env-exact.yml"))


def test_an_environment_of_that_name_pm_did_not_make_is_left_as_it_is(pyz, conda_site, tmp_path, heatsim_bundle):
    bundle = heatsim_bundle("newest")
    config = write_config(tmp_path)
    before = sorted(os.listdir(os.path.join(conda_site.prefix("heatsim-env"), "conda-meta")))
    args = ["migrate", "heatsim", config, "--bundle", bundle, "--env-name", "heatsim-env"]
    proc = run_pm(find_python("newest"), pyz, args, conda_site.env())
    assert proc.returncode == 0, proc.stderr
    assert "the conda environment heatsim-env (%s) was not made by pm, so pm leaves it" % \
        conda_site.prefix("heatsim-env") in proc.stderr, proc.stderr
    assert sorted(os.listdir(os.path.join(conda_site.prefix("heatsim-env"), "conda-meta"))) == before
    assert read_result(attempts(conda_site)[0])["env_prefix"].startswith(os.path.join(conda_site.home, "heatsim", "envs"))
    proc = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", config, "--bundle", bundle], conda_site.env())
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert len(attempts(conda_site)) == 1, "the taken target's refusal made no attempt"


@pytest.mark.parametrize("text, message", [
    ("[other]\noutput_dir = /x\n", "no [heatsim] section"),
    ("[heatsim]\ntests = a\n", "no 'output_dir' in [heatsim]"),
    ("[heatsim]\noutput_dir = relative/dir\n", "is not absolute"),
    ("[heatsim]\noutput_dir = /x\ntests = a\n", "no [test_a] section"),
    ("[heatsim]\noutput_dir = /x\ntests = a\n[test_a]\ntimeout = 5\n", "no 'exec' in [test_a]"),
    ("[heatsim]\noutput_dir = /x\ntests = a\n[test_a]\nexec = true\ntimeout = soon\n", "not a positive number"),
    ("[heatsim\n", "cannot read"),
    ("[heatsim]\noutput_dir = /x\n", "no 'tests' in [heatsim]"),
    ("[heatsim]\noutput_dir = /x\ntest = a\n[test_a]\nexec = true\n", "no 'tests' in [heatsim]"),
    ("[heatsim]\noutput_dir = /x/%(nowhere)s\ntests = a\n[test_a]\nexec = true\n", "cannot read"),
])
def test_broken_configs_give_one_clear_line(text, message, pyz, conda_site, tmp_path):
    proc = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path, text)], conda_site.env())
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert "tests.ini" in proc.stderr


def test_unknown_keys_are_warned_about(tmp_path, capsys):
    path = write_config(tmp_path, CONFIG.replace("tests = smooth", "colour = red\ntests = smooth") + "colour = blue\n")
    config = pm.read_test_config([path], "heatsim")
    assert [t.name for t in config.tests] == ["smooth", "tools"] and config.tests[1].timeout == 60.0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: unknown key")]
    assert len(warnings) == 2, warnings
    assert "'colour' in [heatsim] of %s" % path in warnings[0] and "'colour' in [test_tools]" in warnings[1]
    assert "(known: " in warnings[0] and "output_dir" in warnings[0] and "exec" in warnings[1]


def test_missing_software_and_corrupt_bundles_leave_the_store_intact(pyz, conda_site, tmp_path, heatsim_bundle):
    python = find_python("newest")
    config = write_config(tmp_path)
    proc = run_pm(python, pyz, ["migrate", "heatsim", config], conda_site.env())
    assert proc.returncode == 2 and "no bundle stored for 'heatsim'" in proc.stderr
    bundle = heatsim_bundle("newest")
    assert run_pm(python, pyz, ["unpack", bundle], conda_site.env()).returncode == 0
    stored = pm.Store(conda_site.home).latest_bundle("heatsim")
    before = hashlib.sha256(read_bytes(stored)).hexdigest()
    corrupt = tmp_path / "corrupt.zip"
    data = bytearray(read_bytes(bundle))
    data[middle_of_largest_member(bundle)] ^= 0xFF  # the bundle's bytes, not a date or a field zip ignores
    corrupt.write_bytes(bytes(data))
    proc = run_pm(python, pyz, ["migrate", "heatsim", config, "--bundle", str(corrupt)], conda_site.env())
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("pm: error:")
    assert hashlib.sha256(read_bytes(stored)).hexdigest() == before


def middle_of_largest_member(bundle):
    """The offset of the middle byte of the largest member's stored data in a zip file."""
    with zipfile.ZipFile(bundle) as archive:
        info = max(archive.infolist(), key=lambda i: i.compress_size)
    with open(bundle, "rb") as handle:
        handle.seek(info.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
    return info.header_offset + 30 + name_length + extra_length + info.compress_size // 2


def hostile_bundle(path, entries, **manifest):
    """A bundle whose manifest is consistent but whose software entries (or manifest fields) try to escape."""
    members = {}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data, mode in [("env.yml", b"name: x\ndependencies:\n  - heatplot\n", 0o644),
                                 ("min-deps.json", b"[]", 0o644)] + entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            archive.writestr(info, data)
            members[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        archive.writestr("manifest.json", json.dumps(dict({"format": 1, "name": "heatsim", "members": members},
                                                          **manifest)))
    return path


@pytest.mark.parametrize("entries", [
    [("software/heatsim/../../../escaped.txt", b"x", 0o644)],
    [("/tmp/absolute-escape.txt", b"x", 0o644)],
    [("software/heatsim/link", b"../../../../../etc", stat.S_IFLNK | 0o777),
     ("software/heatsim/link/passwd", b"x", 0o644)],
])
def test_hostile_zip_entries_are_refused(entries, pyz, conda_site, tmp_path):
    bundle = hostile_bundle(str(tmp_path / "evil.zip"), entries)
    proc = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path), "--bundle", bundle],
                  conda_site.env())
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(str(tmp_path / "escaped.txt")) and not os.path.exists("/tmp/absolute-escape.txt")
    assert not (tmp_path / "installed").exists()


LINK = stat.S_IFLNK | 0o777


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("entries, message", [
    # a later link moves where an earlier one points, then a file is written through the first
    ([("software/heatsim/a", b"b/../../victim", LINK), ("software/heatsim/b", b"..", LINK),
      ("software/heatsim/./a", b"x", 0o644)], "unsafe path"),
    ([("software/heatsim/a", b"b/../../victim", LINK), ("software/heatsim/b", b"..", LINK)], "points outside"),
    ([("software/heatsim/here", b".", LINK)], "points outside"),
    ([("software/heatsim//x", b"x", 0o644)], "unsafe path"),
    ([("software/heatsim/x", b"one", 0o644), ("software/heatsim/x", b"two", 0o644)], "appears twice"),
    ([("software/heatsim/x", b"x", 0o644), ("software/other/y", b"y", 0o644)], "outside the software directory"),
])
def test_link_chains_and_odd_names_cannot_escape_extraction(entries, message, tmp_path):
    bundle = hostile_bundle(str(tmp_path / "evil.zip"), entries)
    dest = tmp_path / "attempt" / "work"
    with pytest.raises(pm.PmError) as caught:
        pm.Bundle(bundle, None).extract_software(str(dest))
    assert message in caught.value.what
    assert not list(tmp_path.glob("**/victim")) and not os.path.lexists(str(dest / "heatsim")), "nothing stays"


def test_a_manifest_software_dir_that_is_not_one_folder_is_refused_before_anything(pyz, conda_site, tmp_path):
    victim = tmp_path / "victim-dir"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious\n")
    for evil in ("../../victim-dir", str(victim), ".."):
        bundle = hostile_bundle(str(tmp_path / "evil.zip"), [("software/heatsim/x", b"x", 0o644)],
                                software={"dir": evil})
        proc = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path), "--bundle", bundle,
                                                   "--force"], conda_site.env())
        assert proc.returncode == 2 and "not one plain folder name" in proc.stderr, proc.stderr
        assert (victim / "keep.txt").read_text() == "precious\n"
    assert not attempts(conda_site), "refused before an attempt starts"


def test_extract_refuses_a_link_leading_outside(tmp_path):
    bundle = hostile_bundle(str(tmp_path / "evil.zip"), [("software/heatsim/up", b"../..", stat.S_IFLNK | 0o777)])
    with pytest.raises(pm.PmError) as caught:
        pm.Bundle(bundle, None).extract_software(str(tmp_path / "dest"))
    assert "points outside" in caught.value.what


def test_env_yml_subset_is_read_with_quotes_comments_and_pip():
    text = """# exported
name: sim
channels:
  - conda-forge   # main
  - 'defaults'
dependencies:
  - python=3.11.7=h1_0
  - "libblas=*=*openblas"
  - conda=24.1.0=py311_0
  - pip:
    - torchvision==0.1  # pinned
    - "ruamel.yaml"
variables:
  OMP_NUM_THREADS: '1'
prefix: /opt/conda/envs/sim
"""
    env = pm.parse_env_yml(text)
    assert env.name == "sim" and env.channels == ["conda-forge", "defaults"]
    assert env.dependencies == ["python=3.11.7=h1_0", "libblas=*=*openblas", "conda=24.1.0=py311_0"]
    assert env.pip == ["torchvision==0.1", "ruamel.yaml"] and env.variables == {"OMP_NUM_THREADS": "1"}
    levels = dict(pm.migration_levels(env, [{"name": "python", "version": "3.11.7"}]))
    assert levels["exact"].dependencies == ["python=3.11.7=h1_0", "libblas=*=*openblas"]
    assert levels["no-builds"].dependencies == ["python=3.11.7", "libblas=*=*openblas"]
    assert levels["direct"].dependencies == ["python=3.11.7"]
    again = pm.parse_env_yml(levels["exact"].to_yaml())
    assert again.dependencies == levels["exact"].dependencies and again.pip == env.pip


@pytest.mark.parametrize("text", ["dependencies: {a: b}\n", "dependencies:\n  - &anchor a\n", "name: x\n\tdependencies:\n"])
def test_yaml_beyond_the_subset_is_an_error(text):
    with pytest.raises(pm.PmError):
        pm.parse_env_yml(text)


def test_attempt_ids_are_unique_and_ordered(tmp_path):
    made = [pm.Store(str(tmp_path)).new_attempt_dir("sim") for _ in range(50)]
    assert len(set(made)) == 50 and made == sorted(made)


def test_pack_py27_to_server_then_migrate_from_the_store(pyz, conda_site, example_software, tmp_path):
    """The whole path: the probe under 2.7 sends to a real server; migrate takes the stored bundle."""
    python = find_python("newest")
    env = conda_site.env()
    started = run_pm(python, pyz, ["serve", "start", "--port", "0", "--token", "tok"], env)
    assert started.returncode == 0, started.stderr
    try:
        with open(os.path.join(conda_site.home, "server.pid")) as handle:
            url = json.load(handle)["url"]
        proc = run_pm(find_python("2.7"), pyz, ["pack", "-d", example_software, "-e", "heatsim-env", "--server", url,
                                                "--token", "tok", "--yes"], env)
        assert proc.returncode == 0, proc.stderr
    finally:
        run_pm(python, pyz, ["serve", "stop"], env)
    proc = run_pm(find_python("3.6"), pyz, ["migrate", "heatsim", write_config(tmp_path)], env)
    assert proc.returncode == 0, proc.stderr
    assert read_result(attempts(conda_site)[0])["bundle"].endswith(os.path.join("bundles", "0001.zip"))
    assert (tmp_path / "installed" / "heatsim" / "tests" / "test_smooth.sh").exists()


def test_a_test_that_hangs_is_stopped_at_its_timeout(pyz, conda_site, tmp_path, heatsim_bundle):
    bundle = heatsim_bundle("newest")
    text = CONFIG.replace("tests = smooth, tools", "tests = hang, smooth") + "[test_hang]\nexec = sleep 60\ntimeout = 1\n"
    proc = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path, text), "--bundle", bundle],
                  conda_site.env(), timeout=50)
    assert proc.returncode == 1
    tests = read_result(attempts(conda_site)[0])["tests"]
    assert [(t["name"], t["status"]) for t in tests] == [("hang", "timeout"), ("smooth", "passed")]
    assert tests[0]["seconds"] < 20


def test_a_test_that_leaves_daemons_running_is_reported_and_they_are_stopped(pyz, conda_site, tmp_path,
                                                                             heatsim_bundle):
    bundle = heatsim_bundle("newest")
    text = CONFIG.replace("tests = smooth, tools", "tests = daemon, smooth") + (
        "[test_daemon]\nexec = sleep 31415926 & setsid sleep 31415927 & sleep 0.5\n")
    proc = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path, text), "--bundle", bundle],
                  conda_site.env())
    assert proc.returncode == 0, proc.stderr
    assert "test daemon left 2 processes running" in proc.stderr
    tests = read_result(attempts(conda_site)[0])["tests"]
    assert sorted(line.split(" ", 1)[1] for line in tests[0]["left_running"]) == ["sleep 31415926", "sleep 31415927"]
    assert tests[1]["left_running"] == []

    def still_running():
        return subprocess.run(["pgrep", "-f", "sleep 3141592[67]"], stdout=subprocess.PIPE,
                              universal_newlines=True).stdout
    assert wait_until(lambda: still_running() == "", timeout=10), \
        "processes a test left are still running: %s" % still_running()


def test_per_test_env_workdir_and_runner_are_applied(pyz, conda_site, tmp_path, heatsim_bundle):
    bundle = heatsim_bundle("newest")
    text = CONFIG.replace("tests = smooth, tools", "tests = knobs") + (
        "[test_knobs]\nexec = echo \"$GREETING from $(basename \"$PWD\")\"; [ \"$RUNNER_SEEN\" = yes ]\n"
        "env = GREETING=hello, OTHER=1\nworkdir = tests\nrunner = env RUNNER_SEEN=yes\n")
    proc = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path, text), "--bundle", bundle],
                  conda_site.env())
    assert proc.returncode == 0, proc.stderr
    assert "hello from tests" in proc.stderr


def with_source(bundle, out, **source):
    """A copy of a bundle whose manifest says it was packed on another machine."""
    return rewrite_bundle(bundle, out, lambda members, manifest: manifest["source"].update(source))


def test_a_newer_glibc_or_another_processor_on_the_base_is_named_before_migrating(pyz, conda_site, tmp_path,
                                                                                  heatsim_bundle):
    bundle = heatsim_bundle()
    other = with_source(bundle, str(tmp_path / "other.zip"), libc="glibc 9.1", machine="aarch64\x1b[2J")
    proc = run_pm(find_python("3.6"), pyz, ["migrate", "heatsim", write_config(tmp_path), "--bundle", other],
                  conda_site.env())
    assert proc.returncode == 0, proc.stderr
    here = os.confstr("CS_GNU_LIBC_VERSION").split()[1]
    assert "note: the bundle comes from glibc 9.1, this machine has glibc %s" % here in proc.stderr
    assert "note: the bundle comes from processor aarch64??2J, this machine has x86_64" in proc.stderr
    assert read_result(attempts(conda_site)[0])["platform"]["libc"] == "glibc " + here

    same = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path), "--bundle", bundle,
                                               "--force"], conda_site.env())
    assert same.returncode == 0 and "note: the bundle comes from" not in same.stderr


def test_long_commands_log_as_they_go_and_say_they_are_still_running(tmp_path, monkeypatch, capsys):
    """In-process, so the 30 s interval can be shortened; the command itself is a real shell."""
    monkeypatch.setattr(pm, "STILL_RUNNING_SECONDS", 0.2)
    attempt = pm.Attempt(pm.Store(str(tmp_path)), "heatsim")
    gate = tmp_path / "gate"
    script = "echo first; while [ ! -e '%s' ]; do sleep 0.05; done; echo second" % gate
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(result=attempt.run(["sh", "-c", script])), daemon=True)
    worker.start()

    def logged():
        return read_bytes(attempt.log_path).decode() if os.path.exists(attempt.log_path) else ""
    said = []

    def still_running_said():
        said.append(capsys.readouterr().err)
        return "sh still running after 0 s (output: %s)" % attempt.log_path in "".join(said)
    try:
        assert wait_until(lambda: "\nfirst\n" in logged(), timeout=10)
        assert logged().endswith("\nfirst\n") and worker.is_alive()  # logged while still running
        assert wait_until(still_running_said, timeout=10), "".join(said)
    finally:
        gate.touch()
    worker.join(10)
    assert outcome["result"] == (0, "first\nsecond\n")


def test_a_full_disk_under_the_store_ends_the_attempt_with_one_clear_line(pyz, conda_site, example_software,
                                                                          tmp_path, tiny_disk):
    with open(os.path.join(example_software, "field.dat"), "wb") as handle:
        handle.write(os.urandom(600000))  # unzipped for the tests: more than the 256 KiB disk holds
    bundle = pack(pyz, conda_site, example_software, str(tmp_path / "b.zip"))
    env = conda_site.env(PM_HOME=os.path.join(tiny_disk, "home"))
    proc = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path), "--bundle", bundle],
                  env)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert last.startswith("pm: error: the disk is full (writing the store %s" % tiny_disk) and "free some" in last
    assert not (tmp_path / "installed").exists()


def test_ctrl_c_during_a_test_with_a_timeout_kills_its_processes_and_marks_the_attempt(pyz, conda_site, tmp_path,
                                                                                       heatsim_bundle):
    """SIGINT, as Ctrl-C sends it to pm (the test's shell runs in a process group of its own)."""
    bundle = heatsim_bundle("newest")
    marker = tmp_path / "grandchild.pid"
    text = CONFIG.replace("tests = smooth, tools", "tests = slow") + \
        "[test_slow]\nexec = sleep 300 & echo $! > %s; echo started; wait\ntimeout = 120\n" % marker
    proc = subprocess.Popen([find_python("newest"), pyz, "migrate", "heatsim", write_config(tmp_path, text),
                             "--bundle", bundle], env=conda_site.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)

    def test_running():
        """pm has logged the test's first line: it is past starting the test, as a user pressing Ctrl-C sees."""
        logs = glob.glob(os.path.join(conda_site.home, "heatsim", "2*", "test-slow.log"))
        return logs and "started" in read_bytes(logs[0]).decode() and marker.read_text().strip()
    assert wait_until(test_running, timeout=120), "the test never started"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)  # not the test's 120 s timeout, nor its sleep's 300 s
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "ValueError" not in err
    grandchild = int(marker.read_text())

    def gone():
        try:
            with open("/proc/%d/stat" % grandchild) as handle:
                return handle.read().split()[2] == "Z"
        except OSError:
            return True
    assert wait_until(gone, timeout=10), "the test's processes are killed"
    (attempt,) = attempts(conda_site)
    assert read_result(attempt)["status"] == "interrupted"
    assert not os.path.exists(os.path.join(attempt, "work")), "the unzipped copy is removed"
    assert not (tmp_path / "installed").exists()


def test_force_keeps_the_old_install_whole_when_the_new_one_cannot_be_written(pyz, conda_site, example_software,
                                                                              tmp_path, tiny_disk):
    with open(os.path.join(example_software, "field.dat"), "wb") as handle:
        handle.write(os.urandom(600000))  # more than the 256 KiB disk of output_dir holds
    bundle = pack(pyz, conda_site, example_software, str(tmp_path / "b.zip"))
    old = os.path.join(tiny_disk, "out", "heatsim")
    os.makedirs(old)
    with open(os.path.join(old, "old.txt"), "w") as handle:
        handle.write("the install that works\n")
    with open(os.path.join(tiny_disk, "out", ".heatsim.pm-installed"), "w") as handle:
        handle.write("{}\n")  # pm installed it: --force may replace it
    config = write_config(tmp_path, out=os.path.join(tiny_disk, "out"))
    proc = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", config, "--bundle", bundle, "--force"],
                  conda_site.env())
    assert proc.returncode == 1 and "the disk is full" in proc.stderr, proc.stderr
    with open(os.path.join(old, "old.txt")) as handle:
        assert handle.read() == "the install that works\n"
    assert sorted(os.listdir(os.path.join(tiny_disk, "out"))) == [".heatsim.pm-installed", "heatsim"], \
        "nothing half-written beside it"


def test_test_configs_are_read_as_the_original_reads_them(pyz, conda_site, tmp_path, heatsim_bundle):
    """ConfigParser's defaults: a ';' inside a value is not a comment, %(key)s and %% interpolate."""
    bundle = heatsim_bundle("newest")
    text = ("[DEFAULT]\nroot = %s\n[heatsim]\noutput_dir = %%(root)s/installed\ntests = semicolon, percent\n"
            "[test_semicolon]\nexec = echo first ; false\n"
            "[test_percent]\nexec = echo 100%%%%\n" % tmp_path)
    config = tmp_path / "tests.ini"
    config.write_text(text)
    proc = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", str(config), "--bundle", bundle],
                  conda_site.env())
    assert proc.returncode == 1, proc.stderr
    tests = dict((t["name"], t["status"]) for t in read_result(attempts(conda_site)[0])["tests"])
    assert tests == {"semicolon": "failed", "percent": "passed"}, "the whole line ran"
    assert "    100%\n" in proc.stderr
    assert not (tmp_path / "installed").exists()


def test_server_is_an_alias_of_serve(pyz, tmp_path):
    env = dict(os.environ, PM_HOME=str(tmp_path / "store"))
    proc = run_pm(find_python("newest"), pyz, ["server", "status"], env)
    assert proc.returncode == 1 and "no server runs for" in proc.stdout, proc.stderr


def test_skip_tests_warns_that_nothing_was_proven(pyz, conda_site, tmp_path, heatsim_bundle):
    bundle = heatsim_bundle("newest")
    proc = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path), "--bundle", bundle,
                                               "--skip-tests"], conda_site.env())
    assert proc.returncode == 0 and "warning: --skip-tests" in proc.stderr, proc.stderr


def test_a_reader_that_goes_away_is_no_error(pyz, tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head -1` once it has its line
    proc = subprocess.run([find_python("newest"), pyz, "managers"], stdout=write_end, stderr=subprocess.PIPE,
                          universal_newlines=True, env=dict(os.environ, PM_HOME=str(tmp_path)), timeout=60)
    os.close(write_end)
    assert "BrokenPipe" not in proc.stderr and "unexpected" not in proc.stderr and proc.stderr == "", proc.stderr


def as_pyyaml_reads_it(text):
    """name, channels, conda entries and pip entries of an env file, read by PyYAML (tests only)."""
    import yaml
    doc = yaml.safe_load(text)
    deps = doc.get("dependencies") or []
    pip = [str(p) for d in deps if isinstance(d, dict) for p in (d.get("pip") or [])]
    return (doc.get("name"), [str(c) for c in doc.get("channels") or []],
            [str(d) for d in deps if not isinstance(d, dict)], pip)


def env_file_shapes(text):
    """The same environment in the shapes conda and people write: as found, PyYAML's block dump
    (lists at the key's indent, as conda <= 4.5), its flow dump of leaf lists, CRLF with a BOM."""
    import yaml
    doc = yaml.safe_load(text)
    yield "as found", text
    yield "block, unindented", yaml.safe_dump(doc, default_flow_style=False)
    yield "flow leaves", yaml.safe_dump(doc, default_flow_style=None)
    yield "crlf and bom", "\ufeff" + text.replace("\n", "\r\n")


@pytest.mark.parametrize("env_name", channels.real_env_names())
def test_every_shape_of_the_real_env_files_reads_as_pyyaml_reads_it(env_name):
    with open(os.path.join(channels.REAL_ENVS, env_name, "environment.yml")) as handle:
        original = handle.read()
    for shape, text in env_file_shapes(original):
        env = pm.parse_env_yml(text, "%s (%s)" % (env_name, shape))
        assert (env.name, env.channels, env.dependencies, env.pip) == as_pyyaml_reads_it(text), shape


def test_flow_lists_tags_and_other_installers_read_as_pyyaml_reads_them(capsys):
    text = ("name: sim\nchannels: [conda-forge, 'bioconda']\ndependencies: !!python/tuple\n- python=3.6\n"
            "- pip: []\n- nodejs\n- npm:\n  - left-pad\n- pip: [requests==2.0, \"six\"]\n")
    env = pm.parse_env_yml(text)
    assert env.channels == ["conda-forge", "bioconda"] and env.dependencies == ["python=3.6", "nodejs"]
    assert env.pip == ["requests==2.0", "six"]
    assert "ignoring the npm: entries" in capsys.readouterr().err
    plain = text.replace(" !!python/tuple", "")
    assert (env.name, env.channels, env.dependencies, env.pip) == as_pyyaml_reads_it(plain)


def test_a_store_the_original_tool_wrote_is_listed_and_migrated(pyz, conda_site, example_software, tmp_path,
                                                                heatsim_bundle):
    """NAME/env.yml, NAME/min-deps.json and NAME/pkg.zip (entries 'heatsim/...'), as platform-migrator
    1.1.0 stores an upload."""
    bundle = heatsim_bundle("newest")
    folder = os.path.join(conda_site.home, "heatsim")
    os.makedirs(folder)
    with zipfile.ZipFile(bundle) as packed:
        for name in ("env.yml", "min-deps.json"):
            with open(os.path.join(folder, name), "wb") as handle:
                handle.write(packed.read(name))
    with zipfile.ZipFile(os.path.join(folder, "pkg.zip"), "w") as original:
        for root, _, files in os.walk(example_software):
            for name in files:
                path = os.path.join(root, name)
                original.write(path, os.path.join("heatsim", os.path.relpath(path, example_software)))
    listed = run_pm(find_python("newest"), pyz, ["list", "--json"], conda_site.env())
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["revisions"]) for r in rows] == [("heatsim", 0)], listed.stderr
    assert "platform-migrator 1.1.0's files" in rows[0]["note"] and sorted(os.listdir(folder)) == [
        "env.yml", "min-deps.json", "pkg.zip"], "list only reads"
    proc = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path)], conda_site.env())
    assert proc.returncode == 0, proc.stderr
    listed = run_pm(find_python("newest"), pyz, ["list", "--json"], conda_site.env())
    assert [(r["name"], r["revisions"]) for r in json.loads(listed.stdout)] == [("heatsim", 1)], "migrate converted it"
    assert os.access(str(tmp_path / "installed" / "heatsim" / "heatsim.sh"), os.X_OK)


def test_a_taken_install_target_is_named_before_anything_runs(pyz, conda_site, tmp_path, heatsim_bundle):
    bundle = heatsim_bundle("newest")
    taken = tmp_path / "installed" / "heatsim"
    taken.mkdir(parents=True)
    (taken / "mine.txt").write_text("keep\n")
    proc = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path), "--bundle", bundle],
                  conda_site.env())
    assert proc.returncode == 2 and "%s exists and is not empty" % taken in proc.stderr
    assert "creating conda environment" not in proc.stderr and "--- test" not in proc.stderr
    assert (taken / "mine.txt").read_text() == "keep\n"


def test_every_attempt_ends_in_a_true_record_and_json_always_prints_the_result(pyz, conda_site, tmp_path,
                                                                               heatsim_bundle):
    """An output_dir below a file makes pm's own install step fail with an error it does not expect:
    the attempt ends as 'error' with that reason (never 'running'), --json still prints the result
    object, and the exit code says pm failed (3), not that the tests failed (1)."""
    bundle = heatsim_bundle()
    (tmp_path / "a-file").write_text("not a folder\n")
    proc = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path, out=str(
        tmp_path / "a-file" / "installed")), "--bundle", bundle, "--json"], conda_site.env())
    assert proc.returncode == 3, proc.stderr
    printed = json.loads(proc.stdout)
    result = read_result(attempts(conda_site)[-1])
    assert printed["status"] == result["status"] == "error" and printed["id"] == result["id"]
    assert result["error"].startswith("internal error: NotADirectoryError")
    history = run_pm(find_python("newest"), pyz, ["history", "heatsim"], conda_site.env()).stdout
    assert "running" not in history and "error" in history


def test_a_runner_that_is_not_shell_words_is_bad_input_named_before_anything(pyz, conda_site, tmp_path):
    text = CONFIG.replace("exec = sh tests/test_smooth.sh", "exec = sh tests/test_smooth.sh\nrunner = srun 'n1")
    proc = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path, text)], conda_site.env())
    assert proc.returncode == 2 and "runner \"srun 'n1\" in [test_smooth]" in proc.stderr, proc.stderr
    assert not attempts(conda_site)


def test_flags_that_cannot_act_are_refused_or_named_before_anything(pyz, conda_site, tmp_path, heatsim_bundle):
    bundle = heatsim_bundle()
    args = ["migrate", "heatsim", write_config(tmp_path), "--bundle", bundle]
    proc = run_pm(find_python("newest"), pyz, args + ["--no-conda"], conda_site.env())
    assert proc.returncode == 2 and "this bundle carries none" in proc.stderr, proc.stderr
    assert not attempts(conda_site)
    proc = run_pm(find_python("newest"), pyz, args + ["--prefix", str(tmp_path / "p"), "--allow-scripts"],
                  conda_site.env())
    assert proc.returncode == 0, proc.stderr
    assert "note: --allow-scripts applies only to the packages a bundle carries; this migration uses conda's " \
        "channels, so it does nothing" in proc.stderr, proc.stderr
    assert read_result(attempts(conda_site)[-1])["env_prefix"] == str(tmp_path / "p"), "--prefix places conda's too"
    assert os.path.isdir(str(tmp_path / "p" / "conda-meta"))


@pytest.mark.parametrize("version", ["2.7", "newest"])
def test_quiet_and_verbose_before_the_verb_reach_pack(version, pyz, conda_site, example_software, tmp_path):
    out = str(tmp_path / "b.zip")
    proc = run_pm(find_python(version), pyz, ["-q", "pack", "-d", example_software, "-e", "heatsim-env", "-o", out,
                                              "--yes"], conda_site.env())
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    proc = run_pm(find_python(version), pyz, ["-v", "pack", "--server", "http://host:notaport", "-d", example_software,
                                              "-e", "heatsim-env", "--yes"], conda_site.env())
    assert proc.returncode == 2 and "is not a URL" in proc.stderr and "zipping" not in proc.stderr, proc.stderr


def test_json_prints_one_object_also_when_refused_before_the_attempt(pyz, tmp_path):
    """A config, a bundle or a name refused before any attempt starts: --json still prints one JSON
    object (status 'error', the reason and what to do), and stderr keeps its one line."""
    bad_runner = CONFIG.replace("exec = sh tests/test_smooth.sh", "exec = sh tests/test_smooth.sh\nrunner = srun 'n1")
    (tmp_path / "not-a-bundle.zip").write_text("not a zip\n")
    (tmp_path / "bad-runner.ini").write_text(bad_runner.format(out=str(tmp_path / "installed")))
    env = dict(os.environ)
    cases = [(["migrate", "heatsim", str(tmp_path / "bad-runner.ini"), "--json"], 2, "runner \"srun 'n1\""),
             (["migrate", "heatsim", write_config(tmp_path), "--bundle", str(tmp_path / "nope.zip"), "--json"], 2,
              "no such bundle file"),
             (["migrate", "heatsim", write_config(tmp_path), "--bundle", str(tmp_path / "not-a-bundle.zip"),
               "--json"], 2, "not-a-bundle.zip"),
             (["migrate", "heatsim", write_config(tmp_path), "--json"], 2, "heatsim"),
             (["migrate", "bad/name", write_config(tmp_path), "--json"], 2, "bad software name"),
             (["report", "heatsim", "--json"], 2, "no migration attempts of heatsim"),
             (["history", "bad/name", "--json"], 2, "bad software name"),
             (["managers", "--pck-mgr-configs", str(tmp_path / "none.ini"), "--json"], 2, "none.ini"),
             (["report", "--json"], 2, "name")]
    for args, code, words in cases:
        proc = run_pm(find_python("newest"), pyz, args, env)
        assert proc.returncode == code, (args, proc.stderr)
        printed = json.loads(proc.stdout)  # exactly one object, nothing else on stdout
        assert isinstance(printed, dict) and printed["status"] == "error" and words in printed["error"], (args, printed)
        assert len(proc.stderr.strip().splitlines()) >= 1 and "Traceback" not in proc.stderr


def test_a_full_disk_while_unzipping_carried_packages_leaves_no_partial_file_and_ends_the_attempt(
        pyz, real_site, example_software, tmp_path, tiny_disk):
    """A carried package larger than the store's disk: migrate removes what it had written of it,
    and the attempt's result.json says 'error' (never 'running' once pm is gone)."""
    channel = str(tmp_path / "channel")
    channels.example_channel(channel)
    channels.make_package(channel, "noarch", "bigdata", "1.0", "0", (), {"share/big.dat": os.urandom(600000)})
    channels.index_channel(channel)
    site = real_site("25.11.1", "site", [channel], home=os.path.join(tiny_disk, "home"))
    site.create("heatsim-env", channels.EXAMPLE_SPECS + ["bigdata"])
    bundle = str(tmp_path / "b.zip")
    proc = run_pm(find_python("newest"), pyz, ["pack", "-d", example_software, "-e", "heatsim-env", "-o", bundle,
                                               "--yes", "--with-packages"], site.env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    proc = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path), "--bundle", bundle],
                  site.env(), timeout=300)
    assert proc.returncode == 1 and "the disk is full" in proc.stderr.strip().splitlines()[-1], proc.stderr
    (attempt,) = attempt_dirs(site.home, "heatsim")
    assert read_result(attempt)["status"] == "error" and "the disk is full" in read_result(attempt)["error"]
    left = []
    for folder, _, files in os.walk(attempt):
        left += [(os.path.relpath(os.path.join(folder, f), attempt), os.path.getsize(os.path.join(folder, f)))
                 for f in files]
    assert not [path for path, size in left if size > 64 << 10 or path.startswith(("channel", "work"))], left
    history = run_pm(find_python("newest"), pyz, ["history", "heatsim"], site.env()).stdout
    assert "running" not in history and "error" in history


def test_prune_shows_the_store_and_removes_only_what_no_install_needs(pyz, conda_site, tmp_path, heatsim_bundle):
    bundle = heatsim_bundle()
    for _ in range(3):
        assert run_pm(find_python("newest"), pyz, ["unpack", bundle], conda_site.env()).returncode == 0
    failing = CONFIG.replace("tests = smooth, tools", "tests = smooth, broken") + "[test_broken]\nexec = exit 3\n"
    failed = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path, failing)],
                    conda_site.env(), timeout=600)
    assert failed.returncode == 1, failed.stderr
    passed = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path), "--force"],
                    conda_site.env(), timeout=600)
    assert passed.returncode == 0, passed.stderr
    first, second = attempts(conda_site)
    revisions = sorted(os.listdir(os.path.join(conda_site.home, "heatsim", "bundles")))
    assert revisions == ["0001.zip", "0002.zip", "0003.zip"]

    dry = run_pm(find_python("newest"), pyz, ["prune", "--dry-run"], conda_site.env())
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0].startswith("heatsim: 3 revisions (") and "2 attempts (" in lines[0], dry.stdout
    row = dict((line.split()[0], line) for line in lines[1:-1])
    assert "remove" in row[os.path.basename(first)] and "failed" in row[os.path.basename(first)]
    assert "keep" in row[os.path.basename(second)] and "is in use" in row[os.path.basename(second)]
    assert "remove" in row["bundles/0001.zip"] and "remove" in row["bundles/0002.zip"]
    assert "keep" in row["bundles/0003.zip"]
    assert lines[-1].endswith("would be freed (--dry-run: nothing removed)"), lines[-1]
    assert attempts(conda_site) == [first, second] and len(os.listdir(os.path.dirname(os.path.join(
        conda_site.home, "heatsim", "bundles", "x")))) == 3

    done = run_pm(find_python("newest"), pyz, ["prune", "--keep", "2"], conda_site.env())
    assert done.returncode == 0 and "freed" in done.stdout.splitlines()[-1], done.stderr
    assert attempts(conda_site) == [second]
    assert sorted(os.listdir(os.path.join(conda_site.home, "heatsim", "bundles"))) == ["0002.zip", "0003.zip"]
    assert (tmp_path / "installed" / "heatsim").is_dir()
    assert read_result(second)["installed_to"] == str(tmp_path / "installed" / "heatsim")

    shutil.rmtree(str(tmp_path / "installed" / "heatsim"))  # the install is gone: its attempt is needed no more
    again = run_pm(find_python("newest"), pyz, ["prune", "heatsim"], conda_site.env())
    assert again.returncode == 0, again.stderr
    assert attempts(conda_site) == [] and "is gone or replaced" in again.stdout
    assert sorted(os.listdir(os.path.join(conda_site.home, "heatsim", "bundles"))) == ["0003.zip"]
    listed = run_pm(find_python("newest"), pyz, ["--help"], conda_site.env()).stdout
    assert "prune" in listed


def test_a_refusal_before_any_work_leaves_no_attempt_in_history(pyz, conda_site, tmp_path, heatsim_bundle):
    bundle = heatsim_bundle("newest")
    taken = tmp_path / "installed" / "heatsim"
    taken.mkdir(parents=True)
    (taken / "mine.txt").write_text("keep\n")
    python = find_python("newest")
    proc = run_pm(python, pyz, ["migrate", "heatsim", write_config(tmp_path), "--bundle", bundle, "--json"],
                  conda_site.env())
    assert proc.returncode == 2 and "%s exists and is not empty" % taken in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["status"] == "error"
    assert attempts(conda_site) == [], "no attempt folder for a refusal before any work"
    history = run_pm(python, pyz, ["history", "heatsim", "--json"], conda_site.env())
    assert "0/0" not in history.stdout + history.stderr


def test_tests_that_passed_stay_recorded_when_the_install_is_refused_after_them(pyz, conda_site, tmp_path,
                                                                                heatsim_bundle):
    """As when a concurrent migration installs into output_dir meanwhile: here the last test does."""
    bundle = heatsim_bundle("newest")
    taken = tmp_path / "installed" / "heatsim"
    config = write_config(tmp_path, CONFIG.replace("timeout = 60", "timeout = 60\n\n[test_race]\nexec = mkdir -p %s "
                                                   "&& echo theirs > %s/other.txt" % (taken, taken))
                          .replace("tests = smooth, tools", "tests = smooth, tools, race"))
    python = find_python("newest")
    proc = run_pm(python, pyz, ["migrate", "heatsim", config, "--bundle", bundle], conda_site.env())
    assert proc.returncode == 2 and "%s exists and is not empty" % taken in proc.stderr, proc.stderr
    result = read_result(attempts(conda_site)[-1])
    assert result["status"] == "error"
    assert [(t["name"], t["status"]) for t in result["tests"]] == [("smooth", "passed"), ("tools", "passed"),
                                                                   ("race", "passed")]
    report = run_pm(python, pyz, ["history", "heatsim"], conda_site.env())
    assert "0/0" not in report.stdout and "3/3" in report.stdout, report.stdout
    assert (taken / "other.txt").read_text() == "theirs\n"
