"""`pm.pyz pack`: the probe under real interpreters, with real conda 25.11.1 (4.3.16: test_real_conda.py)."""
import glob
import hashlib
import json
import os
import re
import stat
import subprocess
import zipfile

import pytest

import pm
from conftest import find_python, run_pm, wait_until


def pack_args(software, out, *extra):
    return ["pack", "-d", software, "-e", "heatsim-env", "-o", out, "--yes"] + list(extra)


@pytest.mark.parametrize("version", ["2.7", "3.6", "newest"])
def test_pack_saves_a_bundle_that_checks_member_by_member(version, pyz, conda_site, example_software, tmp_path):
    os.makedirs(os.path.join(example_software, "__pycache__"))
    with open(os.path.join(example_software, "__pycache__", "x.pyc"), "wb") as handle:
        handle.write(b"junk")
    os.symlink("heatsim.sh", os.path.join(example_software, "run.sh"))
    with open(os.path.join(example_software, "donn\u00e9es.txt"), "w", encoding="utf-8") as handle:
        handle.write("temp\u00e9rature\n")
    epoch_file = os.path.join(example_software, "built-at-epoch.dat")  # SOURCE_DATE_EPOCH=0 trees
    with open(epoch_file, "wb") as handle:
        handle.write(b"\x00" * 3000)
    os.utime(epoch_file, (0, 0))
    with open(os.path.join(example_software, "results.tar.gz"), "wb") as handle:
        handle.write(os.urandom(5000))  # already compressed: stored, not deflated again
    out = str(tmp_path / "heatsim.bundle.zip")
    c_locale = version != "newest"  # old machines often run with LANG=C: names must still be UTF-8
    env = conda_site.env(LC_ALL="C", LANG="C") if c_locale else conda_site.env()
    proc = run_pm(find_python(version), pyz, pack_args(example_software, out), env)
    assert proc.returncode == 0, proc.stderr
    assert os.path.abspath(out) in proc.stdout
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o666 & ~umask
    assert "5 packages, 1 directly required" in proc.stderr
    assert "zipping heatsim: 8 files" in proc.stderr

    manifest = pm.Bundle.open(out).manifest
    assert manifest.name == "heatsim"
    assert manifest.minimal == ["heatplot"]
    assert manifest.env["name"] == "heatsim-env"
    assert manifest.source["conda"] == "25.11.1"
    assert manifest.source["python"].startswith(version if version != "newest" else "3.")
    assert manifest.source["libc"] == os.confstr("CS_GNU_LIBC_VERSION")  # the running glibc, not the build's
    with zipfile.ZipFile(out) as bundle:
        names = set(bundle.namelist())
        for member, entry in manifest.members.items():
            data = bundle.read(member)
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
            assert len(data) == entry["size"]
        assert {"manifest.json", "env.yml", "env-history.yml", "conda-list.json", "min-deps.json"} <= names
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        assert "heatplot=0.3=h3_0" in bundle.read("env.yml").decode()
        assert "heatplot" in bundle.read("env-history.yml").decode()
        listed = json.loads(bundle.read("conda-list.json").decode())
        assert sorted(r["name"] for r in listed) == ["corelang", "corelang-pip", "gridtools", "heatplot", "libgrid"]
        (heatplot,) = json.loads(bundle.read("min-deps.json").decode())
        assert (heatplot["name"], heatplot["version"], heatplot["build_string"]) == ("heatplot", "0.3", "h3_0")
        assert heatplot["channel"] and heatplot["requested"] is True
        script = bundle.getinfo("software/heatsim/heatsim.sh")
        assert stat.S_IMODE(script.external_attr >> 16) == 0o755
        link = bundle.getinfo("software/heatsim/run.sh")
        assert stat.S_ISLNK(link.external_attr >> 16) and bundle.read(link) == b"heatsim.sh"
        assert bundle.read("software/heatsim/donn\u00e9es.txt").decode("utf-8") == "temp\u00e9rature\n"
        assert bundle.getinfo("software/heatsim/built-at-epoch.dat").date_time[:3] == (1980, 1, 2)
        assert bundle.getinfo("software/heatsim/built-at-epoch.dat").compress_type == zipfile.ZIP_DEFLATED
        assert bundle.getinfo("software/heatsim/results.tar.gz").compress_type == zipfile.ZIP_STORED
    assert sorted(manifest.requested_specs) == ["gridtools[version='>=2']", "heatplot"], "as conda 25 wrote them"


def test_pack_asks_missing_answers_on_stdin(pyz, conda_site, example_software, tmp_path):
    """In platform-migrator 1.1.0's order: name, directory, save the zip (y/n); then the environment."""
    out = os.path.join(os.path.dirname(example_software), "heat2.zip")
    answers = "heat2\n%s\ny\n2\n" % example_software
    proc = run_pm(find_python("2.7"), pyz, ["pack"], conda_site.env(), stdin=answers)
    assert proc.returncode == 0, proc.stderr
    assert "Which conda environment" in proc.stderr and "heatsim-env" in proc.stderr
    assert pm.Bundle.open(out).manifest.name == "heat2"


def test_pack_uses_the_active_environment(pyz, conda_site, example_software, tmp_path):
    out = str(tmp_path / "active.zip")
    env = conda_site.env(CONDA_PREFIX=conda_site.prefix("heatsim-env"))
    proc = run_pm(find_python("newest"), pyz, ["pack", "-d", example_software, "-o", out, "--yes"], env)
    assert proc.returncode == 0, proc.stderr
    assert pm.Bundle.open(out).manifest.env["prefix"] == conda_site.prefix("heatsim-env")


def test_pack_with_yes_names_the_missing_flag(pyz, conda_site, example_software, tmp_path):
    proc = run_pm(find_python("2.7"), pyz, ["pack", "-d", example_software, "-o", str(tmp_path / "x.zip"), "--yes"],
                  conda_site.env())
    assert proc.returncode == 2
    assert "-e ENV" in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(str(tmp_path / "x.zip"))


def one_error_line(proc):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith("pm: error: ")
    return lines[-1]


@pytest.mark.parametrize("version", ["2.7", "newest"])
def test_pack_bad_input_gives_one_line_and_exit_2(version, pyz, conda_site, example_software, tmp_path):
    python = find_python(version)
    out = str(tmp_path / "b.zip")
    no_conda = conda_site.env(PATH="/usr/bin:/bin")
    assert "no conda found" in one_error_line(run_pm(python, pyz, pack_args(example_software, out), no_conda))
    unknown = ["pack", "-d", example_software, "-e", "nosuchenv", "-o", out, "--yes"]
    assert "unknown conda environment 'nosuchenv'" in one_error_line(run_pm(python, pyz, unknown, conda_site.env()))
    missing = pack_args(str(tmp_path / "nowhere"), out)
    assert "does not exist" in one_error_line(run_pm(python, pyz, missing, conda_site.env()))
    unwritable = pack_args(example_software, str(tmp_path / "no" / "such" / "dir.zip"))
    assert "cannot write the output file" in one_error_line(run_pm(python, pyz, unwritable, conda_site.env()))
    assert "bad software name" in one_error_line(
        run_pm(python, pyz, pack_args(example_software, out, "-n", "../evil"), conda_site.env()))
    assert not glob.glob(str(tmp_path / ".pm-*")) and not os.path.exists(out)


def test_pack_refuses_broken_conda_records_and_leaves_nothing(pyz, conda_site, example_software, tmp_path):
    meta = os.path.join(conda_site.prefix("heatsim-env"), "conda-meta")
    with open(glob.glob(os.path.join(meta, "libgrid-*.json"))[0], "w") as handle:
        handle.write("{not json")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = run_pm(find_python("2.7"), pyz, pack_args(example_software, str(out_dir / "b.zip")), conda_site.env())
    assert "broken conda record" in one_error_line(proc)
    assert os.listdir(str(out_dir)) == []


def test_failed_write_leaves_no_partial_bundle(tmp_path, conda_site, example_software, monkeypatch):
    """A read error in the middle of zipping cannot be caused for real here (tests run as root, who
    reads every file), so a stand-in add_file raises one; the probe itself runs unchanged."""
    probe = pm.load_probe()
    site_env = conda_site.env()
    for key in set(os.environ) - set(site_env):
        monkeypatch.delenv(key)
    for key, value in site_env.items():
        monkeypatch.setenv(key, value)
    conda = probe.find_conda()
    conda_info = probe.run_conda_json(conda, ["info", "--json"])
    env = probe.gather_environment(conda, conda_info, conda_site.prefix("heatsim-env"), example_software)

    def broken_add_file(*args):
        raise probe.PmError("cannot read a file", "fix it")

    monkeypatch.setattr(probe.BundleWriter, "add_file", broken_add_file)
    out = str(tmp_path / "out" / "b.zip")
    os.makedirs(os.path.dirname(out))
    with pytest.raises(probe.PmError):
        probe.write_bundle(out, "heatsim", example_software, env, probe.DEFAULT_EXCLUDES)
    assert os.listdir(os.path.dirname(out)) == []


def test_python2_runs_pack_and_help_but_refuses_other_verbs(pyz, tmp_path):
    python = find_python("2.7")
    proc = run_pm(python, pyz, ["--help"], dict(os.environ))
    assert proc.returncode == 0 and "pack" in proc.stdout and "Python 3.6" in proc.stdout
    listed = [line.split()[0] for line in proc.stdout.split("verbs:\n", 1)[1].split("\n\n", 1)[0].splitlines()]
    assert listed == [verb.name for verb in pm.VERBS]  # every verb, as under Python 3
    proc = run_pm(python, pyz, ["pack", "--help"], dict(os.environ))
    assert proc.returncode == 0 and "--server" in proc.stdout
    proc = run_pm(python, pyz, ["serve"], dict(os.environ))
    assert proc.returncode == 2 and "needs Python 3.6 or newer" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("version", ["3.6", "newest"])
def test_every_verb_has_help_with_an_example_under_python3(version, pyz):
    python = find_python(version)
    listed = run_pm(python, pyz, ["--help"], dict(os.environ)).stdout
    for verb in pm.VERBS:
        assert "\n    %s " % verb.name in listed
        proc = run_pm(python, pyz, [verb.name, "--help"], dict(os.environ))
        assert proc.returncode == 0, proc.stderr
        assert re.search(r"examples?:\n  python3? pm\.pyz %s\b" % verb.name, proc.stdout), verb.name


def test_pack_of_the_largest_real_environment_records_its_minimal_set(pyz, tmp_path):
    """CryoInTheCloud's hub image: 915 real package records (names, versions, builds, depends).

    The environment is made by the conda stand-in (tests/condastandin.py): real conda 25.11.1's
    classic solver took 37 s here to create the same 915 packages from the same channel, against
    4.2 s for this whole test. What is tested is pack's graph over many records; how pack reads real
    conda's records, history and exports is tested in test_real_conda.py."""
    import channels
    from conftest import CondaSite
    env_name = "CryoInTheCloud__hub-image"
    channel = channels.channel_from_graph(str(tmp_path / "channel"), env_name)
    site = CondaSite(str(tmp_path), [channel], str(tmp_path / "home"))
    site.create("cryo", channels.pinned_specs(env_name), channels.env_yml_specs(env_name))
    software = tmp_path / "hub"
    software.mkdir()
    (software / "notebook.txt").write_text("hello\n")
    out = str(tmp_path / "cryo.zip")
    proc = run_pm(find_python("2.7"), pyz, ["pack", "-d", str(software), "-e", "cryo", "-o", out, "--yes"], site.env())
    assert proc.returncode == 0, proc.stderr
    manifest = pm.Bundle.open(out).manifest
    probe = pm.load_probe()
    graph = probe.dependency_graph(channels.load_graph(env_name))
    assert manifest.env["packages"] == len(graph) == 915
    assert probe.closure(graph, manifest.minimal) == set(graph)
    with zipfile.ZipFile(out) as bundle:
        assert [r["name"] for r in json.loads(bundle.read("min-deps.json").decode())] == manifest.minimal


@pytest.mark.parametrize("version", ["2.7", "newest"])
def test_a_full_disk_is_one_clear_line_and_leaves_nothing(version, pyz, conda_site, example_software, tiny_disk):
    with open(os.path.join(example_software, "field.dat"), "wb") as handle:
        handle.write(os.urandom(600000))  # more than the 256 KiB disk holds
    proc = run_pm(find_python(version), pyz, pack_args(example_software, os.path.join(tiny_disk, "b.zip")),
                  conda_site.env())
    line = one_error_line(proc)
    assert "cannot write the bundle %s" % os.path.join(tiny_disk, "b.zip") in line, line
    assert "No space left on device" in line and "free some space there" in line
    assert os.listdir(tiny_disk) == []


@pytest.mark.parametrize("version", ["2.7", "newest"])
def test_ctrl_c_while_sending_leaves_no_bundle_behind(version, pyz, conda_site, example_software, tmp_path):
    """The server is a loopback socket that answers pack's check as a pm server does, then takes the
    upload and never answers."""
    import signal
    import socket
    import subprocess
    import threading
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    received = []

    def swallow():
        check, _ = listener.accept()
        check.recv(65536)
        check.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: 3\r\n\r\n{}\n")
        check.close()
        connection, _ = listener.accept()
        while connection.recv(65536):
            received.append(1)
    threading.Thread(target=swallow, daemon=True).start()
    temp = tmp_path / "tmp"
    temp.mkdir()
    url = "http://127.0.0.1:%d" % listener.getsockname()[1]
    proc = subprocess.Popen([find_python(version), pyz, "pack", "-d", example_software, "-e", "heatsim-env",
                             "--server", url, "--yes"], env=conda_site.env(TMPDIR=str(temp)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert wait_until(lambda: received, timeout=60), "the upload never started"
    proc.send_signal(signal.SIGINT)  # mid-upload: the server takes the body and never answers
    out, err = proc.communicate(timeout=30)
    listener.close()
    assert received and proc.returncode == 130, err
    assert os.listdir(str(temp)) == [], "the bundle made for sending is gone"


def test_pack_under_python27_and_lang_c_takes_non_ascii_paths(pyz, conda_site, tmp_path):
    software = tmp_path / "donn\u00e9es"
    software.mkdir()
    (software / "f\u00e9.txt").write_text("x\n")
    prefix = conda_site.create(str(tmp_path / "env\u00e9"), ["heatplot"])
    env = conda_site.env(LANG="C", LC_ALL="C")
    out = str(tmp_path / "b.zip")
    proc = run_pm(find_python("2.7"), pyz, ["pack", "-d", str(software), "-n", "donnees", "-e", prefix, "-o", out,
                                            "--yes"], env)
    assert proc.returncode == 0, proc.stderr
    manifest = pm.Bundle.open(out).manifest
    assert manifest.env["prefix"] == prefix and "software/donn\u00e9es/f\u00e9.txt" in manifest.members
    missing = run_pm(find_python("2.7"), pyz, ["pack", "-d", str(tmp_path / "nowhere-\u00e9"), "-o", out, "--yes"],
                     env)
    assert "software directory %s does not exist" % (tmp_path / "nowhere-\u00e9") in one_error_line(missing)


def test_pack_keeps_in_tree_links_relative_and_leaves_its_own_bundle_out(pyz, conda_site, example_software, tmp_path):
    os.symlink(os.path.join(example_software, "heatsim.sh"), os.path.join(example_software, "abs-link"))
    out = os.path.join(example_software, "heatsim.zip")  # saved inside the tree it packs
    for python in ("2.7", "newest"):
        proc = run_pm(find_python(python), pyz, pack_args(example_software, out), conda_site.env())
        assert proc.returncode == 0, proc.stderr
        with zipfile.ZipFile(out) as bundle:
            names = bundle.namelist()
            assert bundle.read("software/heatsim/abs-link") == b"heatsim.sh"
        assert not [n for n in names if n.endswith(".zip") or n.endswith(".part")], names
        dest = tmp_path / ("unzipped-" + python)
        software = pm.Bundle.open(out).extract_software(str(dest))
        assert os.readlink(os.path.join(software, "abs-link")) == "heatsim.sh"


def test_two_names_that_decode_alike_are_named_at_pack_time(pyz, conda_site, example_software, tmp_path):
    folder = os.fsencode(example_software)
    for raw in (b"caf\xc3\xa9.txt", b"caf\xe9.txt"):  # UTF-8 and Latin-1 spellings of the same name
        with open(os.path.join(folder, raw), "wb") as handle:
            handle.write(raw)
    for python in ("2.7", "newest"):
        line = one_error_line(run_pm(find_python(python), pyz, pack_args(example_software, str(tmp_path / "b.zip")),
                                     conda_site.env()))
        assert "once their names are decoded" in line and "caf" in line, line
        assert not os.path.exists(str(tmp_path / "b.zip"))


def test_an_unreadable_folder_stops_pack_unless_skipped(tmp_path, monkeypatch, capsys):
    """Tests run as root, who reads every folder, so a stand-in os.scandir refuses one folder; the
    probe's writer runs unchanged."""
    probe = pm.load_probe()
    software = tmp_path / "sim"
    (software / "secret").mkdir(parents=True)
    (software / "run.sh").write_text("echo\n")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("secret"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", scandir)
    writer = probe.BundleWriter(str(tmp_path / "b.zip"))
    with pytest.raises(probe.PmError) as caught:
        writer.add_software(str(software), [])
    writer.abort()
    assert "cannot read the folder %s" % (software / "secret") in caught.value.what
    assert "--skip-unreadable" in caught.value.fix
    writer = probe.BundleWriter(str(tmp_path / "b.zip"))
    writer.add_software(str(software), [], skip_unreadable=True)
    writer.abort()
    assert "cannot be read (Permission denied); it is left out" in capsys.readouterr().err


@pytest.mark.parametrize("variable", ["CONDA_HOME", "CONDA_ROOT_DIR"])
def test_pack_finds_conda_through_the_original_tools_variables(variable, pyz, conda_site, example_software, tmp_path):
    env = conda_site.env(PATH="/usr/bin:/bin", **{variable: conda_site.root})
    out = str(tmp_path / "b.zip")
    proc = run_pm(find_python("2.7"), pyz, pack_args(example_software, out), env)
    assert proc.returncode == 0, proc.stderr
    assert pm.Bundle.open(out).manifest.source["conda"] == "25.11.1"


def test_pack_with_name_and_dir_saves_beside_the_folder_without_asking(pyz, conda_site, example_software):
    proc = run_pm(find_python("2.7"), pyz, ["pack", "-n", "heatsim", "-d", example_software, "-e", "heatsim-env"],
                  conda_site.env(), stdin="")
    beside = os.path.join(os.path.dirname(example_software), "heatsim.zip")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == beside and pm.Bundle.open(beside).manifest.name == "heatsim"


def test_names_that_differ_only_in_case_stop_pack_and_a_fifo_is_left_out_with_a_note(pyz, conda_site,
                                                                                      example_software, tmp_path):
    os.mkfifo(os.path.join(example_software, "pipe"))
    out = str(tmp_path / "b.zip")
    proc = run_pm(find_python("2.7"), pyz, pack_args(example_software, out), conda_site.env())
    assert proc.returncode == 0, proc.stderr
    assert "pipe is not a file, folder or link" in proc.stderr
    with open(os.path.join(example_software, "ReadMe"), "w") as handle:
        handle.write("a\n")
    with open(os.path.join(example_software, "README"), "w") as handle:
        handle.write("b\n")
    for python in ("2.7", "newest"):
        line = one_error_line(run_pm(find_python(python), pyz, pack_args(example_software, str(tmp_path / "c.zip")),
                                     conda_site.env()))
        assert "differ only in case" in line and "ReadMe" in line and "README" in line, line
        assert not os.path.exists(str(tmp_path / "c.zip"))


@pytest.mark.parametrize("version", ["2.7", "newest"])
def test_a_software_folder_whose_name_is_not_utf8_packs_unpacks_and_extracts(version, pyz, conda_site,
                                                                             example_software, tmp_path):
    odd = os.path.join(os.fsencode(str(tmp_path)), b"caf\xe9-sim")
    os.rename(os.fsencode(example_software), odd)
    out = str(tmp_path / "b.zip")
    proc = run_pm(find_python(version), pyz, ["pack", "-n", "cafesim", "-d", os.fsdecode(odd), "-e", "heatsim-env",
                                              "-o", out, "--yes"], conda_site.env())
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    unpacked = run_pm(find_python("newest"), pyz, ["unpack", out], conda_site.env())
    assert unpacked.returncode == 0, unpacked.stderr
    bundle = pm.Bundle.open(out)
    software = bundle.extract_software(str(tmp_path / "work"))
    assert os.path.basename(software) == bundle.manifest.software_dir() == "caf\u00e9-sim"
    assert os.path.isfile(os.path.join(software, "heatsim.sh"))


@pytest.mark.parametrize("version", ["2.7", "newest"])
def test_the_readmes_pack_example_runs_in_a_script_without_asking_for_the_name(version, pyz, conda_site,
                                                                                example_software, tmp_path):
    """pack -d DIR -e ENV -o FILE, as the README writes it, with nothing to read on stdin: the name is
    the folder's, as --help says."""
    out = str(tmp_path / "mysim.bundle.zip")
    proc = subprocess.run([find_python(version), pyz, "pack", "-d", example_software, "-e", "heatsim-env", "-o", out],
                          env=conda_site.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Software name" not in proc.stderr
    assert pm.Bundle.open(out).manifest.name == "heatsim"


def test_dry_run_gives_the_real_total_size_of_what_would_be_carried(pyz, conda_site, example_software, tmp_path):
    out = str(tmp_path / "never.zip")
    proc = run_pm(find_python("newest"), pyz, pack_args(example_software, out, "--with-packages", "--dry-run"),
                  conda_site.env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    total = proc.stdout.strip().splitlines()[-1]
    assert total.startswith("5 packages, ") and "0.0 MiB" not in total and "not counted" not in total, total
    assert float(total.split(", ")[1].split()[0]) > 0 or "KiB" in total, total
    assert not os.path.exists(out)


@pytest.mark.parametrize("version", ["2.7", "newest"])
def test_a_bundle_pack_could_not_send_is_the_one_thing_kept_and_said_where(version, pyz, conda_site,
                                                                          example_software, tmp_path):
    """The server answers pack's check as a pm server does, then refuses the upload (507)."""
    import socket
    import threading
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(2)

    def answer(body, status):
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.sendall(b"HTTP/1.0 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
                           + str(len(body)).encode() + b"\r\n\r\n" + body)
        connection.close()

    threading.Thread(target=lambda: (answer(b"{}\n", b"200 OK"),
                                     answer(b'{"error": "the store is full"}\n', b"507 Full")), daemon=True).start()
    temp = tmp_path / "tmp"
    temp.mkdir()
    url = "http://127.0.0.1:%d" % listener.getsockname()[1]
    proc = run_pm(find_python(version), pyz, ["pack", "-d", example_software, "-e", "heatsim-env", "--server", url,
                                              "--yes"], conda_site.env(TMPDIR=str(temp)))
    listener.close()
    assert proc.returncode == 2, proc.stderr
    kept = [os.path.join(folder, f) for folder, _, files in os.walk(str(temp)) for f in files]
    assert len(kept) == 1 and kept[0].endswith("heatsim.bundle.zip"), kept
    assert "the bundle is kept at %s" % kept[0] in proc.stderr
    assert "pm.pyz send %s --server %s" % (kept[0], url) in proc.stderr
    assert pm.Bundle.open(kept[0]).manifest.name == "heatsim"
