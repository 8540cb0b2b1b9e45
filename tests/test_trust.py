"""What a bundle, a web page or a shared machine can make pm do (the trust model): crafted carried
packages, bundles, requests and terminal text, each driven through pm.pyz; the containment writer hit
directly; and a seeded fuzz of carried packages through pm's linker. Nothing may be written outside the
prefix, the attempt or the store, no bundle code may run, and memory stays bounded."""
import base64
import bz2
import hashlib
import io
import json
import os
import random
import resource
import socket
import stat
import subprocess
import tarfile
import zipfile

import pytest

import pm
from conftest import attempt_dirs, find_python, read_result, run_pm, wait_until
from servers import Server, TOKEN, exchange, synthetic_bundle


def tarball(members):
    """A .tar.bz2 of members: (name, data bytes | ('link', target) | ('dir',), mode)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:bz2") as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, 1700000000
            if isinstance(data, tuple) and data[0] == "link":
                info.type, info.linkname = tarfile.SYMTYPE, data[1]
                tar.addfile(info)
            elif isinstance(data, tuple):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def package(name, members, info=None):
    """(file name, archive bytes, repodata entry) of a carried package with info/index.json first."""
    index = {"name": name, "version": "1.0", "build": "0", "build_number": 0, "depends": [], "subdir": "linux-64"}
    head = [("info/index.json", json.dumps(index).encode(), 0o644)]
    head += [("info/" + key, value if isinstance(value, bytes) else json.dumps(value).encode(), 0o644)
             for key, value in sorted((info or {}).items())]
    data = tarball(head + list(members))
    entry = dict(index, md5=hashlib.md5(data).hexdigest(), sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    return "%s-1.0-0.tar.bz2" % name, data, entry


def carried_bundle(path, packages, files=None, env_yml=None, repodata_names=None):
    """A bundle packed --with-packages for linux-64 (pm's own BundleWriter): software/trust/check.sh and
    the packages as its channel; repodata_names renames entries (a crafted repodata)."""
    writer = pm.PROBE.BundleWriter(path)
    members = {"env.yml": env_yml or b"name: trust\ndependencies:\n  - p=1.0=0\n", "min-deps.json": b"[]",
               "software/trust/check.sh": b"echo checked\n"}
    members.update(files or {})
    entries = {}
    for fn, data, entry in packages:
        members["channel/linux-64/" + fn] = data
        entries[(repodata_names or {}).get(fn, fn)] = entry
    repodata = json.dumps({"info": {"subdir": "linux-64"}, "packages": entries}).encode()
    members["channel/linux-64/repodata.json"] = repodata
    members["channel/linux-64/repodata.json.bz2"] = bz2.compress(repodata)
    empty = json.dumps({"info": {"subdir": "noarch"}, "packages": {}}).encode()
    members["channel/noarch/repodata.json"] = empty
    for member, data in members.items():
        writer.add_bytes(member, data, 0o755 if member.endswith(".sh") else 0o644)
    carried = [{"file": "channel/linux-64/" + fn, "name": e["name"], "version": "1.0", "build": "0"}
               for fn, _, e in packages]
    writer.finish(pm.PROBE.make_manifest("trust", None, {"dir": "trust"},
                                         packages={"platform": "linux-64", "carried": carried, "missing": []}))
    return path


# Runs a command as its child and prints the child's peak RSS: measured from a small parent, as Linux
# counts a forked child's peak from its parent's size at the fork (pytest's, hundreds of MiB).
PEAK_RSS = ("import resource, subprocess, sys\n"
            "code = subprocess.call(sys.argv[1:])\n"
            "sys.stderr.write('PEAK_RSS_KIB=%d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
            "sys.exit(code)\n")


def migrate_measured(pyz, bundle, tmp_path, *extra):
    """pm.pyz migrate --no-conda with no conda and no network; (exit code, stdout, stderr, peak RSS in MiB)."""
    config = tmp_path / "trust.ini"
    config.write_text("[trust]\noutput_dir = %s\npackage_managers = conda\ntests = check\n[test_check]\n"
                      "exec = sh check.sh\n" % (tmp_path / "installed"))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "PM_HOME": str(tmp_path / "store"),
           "LANG": "C.UTF-8"}
    python = find_python("newest")
    proc = subprocess.run([python, "-c", PEAK_RSS, "unshare", "-n", python, pyz, "migrate", "trust", str(config),
                           "--bundle", bundle, "--no-conda"] + list(extra), env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
    err, _, peak = proc.stderr.rpartition("PEAK_RSS_KIB=")
    return proc.returncode, proc.stdout, err, int(peak.strip()) / 1024.0


def outside_writes(tmp_path):
    """What is in tmp_path besides the store, HOME, TMPDIR, the bundles, the config and the output
    logs: what escaped (the walk does not enter the store, where pm may write)."""
    kept = ("store", "home", "own-store", "own-cache")
    return sorted(name for name in os.listdir(str(tmp_path))
                  if name not in kept and not name.endswith((".zip", ".ini", ".txt")))


def envs_left(tmp_path):
    folder = tmp_path / "store" / "trust" / "envs"
    return sorted(os.listdir(str(folder))) if folder.is_dir() else []


CRAFTED = {
    "an entry point named ../../../../escaped": ("noarch", [("site-packages/ok/__init__.py", b"", 0o644)],
                                                 {"link.json": {"noarch": {"type": "python", "entry_points": [
                                                     "../../../../escaped = ok:main"]}}}, "is not NAME = module:function"),
    "an entry point with an absolute name": ("noarch", [("site-packages/ok/__init__.py", b"", 0o644)],
                                             {"link.json": {"noarch": {"type": "python", "entry_points": [
                                                 "/tmp/escaped = ok:main"]}}}, "is not NAME = module:function"),
    "shell lines in an entry point's target": ("noarch", [("site-packages/ok/__init__.py", b"", 0o644)],
                                               {"link.json": {"noarch": {"type": "python", "entry_points": [
                                                   "ok = os:system\nimport os; os.system('touch escaped')"]}}},
                                               "is not NAME = module:function"),
    "a chain of links out of the prefix": ("plain", [("a/b/up", ("link", ".."), 0o777),
                                                     ("a/b/up/bin", ("link", "../../../escaped-dir"), 0o777),
                                                     ("a/b/up/bin/x", b"x\n", 0o644)], {}, "leads out"),
    "a '..' member": ("plain", [("../../escaped", b"x\n", 0o644)], {}, "unsafe path"),
    "an absolute link": ("plain", [("bin/evil", ("link", "/etc"), 0o777)], {}, "leads outside"),
    "an empty prefix placeholder": ("plain", [("share/data", b"x" * 4096, 0o644)],
                                    {"has_prefix": b"'' text share/data\n"}, "too short to be a build prefix"),
    "a hundred MiB of zeros": ("plain", [("share/zeros", b"\0" * (100 << 20), 0o644)], {}, "(a bomb"),
    "twenty thousand files": ("plain", [("f/%05d" % n, b"", 0o644) for n in range(20000)], {}, "files for its size"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_carried_package_writes_nothing_outside_and_nothing_stays(case, pyz, tmp_path):
    kind, members, info, message = CRAFTED[case]
    packages = []
    if kind == "noarch":
        packages.append(package("python", [("bin/python", b"#!/bin/sh\n", 0o755)]))
        fn, data, entry = package("p", members, info)
        entry["noarch"] = "python"
        packages.append((fn, data, entry))
    else:
        packages.append(package("p", members, info))
    bundle = carried_bundle(str(tmp_path / "crafted.zip"), packages)
    code, out, err, rss = migrate_measured(pyz, bundle, tmp_path)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert message in last and "Traceback" not in err, last
    assert envs_left(tmp_path) == [] and outside_writes(tmp_path) == []
    assert not list(tmp_path.glob("**/escaped*")) and not os.path.exists("/tmp/escaped")
    assert rss < 256, "peak RSS %.0f MiB" % rss


def test_repodata_file_names_are_plain_names_of_the_channel(pyz, tmp_path):
    fn, data, entry = package("p", [("share/x", b"x\n", 0o644)])
    bundle = carried_bundle(str(tmp_path / "crafted.zip"), [(fn, data, entry)],
                            repodata_names={fn: "../../../../../../tmp/p-1.0-0.tar.bz2"})
    code, out, err, _ = migrate_measured(pyz, bundle, tmp_path)
    assert code == 2 and "which is not a package file" in err.strip().splitlines()[-1], err
    assert envs_left(tmp_path) == [] and outside_writes(tmp_path) == []


def test_modes_follow_the_umask_and_never_keep_setuid_and_dot_names_keep_their_dot(pyz, tmp_path):
    fn, data, entry = package("p", [("./.nonadmin", b"", 0o644), ("bin/tool", b"#!/bin/sh\necho tool\n", 0o4777),
                                    ("share/open", b"x\n", 0o666)])
    bundle = carried_bundle(str(tmp_path / "modes.zip"), [(fn, data, entry)])
    code, out, err, _ = migrate_measured(pyz, bundle, tmp_path)
    assert code == 0, err
    prefix = read_result(attempt_dirs(str(tmp_path / "store"), "trust")[-1])["env_prefix"]
    assert os.path.isfile(os.path.join(prefix, ".nonadmin")) and not os.path.exists(os.path.join(prefix, "nonadmin"))
    assert stat.S_IMODE(os.stat(os.path.join(prefix, "bin", "tool")).st_mode) == 0o755, "no setuid, umask applied"
    assert stat.S_IMODE(os.stat(os.path.join(prefix, "share", "open")).st_mode) == 0o644


def test_a_software_tree_that_says_0777_is_installed_as_the_umask_says(pyz, tmp_path):
    fn, data, entry = package("p", [("share/x", b"x\n", 0o644)])
    path = str(tmp_path / "open.zip")
    writer = pm.PROBE.BundleWriter(path)
    for member, body, mode in (("env.yml", b"name: trust\ndependencies:\n  - p=1.0=0\n", 0o644),
                               ("min-deps.json", b"[]", 0o644), ("software/trust/check.sh", b"echo ok\n", 0o777),
                               ("channel/linux-64/" + fn, data, 0o644)):
        writer.add_bytes(member, body, mode)
    repodata = json.dumps({"info": {"subdir": "linux-64"}, "packages": {fn: entry}}).encode()
    writer.add_bytes("channel/linux-64/repodata.json", repodata)
    writer.finish(pm.PROBE.make_manifest("trust", None, {"dir": "trust"}, packages={
        "platform": "linux-64", "carried": [{"file": "channel/linux-64/" + fn, "name": "p"}], "missing": []}))
    code, out, err, _ = migrate_measured(pyz, path, tmp_path)
    assert code == 0, err
    assert stat.S_IMODE(os.stat(str(tmp_path / "installed" / "trust" / "check.sh")).st_mode) == 0o755


def test_force_replaces_only_what_pm_installed(pyz, tmp_path):
    fn, data, entry = package("p", [("share/x", b"x\n", 0o644)])
    bundle = carried_bundle(str(tmp_path / "b.zip"), [(fn, data, entry)])
    precious = tmp_path / "installed" / "trust"
    precious.mkdir(parents=True)
    (precious / "thesis.tex").write_text("years of work\n")
    code, out, err, _ = migrate_measured(pyz, bundle, tmp_path, "--force")
    assert code == 2 and "was not installed by pm" in err.strip().splitlines()[-1], err
    assert (precious / "thesis.tex").read_text() == "years of work\n"
    (precious / "thesis.tex").unlink()
    precious.rmdir()
    assert migrate_measured(pyz, bundle, tmp_path)[0] == 0
    code, out, err, _ = migrate_measured(pyz, bundle, tmp_path, "--force")
    assert code == 0, "what pm installed, --force replaces: %s" % err


@pytest.mark.parametrize("spec", ["--file=/etc/hostname", "--channel=http://evil.example", "-c"])
def test_env_yml_specs_are_package_specs_never_options(spec, pyz, tmp_path):
    fn, data, entry = package("p", [("share/x", b"x\n", 0o644)])
    env_yml = ("name: trust\ndependencies:\n  - %s\n" % json.dumps(spec)).encode()
    bundle = carried_bundle(str(tmp_path / "b.zip"), [(fn, data, entry)], env_yml=env_yml)
    code, out, err, _ = migrate_measured(pyz, bundle, tmp_path)
    assert code == 2 and "which is not a package spec" in err.strip().splitlines()[-1], err
    assert not (tmp_path / "store" / "trust").exists() or attempt_dirs(str(tmp_path / "store"), "trust") == []


def test_pip_is_given_only_name_equals_version():
    env = pm.EnvFile("x", [], ["python=3.12"], ["numpy==1.26.4", "--index-url http://evil.example/simple",
                                                 "-e git+https://evil.example/x.git", "ok[extra]==1.0",
                                                 "-r /etc/shadow"])
    assert pm.pip_entries_from_an_index(env, None).pip == ["numpy==1.26.4", "ok[extra]==1.0"]


def status_of(answer):
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else None


def test_the_server_refuses_names_with_a_newline_odd_origins_and_odd_tokens(pyz, tmp_path):
    srv = Server(pyz, str(tmp_path / "store"), find_python("newest"))
    try:
        bundle = synthetic_bundle(str(tmp_path / "victim.zip"), "victim")
        with open(bundle, "rb") as handle:
            data = handle.read()
        status, body = srv.request("PUT", "/bundles/victim%0A", data)
        assert status == 400 and not any("\n" in n for n in os.listdir(srv.home))
        answer = exchange(srv.record["port"], "GET /bundles HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                             "t\u00e9st-\u20ac\r\nConnection: close\r\n\r\n".encode("utf-8"))
        assert status_of(answer) == 401, "a non-ASCII token is a refusal, not an internal error: %r" % answer[:200]
        with open(os.path.join(srv.home, "server.log")) as handle:
            assert "Traceback" not in handle.read()
    finally:
        srv.stop()
    open_server = Server(pyz, str(tmp_path / "open-store"), find_python("newest"), None, "--no-token")
    open_server.token = None
    port = open_server.record["port"]
    yml = json.dumps({"name": "evil", "data": base64.urlsafe_b64encode(b"name: evil\n").decode()}).encode()
    try:
        for origin in ("null", "http://127.0.0.1:%d" % (port + 1), "https://127.0.0.1:%d" % port,
                       "http://localhost:notaport"):
            status, _ = open_server.request("POST", "/yml", yml, {"Origin": origin, "Content-Type": "text/plain"})
            assert status == 403, origin
        assert not os.path.exists(os.path.join(open_server.home, "evil"))
        status, _ = open_server.request("POST", "/yml", yml, {"Origin": "http://127.0.0.1:%d" % port})
        assert status == 200, "this server's own origin is this machine"
    finally:
        open_server.stop()


def test_a_body_that_trickles_is_cut_off_and_real_clients_are_still_served(pyz, tmp_path):
    srv = Server(pyz, str(tmp_path / "store"), find_python("newest"), TOKEN, "--timeout", "2", "--max-connections", "3")
    port = srv.record["port"]
    socks = []
    try:
        for _ in range(3):  # each declares 4 GiB and sends a byte now and then
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"PUT /bundles/slow HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n"
                         b"Content-Length: %d\r\n\r\n" % (TOKEN.encode(), 4 << 30))
            socks.append(sock)
        cut = []

        def trickle():
            """One byte more on every connection still open; true once the server has cut all three."""
            for sock in socks:
                if sock in cut:
                    continue
                try:
                    sock.sendall(b"x")
                except OSError:
                    cut.append(sock)
            return len(cut) == 3
        assert wait_until(trickle, timeout=8, every=0.5), "a trickling body holds its slot for as long as it declares"
        assert srv.request("GET", "/bundles")[0] == 200
    finally:
        for sock in socks:
            sock.close()
        srv.stop()


def test_bundle_text_reaches_the_terminal_with_its_control_characters_shown(pyz, tmp_path):
    fn, data, entry = package("p", [("share/x", b"x\n", 0o644)])
    bundle = carried_bundle(str(tmp_path / "b.zip"), [(fn, data, entry)])

    def evil(members, manifest):
        manifest["source"] = {"hostname": "base\x1b]52;c;ZXZpbA==\x07\x1b[2J", "os": "Linux\x1b[31m"}
    from conftest import rewrite_bundle
    bundle = rewrite_bundle(bundle, str(tmp_path / "evil.zip"), evil)
    code, out, err, _ = migrate_measured(pyz, bundle, tmp_path)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "PM_HOME": str(tmp_path / "store")}
    report = run_pm(find_python("newest"), pyz, ["report", "trust"], env)
    listed = run_pm(find_python("newest"), pyz, ["list"], env)
    for text in (report.stdout, listed.stdout, err):
        assert "\x1b" not in text and "\x07" not in text
    assert "base\\x1b]52;c;ZXZpbA==\\x07\\x1b[2J" in report.stdout


def test_a_small_upload_that_parses_into_gigabytes_is_refused_before_parsing(pyz, tmp_path):
    srv = Server(pyz, str(tmp_path / "store"), find_python("newest"))
    try:
        bundle = synthetic_bundle(str(tmp_path / "amp.zip"), "amp", extra={
            "env.yml": b"name: amp\ndependencies:\n" + b"  - a\n" * (3 << 20)})
        assert os.path.getsize(bundle) < 200 << 10
        with open(bundle, "rb") as handle:
            status, body = srv.request("PUT", "/bundles/amp", handle.read())
        assert status == 400 and b"far more than any real one" in body, body
    finally:
        srv.stop()


def test_the_original_protocols_zip_is_measured_before_it_is_inflated(pyz, tmp_path):
    srv = Server(pyz, str(tmp_path / "store"), find_python("newest"), TOKEN, "--max-ratio", "50")
    try:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("bomb/zeros", b"\0" * (80 << 20))
        body = json.dumps({"name": "bomb", "data": base64.urlsafe_b64encode(buffer.getvalue()).decode()}).encode()
        yml = json.dumps({"name": "bomb", "data": base64.urlsafe_b64encode(b"name: bomb\n").decode()}).encode()
        assert srv.request("POST", "/yml", yml)[0] == 200
        status, answer = srv.request("POST", "/zip", body)
        assert status == 400 and b"over the limit of 50 times" in answer, answer
    finally:
        srv.stop()


def test_the_containment_writer_refuses_every_way_out(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    writer = pm.Contained(str(root), max_bytes=1000, max_files=5)
    for rel in ("/abs", "../x", "a/../../x", "a//b", "./a", "a/.", "", "a\0b"):
        with pytest.raises(pm.PmError):
            writer.write(rel, io.BytesIO(b"x"), 0o644)
    os.symlink(str(tmp_path / "outside"), str(root / "out"))
    with pytest.raises(pm.PmError):
        writer.write("out/x", io.BytesIO(b"x"), 0o644)
    with pytest.raises(pm.PmError):
        writer.symlink("up", "..", "test")
    writer.symlink("in", "a", "test")
    writer.write("a/ok", io.BytesIO(b"x"), 0o4755)
    assert stat.S_IMODE(os.stat(str(root / "a" / "ok")).st_mode) & 0o7000 == 0
    with pytest.raises(pm.PmError):
        writer.write("big", io.BytesIO(b"x" * 2000), 0o644)
    assert os.listdir(str(tmp_path / "outside")) == []


def test_every_name_a_bundle_gives_is_held_to_one_path_rule(tmp_path):
    """Zip entries, the containment writer's names, single file names and listed folders were checked by
    five rules that disagreed ('a/./b', 'a//b' and 'C:x' passed some): one rule (path_problem) now, with
    the zip's folder entries ('a/') and line-borne paths (no control character) as its only variants."""
    writer = pm.Contained(str(tmp_path))
    bad = ["", "/abs", "..", "../x", "a/../../x", "a//b", "a/./b", "./a", "a/.", "a\0b", "a\\b", "C:x",
           "x" * 256, "a/" * 2001 + "b"]
    for name in bad:
        with pytest.raises(pm.PmError, match="unsafe path"):
            pm.safe_member_path(name)
        with pytest.raises(pm.PmError, match="unsafe path"):
            writer.write(name, io.BytesIO(b"x"), 0o644)
        assert not pm.is_one_path_component(name) and not pm.is_plain_line_path(name), name
    for name in ["a", "a/b.txt", "software/heatsim/src/x.py", "a b/\u00e9t\u00e9", ".hidden", "a..b"]:
        assert pm.safe_member_path(name) == name and pm.path_problem(name) is None
        writer.write(name + ".w", io.BytesIO(b"x"), 0o644)
        assert pm.is_plain_line_path(name)
    assert pm.safe_member_path("a/b/") == "a/b/" and pm.path_problem("a/b/") is not None
    assert pm.is_one_path_component("a.whl") and not pm.is_one_path_component("a/b")
    assert not pm.is_plain_line_path("a\nb") and pm.path_problem("a\nb") is None


def test_prefix_replacement_streams_and_matches_whole_file_replacement():
    rng = random.Random(7)
    old, new = "/opt/placeholder_" + "p" * 40, "/short/prefix"
    for _ in range(200):
        parts = [rng.choice([old.encode(), b"\0", b"abc", b"/opt/place", bytes([rng.randrange(256)])])
                 for _ in range(rng.randrange(1, 60))]
        data = b"".join(parts)
        for mode in ("text", "binary"):
            replacer = pm.PrefixReplacer(old, new, mode, "test")
            out, pos = [], 0
            while pos < len(data):
                step = rng.randrange(1, 40)
                out.append(replacer.feed(data[pos:pos + step], False))
                pos += step
            out.append(replacer.feed(b"", True))
            if mode == "text":
                expected = data.replace(old.encode(), new.encode())
            else:
                import re
                expected = re.sub(re.escape(old.encode()) + b"([^\0]*?)\0",
                                  lambda m: new.encode() + m.group(1) + b"\0" * (len(old) - len(new)) + b"\0", data)
            assert b"".join(out) == expected


FUZZ_NAMES = ["bin/x", "lib/a.so", "share/d/e", "../x", "/abs", "a/../../x", "./.hidden", ".", "a//b", "lib",
              "lib/up", "lib/up/x", "bin", "x" * 300, "dir/", "info/../../x", "site-packages/p/__init__.py",
              "python-scripts/s", "c/\u00e9", "LIB/A.SO"]


def fuzz_package(rng, number):
    members = []
    for _ in range(rng.randrange(1, 8)):
        name = rng.choice(FUZZ_NAMES)
        roll = rng.random()
        if roll < 0.3:
            members.append((name, ("link", rng.choice(["..", "../..", "/etc", "x", "lib", "up/../..", "../../outside",
                                                        "a/b"])), 0o777))
        elif roll < 0.35:
            members.append((name, ("dir",), 0o755))
        else:
            members.append((name, rng.choice([b"", b"x", b"/opt/placeholder_" + b"p" * 40 + b"\0tail\0",
                                              b"\0" * rng.choice([10, 5000])]), rng.choice([0o644, 0o4755, 0o777])))
    info = {}
    if rng.random() < 0.4:
        info["paths.json"] = {"paths": [{"_path": rng.choice(FUZZ_NAMES), "prefix_placeholder":
                              rng.choice(["", "/x", "/opt/placeholder_" + "p" * 40]),
                              "file_mode": rng.choice(["text", "binary"])}]}
    if rng.random() < 0.3:
        info["has_prefix"] = rng.choice([b"'' text bin/x\n", b"bin/x\n", b"/p text\n", b"\"unclosed\n"])
    if rng.random() < 0.3:
        info["link.json"] = rng.choice([{"noarch": {"type": "python", "entry_points": [
            rng.choice(["ok = a:b", "../x = a:b", "x = a:b\nrm", "=", "y = :"])]}}, {"noarch": "bad"}, [1, 2]])
    fn, data, entry = package("f%d" % number, members, info)
    if rng.random() < 0.2:
        entry["noarch"] = "python"
    return fn, data, entry


def test_fuzzed_carried_packages_never_write_outside_the_prefix(tmp_path):
    """2,000 seeded crafted packages (tar members, link.json, paths.json, has_prefix) linked by pm's
    linker in-process: after each, nothing exists outside the prefix, and memory stays bounded."""
    rng = random.Random(20261202)
    python_fn, python_data, python_entry = package("python", [("bin/python", b"#!/bin/sh\n", 0o755)])
    refused = linked = 0
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for number in range(2000):
        case = tmp_path / ("c%d" % (number % 50))
        channel = case / "channel" / "linux-64"
        channel.mkdir(parents=True)
        packages = [fuzz_package(rng, number), (python_fn, python_data, python_entry)]
        repodata = {}
        for fn, data, entry in packages:
            (channel / fn).write_bytes(data)
            repodata[fn] = entry
        (channel / "repodata.json").write_text(json.dumps({"packages": repodata}))
        prefix = case / "prefix"
        (prefix / "conda-meta").mkdir(parents=True)
        try:
            archives = pm.install_order(pm.carried_archives(str(case / "channel")))
            pm.link_environment(archives, str(prefix), 100)
            linked += 1
        except pm.PmError:
            refused += 1
        inside = str(prefix.resolve())
        for root, dirs, files in os.walk(str(case)):
            for name in dirs + files:
                path = os.path.join(root, name)
                assert path == str(prefix) or path.startswith((str(prefix) + os.sep, str(case / "channel"))), \
                    "case %d wrote %s" % (number, path)
                real = os.path.realpath(path)
                assert path.startswith(str(case / "channel")) or real == inside or \
                    real.startswith(inside + os.sep), "case %d: %s leads to %s" % (number, path, real)
        assert not (tmp_path / "outside").exists() and not list(tmp_path.glob("escaped*"))
        import shutil
        shutil.rmtree(str(case))
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024.0
    assert refused > 500 and linked > 100, (refused, linked)
    assert grown < 256, "peak RSS grew %.0f MiB" % grown


def test_the_umask_is_read_without_ever_setting_it_to_zero(monkeypatch, tmp_path):
    """Contained is made in the worker threads of extract_into_cache: reading the umask must not open a
    moment in which another thread's files are created group- and world-writable."""
    set_to = []
    real_umask = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: set_to.append(mask) or real_umask(mask))
    for _ in range(3):
        writer = pm.Contained(str(tmp_path))
        assert writer.umask == pm.current_umask()
    assert 0 not in set_to, "the umask was set to 0 while reading it"
    with open("/proc/self/status") as status:
        assert [int(line.split()[1], 8) for line in status if line.startswith("Umask:")] == [pm.current_umask()]


def test_migrates_summary_shows_the_bundles_text_with_its_control_characters(capsys, tmp_path):
    """migrate's own summary (stdout): rows named by the bundle (min-deps.json, python-dists.json) reach the
    terminal with their escape sequences shown, never sent."""
    import types
    evil = "zlib\x1b]52;c;ZXZpbA==\x07\x1b[2J"
    attempt = types.SimpleNamespace(path=str(tmp_path / "attempt"), result={"python": [
        {"requirement": "numpy\x1b[31m", "base_version": "1.0\x1b[0m", "version": "2.0", "drift": True}]})
    rows = [{"requirement": evil, "status": "skipped", "package": None},
            {"requirement": "x", "status": "installed", "package": "apt:" + evil}]
    result = pm.MigrationResult(attempt, [pm.TestResult("t\x1b[1m", "passed", 0, 0.5, "log", [])],
                                [pm.RequirementRow.from_json(row) for row in rows])
    pm.print_summary(result)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out, out
    assert "zlib\\x1b]52;c;ZXZpbA==\\x07\\x1b[2J" in out and "numpy\\x1b[31m" in out


def python_dists_bundle(tmp_path, dist, files=None):
    """A carried bundle (python with its site-packages) whose python-dists.json holds dist."""
    python = package("python", [("bin/python", b"#!/bin/sh\n", 0o755),
                                ("lib/python3.11/site-packages/keep.txt", b"", 0o644)])
    members = {"python-dists.json": json.dumps({"dists": [dist]}).encode()}
    members.update(files or {})
    return carried_bundle(str(tmp_path / "dists.zip"), [python], files=members,
                          env_yml=b"name: trust\ndependencies:\n  - python=1.0=0\n")


SOFTWARE = {"name": "trust", "version": "1.0", "site": "lib/python3.11/site-packages", "source": "editable",
            "software": True, "import_roots": ["."], "entry_points": "[console_scripts]\ntrust-run = os:getcwd\n"}


@pytest.mark.parametrize("field, value, message", [
    ("site", "VICTIM", "which is not lib/pythonX.Y/site-packages"),
    ("site", "DOTDOT", "which is not lib/pythonX.Y/site-packages"),
    ("import_roots", [".\nimport os; os.system('touch ESCAPED')"], "which is not a plain relative path"),
    ("import_roots", ["/etc"], "which is not a plain relative path"),
    ("import_roots", ["src/../../.."], "which is not a plain relative path"),
    ("import_roots", "src", "import_roots that are not a list"),
], ids=["absolute site", "dotdot site", "newline root", "absolute root", "dotdot root", "roots not a list"])
def test_python_dists_site_and_import_roots_are_plain_paths_inside_the_prefix_and_tree(field, value, message, pyz,
                                                                                      tmp_path):
    """python-dists.json's site chose where pm wrote the software's .pth, dist-info and entry points
    (aimed at ~/.local/lib/pythonX.Y/site-packages, code that runs at every Python start); an import
    root with a newline became an import line of the .pth. Refused with one line, exit 2."""
    victim = tmp_path / "victim" / "lib" / "python3.11" / "site-packages"
    victim.mkdir(parents=True)
    (tmp_path / "victim" / "bin").mkdir()
    if value == "VICTIM":
        value = str(victim)
    elif value == "DOTDOT":
        value = "lib/python3.11/site-packages/" + "../" * 20 + os.path.relpath(str(victim), "/")
    bundle = python_dists_bundle(tmp_path, dict(SOFTWARE, **{field: value}))
    code, out, err, _ = migrate_measured(pyz, bundle, tmp_path, "--skip-tests")
    last = err.strip().splitlines()[-1]
    assert code == 2 and "python-dists.json" in last and message in last and "unexpected" not in err, err
    assert os.listdir(str(victim)) == [] and os.listdir(str(tmp_path / "victim" / "bin")) == []
    assert not list(tmp_path.glob("**/ESCAPED")) and not list(tmp_path.glob("**/__pm_software__*"))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "PM_HOME": str(tmp_path / "store")}
    unpacked = run_pm(find_python("newest"), pyz, ["unpack", bundle], env)
    assert unpacked.returncode == 2 and message in unpacked.stderr.strip().splitlines()[-1], unpacked.stderr


def test_the_softwares_pth_dist_info_and_entry_points_go_into_the_prefix(pyz, tmp_path):
    bundle = python_dists_bundle(tmp_path, SOFTWARE)
    code, out, err, _ = migrate_measured(pyz, bundle, tmp_path, "--skip-tests")
    assert code == 0, err
    prefix = read_result(attempt_dirs(str(tmp_path / "store"), "trust")[-1])["env_prefix"]
    site = os.path.join(prefix, "lib", "python3.11", "site-packages")
    with open(os.path.join(site, "__pm_software__trust.pth")) as handle:
        assert handle.read() == str(tmp_path / "installed" / "trust") + "\n"
    assert sorted(os.listdir(os.path.join(site, "trust-1.0.dist-info"))) == [
        "INSTALLER", "METADATA", "RECORD", "direct_url.json", "entry_points.txt"]
    assert os.path.isfile(os.path.join(prefix, "bin", "trust-run"))


@pytest.mark.parametrize("wheel", ["wheels/\nevil.whl", "wheels/tinycalc-1.0-py3-none-any.whl\n.whl",
                                   "wheels/tinycalc.whl"], ids=["newline", "newline inside", "no tags"])
def test_a_carried_wheels_file_name_is_a_plain_wheel_name(wheel, pyz, tmp_path):
    """A wheel named with a newline became the requirements line <attempt>/wheels/, which pip built as
    a project (the bundle's own pyproject.toml): the name, in python-dists.json and as a member, is
    NAME-VERSION(-BUILD)-PY-ABI-PLATFORM.whl, or the bundle is refused."""
    dist = {"name": "tinycalc", "version": "1.0", "site": "lib/python3.11/site-packages", "source": "index",
            "software": False, "wheel": wheel}
    bundle = python_dists_bundle(tmp_path, dist, {wheel: b"PK\x05\x06" + b"\0" * 18,
                                                  "wheels/pyproject.toml": b"[build-system]\n"})
    code, out, err, _ = migrate_measured(pyz, bundle, tmp_path, "--skip-tests")
    last = err.strip().splitlines()[-1]
    assert code == 2 and "not a plain wheel file name" in last and "unexpected" not in err, err
    assert envs_left(tmp_path) == []


@pytest.fixture(scope="module")
def packed_with_packages(tmp_path_factory, pyz, real_condas):
    """examples/heatsim packed --with-packages from a real conda 25.11.1 (libgrid carried unpacked,
    heatplot as its .tar.bz2), once for the crafted bundles below; tests only read it."""
    import shutil
    from test_carried_packages import base_site, pack, pkgs_dir
    from conftest import ROOT
    work = tmp_path_factory.mktemp("carried-base")
    software = str(work / "heatsim")
    shutil.copytree(os.path.join(ROOT, "examples", "heatsim"), software, symlinks=True)
    base, _ = base_site(real_condas, "25.11.1", work)
    shutil.rmtree(os.path.join(pkgs_dir(base), "heatplot-0.3-h3_0"))  # only its archive is left
    bundle = str(work / "heatsim.zip")
    packed = pack(pyz, base, software, bundle, python="newest")
    assert packed.returncode == 0, packed.stderr
    return bundle


def edit_carried(members, dist, edit):
    """Rewrite the carried package dist (its unpacked .zip or its .tar.bz2, whose repodata sums are
    computed anew) after edit(files) changed its {name: bytes}."""
    unpacked = "channel/noarch/%s.zip" % dist
    if unpacked in members:
        with zipfile.ZipFile(io.BytesIO(members[unpacked])) as package:
            files = dict((i.filename, (package.read(i), i.external_attr)) for i in package.infolist())
        edit(files)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as package:
            for name, (data, attr) in sorted(files.items(), key=lambda item: not item[0].startswith("info/")):
                info = zipfile.ZipInfo(name)
                info.external_attr = attr or (0o100644 << 16)
                package.writestr(info, data)
        members[unpacked] = buffer.getvalue()
        return
    archive = "channel/noarch/%s.tar.bz2" % dist
    with tarfile.open(fileobj=io.BytesIO(members[archive]), mode="r:bz2") as tar:
        files = dict((m.name, (tar.extractfile(m).read(), m.mode)) for m in tar.getmembers() if m.isfile())
    edit(files)
    members[archive] = tarball([(n, d, m if isinstance(m, int) and m < 0o10000 else 0o644)
                                for n, (d, m) in sorted(files.items())])
    resum_carried(members, dist)


def resum_carried(members, dist):
    """The carried channel's repodata (and its .bz2) with dist's .tar.bz2 sums and size as its bytes now are."""
    archive = "channel/noarch/%s.tar.bz2" % dist
    repodata = json.loads(members["channel/noarch/repodata.json"].decode())
    repodata["packages"][dist + ".tar.bz2"].update(md5=hashlib.md5(members[archive]).hexdigest(),
                                                   sha256=hashlib.sha256(members[archive]).hexdigest(),
                                                   size=len(members[archive]))
    members["channel/noarch/repodata.json"] = json.dumps(repodata).encode()
    members["channel/noarch/repodata.json.bz2"] = bz2.compress(members["channel/noarch/repodata.json"])


def add_listed(files, path, data=None, mode=0o644):
    """A member (data not None) and its line in info/paths.json and info/files."""
    if data is not None:
        files[path] = (data, (0o100000 | mode) << 16)
    paths = json.loads(files["info/paths.json"][0].decode())
    paths["paths"].append({"_path": path, "path_type": "hardlink", "sha256": "0" * 64, "size_in_bytes": 1})
    files["info/paths.json"] = (json.dumps(paths).encode(), files["info/paths.json"][1])
    if "info/files" in files:
        files["info/files"] = (files["info/files"][0] + path.encode() + b"\n", files["info/files"][1])


def fix_tar_modes(files):
    return dict((n, (d, a >> 16 & 0o777 if a > 0o7777 else a)) for n, (d, a) in files.items())


@pytest.mark.parametrize("dist", ["libgrid-1.2-h0_0", "heatplot-0.3-h3_0"], ids=["unpacked", "tar.bz2"])
def test_a_carried_paths_json_naming_a_path_out_of_its_package_is_refused_before_conda_links(dist, pyz, real_condas,
                                                                                             packed_with_packages,
                                                                                             tmp_path):
    """conda follows '..' in info/paths.json from the cache pm builds (a bundle overwrote conda's own
    bin/python): every path there is one of the package's own members, checked before conda runs."""
    from conftest import rewrite_bundle
    from test_carried_packages import migrate_offline
    import realconda
    target = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "target"), [])
    out_of_env = "../../noarch/repodata.json"  # from pkgs/<dist>/ to the channel's repodata, from the env to the site

    def craft(members, manifest):
        edit_carried(members, dist, lambda files: add_listed(files, out_of_env))
    crafted = rewrite_bundle(packed_with_packages, str(tmp_path / "crafted.zip"), craft)
    proc = migrate_offline(pyz, target, crafted, tmp_path)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "info/paths.json of the carried package %s.tar.bz2" % dist in last, proc.stderr
    assert "_path" in last and "unexpected" not in proc.stderr
    assert not os.path.exists(os.path.join(target.base, "noarch")), "conda linked a path out of the environment"
    assert not [e for e in os.listdir(target.envs) if not e.startswith(".")], "no environment is made"
    assert not os.path.exists(os.path.join(attempt_dirs(target.home, "heatsim")[-1], "channel"))


@pytest.mark.parametrize("dist", ["libgrid-1.2-h0_0", "heatplot-0.3-h3_0"], ids=["unpacked", "tar.bz2"])
def test_carried_post_link_scripts_stay_out_of_what_conda_links_unless_allow_scripts(dist, pyz, real_condas,
                                                                                     packed_with_packages, tmp_path):
    from conftest import rewrite_bundle
    from test_carried_packages import migrate_offline
    import realconda
    name = dist.split("-")[0]
    marker = tmp_path / "post-link-ran"
    script = "bin/.%s-post-link.sh" % name

    def craft(members, manifest):
        edit_carried(members, dist, lambda files: add_listed(files, script, b"echo ran > %s\n" % str(marker).encode(),
                                                             0o755))
    crafted = rewrite_bundle(packed_with_packages, str(tmp_path / "scripts.zip"), craft)
    target = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "target"), [])
    proc = migrate_offline(pyz, target, crafted, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "note: %s has link scripts (post-link, pre-unlink), which pm leaves out" % name in proc.stderr
    prefix = read_result(attempt_dirs(target.home, "heatsim")[-1])["env_prefix"]
    assert not marker.exists() and not os.path.exists(os.path.join(prefix, *script.split("/")))
    command = ["unshare", "-n", find_python("newest"), pyz, "migrate", "heatsim", str(tmp_path / "tests.ini"),
               "--bundle", crafted, "--force", "--allow-scripts"]
    proc = subprocess.run(command, env=target.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert marker.exists(), "--allow-scripts: conda runs the post-link script"


def test_info_files_and_link_json_of_an_extracted_package_name_only_its_own_members(tmp_path):
    """conda 4.3 and packages without paths.json link what info/files lists; conda writes link.json's
    entry points into bin/: each is checked against the package's own members before conda sees it."""
    def extracted(files_text, link=None):
        root = tmp_path / ("pkg%d" % len(os.listdir(str(tmp_path))))
        (root / "info").mkdir(parents=True)
        (root / "lib").mkdir()
        (root / "lib" / "ok.so").write_bytes(b"x")
        (root / "info" / "files").write_text(files_text)
        if link is not None:
            (root / "info" / "link.json").write_text(json.dumps(link))
        return pm.Contained(str(root))
    pm.check_conda_index(extracted("lib/ok.so\n# a comment\n\n"), "p-1.0-0.tar.bz2", {"lib/ok.so"}, set())
    for text in ("lib/ok.so\n../../../etc/passwd\n", "/etc/passwd\n", "lib/missing.so\n"):
        with pytest.raises(pm.PmError, match=r"info/files of the carried package p-1.0-0.tar.bz2 names"):
            pm.check_conda_index(extracted(text), "p-1.0-0.tar.bz2", {"lib/ok.so"}, set())
    writer = extracted("lib/ok.so\nbin/.p-post-link.sh\n")
    pm.check_conda_index(writer, "p-1.0-0.tar.bz2", {"lib/ok.so"}, {"bin/.p-post-link.sh"})
    assert (tmp_path / os.path.basename(writer.root) / "info" / "files").read_text() == "lib/ok.so\n"
    for point in ("../../escaped = a:b", "x = os:system\nimport os"):
        with pytest.raises(pm.PmError, match="is not NAME = module:function"):
            pm.check_conda_index(extracted("lib/ok.so\n", {"noarch": {"type": "python", "entry_points": [point]}}),
                                 "p-1.0-0.tar.bz2", {"lib/ok.so"}, set())


def refused_everywhere(pyz, bundle, tmp_path, message):
    """bundle is refused with one line holding message, exit 2 (never 'unexpected'), by unpack, by the
    server (400) and by migrate --skip-tests; no environment is left."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "PM_HOME": str(tmp_path / "store")}
    unpacked = run_pm(find_python("newest"), pyz, ["unpack", bundle], env)
    assert unpacked.returncode == 2 and message in unpacked.stderr.strip().splitlines()[-1], unpacked.stderr
    srv = Server(pyz, str(tmp_path / "server-store"), find_python("newest"))
    try:
        with open(bundle, "rb") as handle:
            status, body = srv.request("PUT", "/bundles/trust", handle.read())
        assert status == 400 and message.encode() in body, (status, body)
    finally:
        srv.stop()
    code, out, err, _ = migrate_measured(pyz, bundle, tmp_path, "--skip-tests")
    assert code == 2 and message in err.strip().splitlines()[-1] and "unexpected" not in err, err
    assert envs_left(tmp_path) == []


def test_a_manifest_over_8_mib_is_refused_before_it_is_parsed(pyz, tmp_path):
    """manifest.json was parsed up to 64 MiB before any check, on every PUT, unpack, GET /bundles and
    list; a real one with 2,000 members is a few hundred KB."""
    members = dict(("software/trust/f%04d" % n, {"sha256": "0" * 64, "size": 123456}) for n in range(2000))
    real = len(json.dumps(pm.PROBE.make_manifest("trust", members, {"dir": "trust"})))
    assert real < pm.MANIFEST_LIMIT // 16, real
    fn, data, entry = package("p", [("share/x", b"x\n", 0o644)])
    bundle = carried_bundle(str(tmp_path / "b.zip"), [(fn, data, entry)])

    def pad(members, manifest):
        manifest["source"] = {"pad": ["x" * 1000] * (9 << 10)}
    from conftest import rewrite_bundle
    bundle = rewrite_bundle(bundle, str(tmp_path / "padded.zip"), pad)
    assert os.path.getsize(bundle) < 1 << 20
    refused_everywhere(pyz, bundle, tmp_path, "over the 8 MiB no real one reaches")


@pytest.mark.parametrize("record", [
    "--file=/etc/passwd", {"name": "--channel=http://evil.example", "version": "1.0"},
    {"name": "numpy", "version": "--file=/etc/passwd"}, {"name": "numpy\n--offline", "version": "1.0"}, 7,
], ids=["option spec", "option name", "option version", "newline name", "not a record"])
def test_min_deps_names_and_versions_are_package_names_never_options(record, pyz, tmp_path):
    """min-deps.json's names and versions became conda's words at the direct level and in its dry runs
    (--file=, --channel=): each is a package name and version, or the bundle is refused at the door."""
    fn, data, entry = package("p", [("share/x", b"x\n", 0o644)])
    bundle = carried_bundle(str(tmp_path / "b.zip"), [(fn, data, entry)],
                            files={"min-deps.json": json.dumps([{"name": "p", "version": "1.0"}, record]).encode()})
    refused_everywhere(pyz, bundle, tmp_path, "which is not a package name and version")


def crafted_door(case, members, manifest):
    if case == "source not an object":
        manifest["source"] = "Linux"
    elif case == "packages not an object":
        manifest["packages"] = ["linux-64"]
    elif case == "a carried entry without a file":
        manifest["packages"]["carried"] = [{"name": "p"}]
    elif case == "a member under channel/pkgs":
        members["channel/pkgs/urls.txt"] = b"file:///etc\n"
        manifest["members"]["channel/pkgs/urls.txt"] = {}
    else:
        repodata = json.loads(members["channel/linux-64/repodata.json"].decode())
        entry = repodata["packages"].pop("p-1.0-0.tar.bz2")
        if case == "a package named urls.txt.tar.bz2":
            members["channel/linux-64/urls.txt.tar.bz2"] = members.pop("channel/linux-64/p-1.0-0.tar.bz2")
            manifest["members"]["channel/linux-64/urls.txt.tar.bz2"] = manifest["members"].pop(
                "channel/linux-64/p-1.0-0.tar.bz2")
            repodata["packages"]["urls.txt.tar.bz2"] = entry
        elif case == "a missing subdir":
            del entry["subdir"]
            repodata["packages"]["p-1.0-0.tar.bz2"] = entry
        else:
            entry["subdir"] = "../../../tmp" if case == "a subdir with '..'" else "noarch"
            repodata["packages"]["p-1.0-0.tar.bz2"] = entry
        members["channel/linux-64/repodata.json"] = json.dumps(repodata).encode()
        members["channel/linux-64/repodata.json.bz2"] = bz2.compress(members["channel/linux-64/repodata.json"])


@pytest.mark.parametrize("case, message", [
    ("source not an object", "the manifest's source is not an object"),
    ("packages not an object", "the manifest's packages is not an object"),
    ("a carried entry without a file", "is not a member under channel/"),
    ("a package named urls.txt.tar.bz2", "'urls.txt.tar.bz2', which is not a package file"),
    ("a missing subdir", "whose subdir 'None' is not the folder it is in"),
    ("a subdir with '..'", "whose subdir '../../../tmp' is not the folder it is in"),
    ("a subdir of another folder", "whose subdir 'noarch' is not the folder it is in"),
    ("a member under channel/pkgs", "is not channel/SUBDIR/FILE of a carried package"),
])
def test_a_bundle_migrate_could_not_read_is_refused_at_the_door_naming_the_member(case, message, pyz, tmp_path):
    """Bundles that unpack and the server accepted ended migrate in 'unexpected ..., report it' (exit 3);
    a repodata entry's subdir became a path: each is refused where the bundle is opened, exit 2."""
    fn, data, entry = package("p", [("share/x", b"x\n", 0o644)])
    bundle = carried_bundle(str(tmp_path / "b.zip"), [(fn, data, entry)])
    from conftest import rewrite_bundle
    bundle = rewrite_bundle(bundle, str(tmp_path / "crafted.zip"), lambda m, mf: crafted_door(case, m, mf))
    refused_everywhere(pyz, bundle, tmp_path, message)


@pytest.mark.parametrize("member, data", [
    ("paths.json", b'{"paths": [' + b'{},' * (6 << 20) + b'{}]}'),
    ("has_prefix", b"/opt/placeholder text share/x\n" * (80 << 10)),
    ("link.json", b'{"noarch": {"type": "python", "entry_points": [' + b'"a = b:c",' * (200 << 10) + b'"a = b:c"]}}'),
    ("files", b"share/x\n" * (300 << 10)),
], ids=["paths.json", "has_prefix", "link.json", "files"])
def test_a_carried_packages_info_members_are_bounded_before_they_are_read(member, data, pyz, tmp_path):
    """Each info/ file of a carried package was read and parsed up to 64 MiB, outside every cap (66 KB
    of bundle, 1.7 GiB of memory per package, four at once): paths.json is bounded to 16 MiB, the rest
    to 1 MiB, before they are read; the refusal names the package and the member."""
    packages = [package("big%d" % n, [("share/x", b"x\n", 0o644)], {member: data}) for n in range(4)]
    bundle = carried_bundle(str(tmp_path / "b.zip"), packages,
                            env_yml=b"name: trust\ndependencies:\n" + b"".join(b"  - big%d=1.0=0\n" % n
                                                                                 for n in range(4)))
    assert os.path.getsize(bundle) < 1 << 20
    code, out, err, peak = migrate_measured(pyz, bundle, tmp_path, "--skip-tests")
    last = err.strip().splitlines()[-1]
    assert code == 2 and "info/%s of the carried package big" % member in last and "no real one reaches" in last, err
    assert peak < 256, "peak RSS %.0f MiB" % peak
    assert envs_left(tmp_path) == []


def test_info_members_conda_reads_in_the_cache_are_bounded_before_they_are_read(tmp_path):
    root = tmp_path / "pkg"
    (root / "info").mkdir(parents=True)
    (root / "info" / "files").write_bytes(b"lib/ok.so\n" * (200 << 10))
    with pytest.raises(pm.PmError, match=r"info/files of the carried package p-1.0-0.tar.bz2 is 2.0 MiB, over the 1"):
        pm.check_conda_index(pm.Contained(str(root)), "p-1.0-0.tar.bz2", {"lib/ok.so"}, set())


def bomb_wheel(files):
    """A wheel bomb-1.0-py3-none-any.whl of files (name -> bytes) and its dist-info, deflated."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        wheel.writestr("bomb-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: bomb\nVersion: 1.0\n")
        wheel.writestr("bomb-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr("bomb-1.0.dist-info/RECORD", "")
    return buffer.getvalue()


@pytest.mark.parametrize("files, message", [
    ({"bomb/zeros": b"\0" * (160 << 20)}, "unpacks to more than 64 MiB"),
    ({"bomb-1.0.dist-info/entry_points.txt": b"[console_scripts]\n" + b"#" * (40 << 20)},
     "entry_points.txt of the carried wheel bomb-1.0-py3-none-any.whl is over 1 MiB"),
], ids=["bytes", "entry_points.txt"])
def test_carried_wheels_are_under_the_caps_of_carried_packages(files, message, pyz, tmp_path):
    """Carried wheels were outside every cap (a 590 KB bundle wrote 512 MiB) and entry_points.txt was
    read whole: they are extracted and installed under carried packages' byte and file caps."""
    wheel = "wheels/bomb-1.0-py3-none-any.whl"
    data = bomb_wheel(files)
    assert len(data) < 1 << 20
    dist = {"name": "bomb", "version": "1.0", "site": "lib/python3.11/site-packages", "source": "index",
            "software": False, "wheel": wheel}
    bundle = python_dists_bundle(tmp_path, dist, {wheel: data})
    code, out, err, peak = migrate_measured(pyz, bundle, tmp_path, "--skip-tests")
    last = err.strip().splitlines()[-1]
    assert code == 2 and message in last and "unexpected" not in err, err
    assert peak < 256, "peak RSS %.0f MiB" % peak
    assert envs_left(tmp_path) == []


def test_a_damaged_member_or_carried_wheel_is_refused_in_one_line_never_unexpected(pyz, tmp_path):
    """A damaged deflate stream raised zlib.error, which pm did not catch (exit 3, 'unexpected'): in
    manifest.json at the door, and in a carried wheel whose bytes match the manifest (the inner zip is the
    sender's) at the install. Each is refused, exit 2, naming what is damaged."""
    from bundles import spoil_deflate
    wheel = "wheels/bomb-1.0-py3-none-any.whl"
    dist = {"name": "bomb", "version": "1.0", "site": "lib/python3.11/site-packages", "source": "index",
            "software": False, "wheel": wheel}
    data = spoil_deflate(bomb_wheel({"bomb/__init__.py": b"x = 1\n" * 100}), "bomb/__init__.py")
    bundle = python_dists_bundle(tmp_path, dist, {wheel: data})
    code, out, err, _ = migrate_measured(pyz, bundle, tmp_path, "--skip-tests")
    last = err.strip().splitlines()[-1]
    assert code == 2 and "the carried wheel bomb-1.0-py3-none-any.whl is damaged" in last, err
    assert envs_left(tmp_path) == []
    with open(bundle, "rb") as handle:
        spoiled = tmp_path / "spoiled.zip"
        spoiled.write_bytes(spoil_deflate(handle.read(), "manifest.json"))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "PM_HOME": str(tmp_path / "store")}
    unpacked = run_pm(find_python("newest"), pyz, ["unpack", str(spoiled)], env)
    assert unpacked.returncode == 2 and "has a broken manifest.json" in unpacked.stderr.strip().splitlines()[-1], \
        unpacked.stderr


ODD_ENTRIES = {"encrypted": (0x1, None), "patched data": (0x20, None), "strong encryption": (0x40, None),
               "an unknown method": (0, 99)}


@pytest.mark.parametrize("odd", sorted(ODD_ENTRIES))
def test_a_zip_entry_zipfile_will_not_open_is_refused_in_one_line_never_unexpected(odd, pyz, tmp_path):
    """zipfile raises RuntimeError or NotImplementedError, not a zip error, for an encrypted entry, one of
    patched data or of a method it does not know (one flipped bit of a header): each ended in 'unexpected'
    (exit 3) in the bundle itself at the door (unpack, the server, migrate), in a carried wheel whose bytes
    match the manifest, and in the original tool's zip. Each is refused, exit 2, naming the entry."""
    from bundles import set_entry_flags
    flags, method = ODD_ENTRIES[odd]
    wheel = "wheels/bomb-1.0-py3-none-any.whl"
    dist = {"name": "bomb", "version": "1.0", "site": "lib/python3.11/site-packages", "source": "index",
            "software": False, "wheel": wheel}
    good = python_dists_bundle(tmp_path, dist, {wheel: bomb_wheel({"bomb/__init__.py": b"x = 1\n"})})
    with open(good, "rb") as handle:
        odd_bundle = tmp_path / "odd.zip"
        odd_bundle.write_bytes(set_entry_flags(handle.read(), "env.yml", flags, method))
    refused_everywhere(pyz, str(odd_bundle), tmp_path, "env.yml in ")
    data = set_entry_flags(bomb_wheel({"bomb/__init__.py": b"x = 1\n"}), "bomb/__init__.py", flags, method)
    bundle = python_dists_bundle(tmp_path, dist, {wheel: data})
    code, out, err, _ = migrate_measured(pyz, bundle, tmp_path, "--skip-tests")
    last = err.strip().splitlines()[-1]
    assert code == 2 and "bomb/__init__.py in the carried wheel bomb-1.0-py3-none-any.whl is encrypted or " \
        "compressed in a way pm does not read" in last, err
    original = io.BytesIO()
    with zipfile.ZipFile(original, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("env.yml", "name: trust\ndependencies:\n  - python\n")
        archive.writestr("trust/check.sh", "echo checked\n")
    (tmp_path / "original.zip").write_bytes(set_entry_flags(original.getvalue(), "trust/check.sh", flags, method))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "PM_HOME": str(tmp_path / "store")}
    unpacked = run_pm(find_python("newest"), pyz, ["unpack", str(tmp_path / "original.zip")], env)
    assert unpacked.returncode == 2 and "trust/check.sh in the original tool's zip is encrypted" in \
        unpacked.stderr.strip().splitlines()[-1], unpacked.stderr


def spoiled_tarball(data, damage):
    """A carried .tar.bz2's bytes damaged as a bad disk or a crafted sender leaves them."""
    if damage == "a cut bz2 stream":
        return data[:len(data) // 2]
    if damage == "a flipped bz2 byte":
        return data[:4] + bytes([data[4] ^ 0xFF]) + data[5:]
    raw = bytearray(bz2.decompress(data))
    raw[148] ^= 0xFF  # the first header's checksum
    return bz2.compress(bytes(raw))


@pytest.mark.parametrize("damage", ["a cut bz2 stream", "a flipped bz2 byte", "a bad tar header"])
def test_a_damaged_carried_tarball_behind_its_sums_is_refused_in_one_line_never_unexpected(damage, pyz, tmp_path):
    """A carried .tar.bz2 whose bytes match the manifest and repodata (the sender made them) but whose bz2
    stream or tar header is damaged: reading its binaries before linking (a bundle without a record)
    raised EOFError, OSError or tarfile.ReadError, which ended in 'unexpected' (exit 3). Refused, exit 2,
    naming the package; no environment is left."""
    fn, data, entry = package("p", [("share/x", b"x\n" * 1000, 0o644)])
    data = spoiled_tarball(data, damage)
    entry.update(md5=hashlib.md5(data).hexdigest(), sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    bundle = carried_bundle(str(tmp_path / "b.zip"), [(fn, data, entry)])
    code, out, err, _ = migrate_measured(pyz, bundle, tmp_path, "--skip-tests")
    last = err.strip().splitlines()[-1]
    assert code == 2 and "the carried package p-1.0-0.tar.bz2 cannot be read" in last, err
    assert "error: unexpected" not in err and envs_left(tmp_path) == []


def spoil_carried(members, dist):
    """The carried package dist damaged behind its sums (the manifest's, and the repodata's of a .tar.bz2):
    its unpacked .zip with a corrupt deflate stream in info/index.json, or its .tar.bz2 cut in half."""
    from bundles import spoil_deflate
    unpacked = "channel/noarch/%s.zip" % dist
    if unpacked in members:
        members[unpacked] = spoil_deflate(members[unpacked], "info/index.json")
        return
    archive = "channel/noarch/%s.tar.bz2" % dist
    members[archive] = members[archive][:len(members[archive]) // 2]
    resum_carried(members, dist)


@pytest.mark.parametrize("dist", ["libgrid-1.2-h0_0", "heatplot-0.3-h3_0"], ids=["unpacked", "tar.bz2"])
def test_a_damaged_carried_package_is_refused_on_condas_route_in_one_line(dist, pyz, real_condas, packed_with_packages,
                                                                         tmp_path):
    """Extracting carried packages into the cache conda links from did not catch a damaged one (a corrupt
    deflate stream in an unpacked package's zip, a cut bz2 stream; the bytes match every sum, the sender
    made them): 'unexpected' (exit 3). Refused, exit 2, naming the package; no environment is made."""
    from conftest import rewrite_bundle
    from test_carried_packages import migrate_offline
    import realconda
    target = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "target"), [])
    spoiled = rewrite_bundle(packed_with_packages, str(tmp_path / "spoiled.zip"),
                             lambda members, manifest: spoil_carried(members, dist))
    proc = migrate_offline(pyz, target, spoiled, tmp_path)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "the carried package %s.tar.bz2 cannot be read" % dist in last, proc.stderr
    assert "error: unexpected" not in proc.stderr
    assert not [e for e in os.listdir(target.envs) if not e.startswith(".")], "no environment is made"


def test_noarch_python_sources_are_compiled_with_bounded_memory(pyz, tmp_path):
    """Without conda, pm's own Python compiled carried noarch: python sources with no bound (a 7 KB bundle
    took 1.7 GiB): they are compiled in a process of their own with bounded memory, each file under a
    size limit (the larger ones are named and left to compile on import), and the plain ones still are."""
    version = subprocess.run([find_python("newest"), "-c", "import sys; print('%d.%d.0' % sys.version_info[:2])"],
                             stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
    python_fn, python_data, python_entry = package("python", [("bin/python", b"#!/bin/sh\n", 0o755)])
    python_entry["version"] = version
    fn, data, entry = package("evil", [("site-packages/evil/__init__.py", b"VALUE = 1\n", 0o644),
                                       ("site-packages/evil/big.py", b"x = [" + b"1," * (1 << 20) + b"]\n", 0o644),
                                       ("site-packages/evil/huge.py", b"x = [" + b"1," * (3 << 20) + b"]\n", 0o644)],
                              {"link.json": {"noarch": {"type": "python"}}})
    entry["noarch"] = "python"
    bundle = carried_bundle(str(tmp_path / "b.zip"), [(python_fn, python_data, python_entry), (fn, data, entry)],
                            env_yml=b"name: trust\ndependencies:\n  - evil=1.0=0\n")
    assert os.path.getsize(bundle) < 64 << 10
    code, out, err, peak = migrate_measured(pyz, bundle, tmp_path, "--skip-tests")
    assert code == 0, err
    assert peak < 600, "peak RSS %.0f MiB" % peak
    assert "1 noarch: python source over 4 MiB left to compile on import" in err and "evil/huge.py" in err, err
    prefix = read_result(attempt_dirs(str(tmp_path / "store"), "trust")[-1])["env_prefix"]
    cache = os.path.join(prefix, "lib", "python" + version.rsplit(".", 1)[0], "site-packages", "evil", "__pycache__")
    assert [n for n in os.listdir(cache) if n.startswith("__init__.")], os.listdir(cache)


def test_an_install_is_not_held_up_by_someone_else_locking_output_dir(pyz, tmp_path):
    """pm locked output_dir itself: anyone who can read it (/opt) could hold that lock, and pm waited
    forever after its tests passed. The lock is a file of pm's own store."""
    import fcntl
    fn, data, entry = package("p", [("share/x", b"x\n", 0o644)])
    bundle = carried_bundle(str(tmp_path / "b.zip"), [(fn, data, entry)])
    (tmp_path / "installed").mkdir()
    holder = os.open(str(tmp_path / "installed"), os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        config = tmp_path / "trust.ini"
        config.write_text("[trust]\noutput_dir = %s\npackage_managers = conda\ntests = check\n[test_check]\n"
                          "exec = sh check.sh\n" % (tmp_path / "installed"))
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "PM_HOME": str(tmp_path / "store")}
        try:
            proc = run_pm(find_python("newest"), pyz, ["migrate", "trust", str(config), "--bundle", bundle,
                                                       "--no-conda"], env, timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("pm waited for a lock on output_dir that another user held")
    finally:
        os.close(holder)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "installed" / "trust" / "check.sh").is_file()
    locks = os.listdir(str(tmp_path / "store" / ".locks"))
    assert len(locks) == 1 and stat.S_IMODE(os.stat(str(tmp_path / "store" / ".locks" / locks[0])).st_mode) == 0o600
