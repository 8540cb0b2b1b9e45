"""Bundles refused before anything is written: device files, names that differ only in case, zip
bombs, truncated files and members that do not match their sha256. Real pm.pyz unpack and a real
server on 127.0.0.1; the store is compared before and after."""
import hashlib
import json
import os
import stat
import zipfile

import pytest

import pm
from conftest import find_python, read_bytes, run_pm
from servers import Server, synthetic_bundle


def unpack(pyz, home, bundle, *extra):
    return run_pm(find_python("newest"), pyz, ["unpack", bundle] + list(extra), dict(os.environ, PM_HOME=home))


def store_snapshot(home):
    found = {}
    for root, _, files in os.walk(home):
        for name in files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, home)] = hashlib.sha256(read_bytes(path)).hexdigest()
    return found


def with_entry(bundle, out, name, data, mode):
    """A copy of bundle with one more software entry of the given mode, in its manifest too."""
    with zipfile.ZipFile(bundle) as old:
        members = [(info, old.read(info)) for info in old.infolist() if info.filename != "manifest.json"]
        manifest = json.loads(old.read("manifest.json").decode())
    manifest["members"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    with zipfile.ZipFile(out, "w") as new:
        for info, member in members:
            new.writestr(info, member)
        info = zipfile.ZipInfo(name)
        info.external_attr = mode << 16
        new.writestr(info, data)
        new.writestr("manifest.json", json.dumps(manifest))
    return out


@pytest.fixture
def stored(pyz, tmp_path):
    """A store holding one good revision of 'ok', to show that refusals leave it as it was."""
    home = str(tmp_path / "store")
    good = synthetic_bundle(str(tmp_path / "good.zip"), "ok", b"good")
    assert unpack(pyz, home, good).returncode == 0
    return home, store_snapshot(home)


@pytest.mark.parametrize("mode, kind", [(stat.S_IFCHR | 0o644, "a character device"),
                                        (stat.S_IFBLK | 0o644, "a block device"),
                                        (stat.S_IFIFO | 0o644, "a fifo"), (stat.S_IFSOCK | 0o644, "a socket")],
                         ids=["chr", "blk", "fifo", "sock"])
def test_device_files_fifos_and_sockets_are_refused_by_name(mode, kind, pyz, stored, tmp_path):
    home, before = stored
    good = synthetic_bundle(str(tmp_path / "base.zip"), "ok", b"x")
    bundle = with_entry(good, str(tmp_path / "dev.zip"), "software/ok/null", b"", mode)
    proc = unpack(pyz, home, bundle)
    assert proc.returncode == 2 and "software/ok/null is %s" % kind in proc.stderr, proc.stderr
    assert store_snapshot(home) == before


def test_names_that_differ_only_in_case_are_refused_naming_both(pyz, stored, tmp_path):
    home, before = stored
    bundle = synthetic_bundle(str(tmp_path / "case.zip"), "ok", b"x",
                              {"software/ok/README": b"a", "software/ok/ReadMe": b"b"})
    proc = unpack(pyz, home, bundle)
    assert proc.returncode == 2, proc.stderr
    assert "software/ok/README and software/ok/ReadMe differ only in case" in proc.stderr
    assert store_snapshot(home) == before


def test_a_zip_bomb_is_refused_unless_its_ratio_is_allowed(pyz, stored, tmp_path):
    home, before = stored
    bomb = synthetic_bundle(str(tmp_path / "bomb.zip"), "ok", bytes(256 << 20))
    assert os.path.getsize(bomb) < 1 << 20, "256 MiB of zeros packs to under 1 MiB"
    proc = unpack(pyz, home, bomb)
    assert proc.returncode == 2 and "unpacks to 256 MiB" in proc.stderr and "--max-ratio" in proc.stderr
    assert store_snapshot(home) == before
    srv = Server(pyz, home, find_python("newest"))
    try:
        status, body = srv.request("PUT", "/bundles/ok", read_bytes(bomb))
        assert status == 400 and b"over the limit" in body
        assert store_snapshot(home) == dict(before, **{k: v for k, v in store_snapshot(home).items()
                                                       if k.startswith("server.") or k == "migrate.py"})
    finally:
        srv.stop()
    allowed = unpack(pyz, home, bomb, "--max-ratio", "0")
    assert allowed.returncode == 0, allowed.stderr


def test_a_truncated_bundle_and_a_member_that_does_not_match_its_sha256_are_refused(pyz, stored, tmp_path):
    home, before = stored
    good = synthetic_bundle(str(tmp_path / "base.zip"), "ok", os.urandom(100000))
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(read_bytes(good)[:60000])
    proc = unpack(pyz, home, str(truncated))
    assert proc.returncode == 2 and "not a readable bundle" in proc.stderr, proc.stderr

    liar = str(tmp_path / "liar.zip")
    with zipfile.ZipFile(good) as old, zipfile.ZipFile(liar, "w") as new:
        manifest = json.loads(old.read("manifest.json").decode())
        manifest["members"]["software/ok/data.bin"]["sha256"] = "0" * 64
        for info in old.infolist():
            new.writestr(info, json.dumps(manifest) if info.filename == "manifest.json" else old.read(info))
    proc = unpack(pyz, home, liar)
    assert proc.returncode == 2, proc.stderr
    assert "software/ok/data.bin does not match its sha256 in the manifest" in proc.stderr
    assert store_snapshot(home) == before


def test_a_bundle_file_its_user_cannot_read_is_refused_in_one_line(pyz, tmp_path):
    """unpack copied the file before it was opened: one its user may not read ended in 'unexpected
    PermissionError' (exit 3). pm runs as the real user 'nobody' (setpriv; tests run as root, whom no mode
    stops), with Debian's own python3 (pyenv's live under /root); each verb that takes a bundle file refuses it."""
    import shutil
    import subprocess
    import tempfile
    python, setpriv = "/usr/bin/python3", shutil.which("setpriv")
    assert os.getuid() == 0 and os.path.exists(python) and setpriv, "this test needs root, /usr/bin/python3 and setpriv"
    shared = tempfile.mkdtemp(prefix="pm-nobody-", dir="/tmp")  # outside root-only folders (pytest's, TMPDIR)
    try:
        os.chmod(shared, 0o777)
        shutil.copy(pyz, shared)
        bundle = synthetic_bundle(os.path.join(shared, "ok.zip"), "ok")
        os.chmod(bundle, 0)
        env = {"PATH": "/usr/bin:/bin", "HOME": shared, "PM_HOME": os.path.join(shared, "home"), "LANG": "C.UTF-8",
               "TMPDIR": shared}
        for verb in (["unpack", bundle], ["doctor", "--bundle", bundle], ["send", bundle, "--server", "http://127.0.0.1:9"]):
            proc = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", python,
                                   os.path.join(shared, "pm.pyz")] + verb, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, universal_newlines=True, env=env, timeout=120)
            assert proc.returncode == 2 and "%s is not a readable bundle (Permission denied)" % bundle in \
                proc.stderr.strip().splitlines()[-1], (verb, proc.stderr)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_folder_or_fifo_given_as_a_bundle_is_named_for_what_it_is(pyz, tmp_path):
    """A folder or a fifo given as the bundle was 'no such bundle file', which sends the user looking for a
    missing file; it is named for what it is, by each verb that takes a bundle file, and a fifo is never
    opened (opening one waits for a writer)."""
    folder, fifo = tmp_path / "bundle-dir.zip", tmp_path / "bundle-fifo.zip"
    folder.mkdir()
    os.mkfifo(str(fifo))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "PM_HOME": str(tmp_path / "store")}
    for path, kind in ((str(folder), "a folder"), (str(fifo), "a fifo, socket or device")):
        for verb in (["unpack", path], ["doctor", "--bundle", path], ["send", path, "--server", "http://127.0.0.1:9"]):
            proc = run_pm(find_python("newest"), pyz, verb, env, timeout=60)
            assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
                "pm: error: %s is not a file but %s" % (path, kind)), (verb, proc.stderr)


@pytest.mark.parametrize("member, data, message", [
    ("env.yml", b"dependencies: {a: b}\n", "env.yml in"),
    ("min-deps.json", b"{not json", "min-deps.json in"),
    ("min-deps.json", b'{"a": 1}', "is not a list"),
    ("conda-list.json", b"[{", "conda-list.json in"),
    ("conda-list.json", b'{"python": "3.11"}', "conda-list.json in"),
], ids=["env.yml-mapping", "min-deps-not-json", "min-deps-not-a-list", "conda-list-not-json", "conda-list-not-a-list"])
def test_an_environment_that_migrate_could_not_read_is_refused_at_unpack_and_upload(member, data, message, pyz,
                                                                                    stored, tmp_path):
    home, before = stored
    bundle = synthetic_bundle(str(tmp_path / "env.zip"), "ok", b"x", {member: data})
    proc = unpack(pyz, home, bundle)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert store_snapshot(home) == before


def test_a_bundle_once_opened_is_read_whole_even_when_its_revision_is_replaced(tmp_path):
    """The original protocol's /min completes a stored revision by renaming a new file over it: a
    migration that opened the old one goes on reading the old one, never a mix of the two."""
    from servers import synthetic_bundle
    path = synthetic_bundle(str(tmp_path / "0001.zip"), "sim", payload=b"first")
    bundle = pm.Bundle.open(path)
    synthetic_bundle(str(tmp_path / "next.zip"), "sim", payload=b"second",
                     extra={"env.yml": b"name: sim\ndependencies:\n  - python=3.13\n"})
    os.replace(str(tmp_path / "next.zip"), path)
    assert "python=3.12" in bundle.read_text("env.yml")
    software = bundle.extract_software(str(tmp_path / "work"))
    with open(os.path.join(software, "data.bin"), "rb") as handle:
        assert handle.read() == b"first"
