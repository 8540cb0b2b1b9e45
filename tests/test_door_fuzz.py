"""The one door, fuzzed: seeded mutations of every member pm reads (the manifest, env files, min-deps,
conda-list, python-dists, repodata, each carried package's info/ files and member names, the wheels'
names, the zip's own member names) with hostile values ('..', absolute paths, newlines, NUL, options,
escape sequences, huge strings, wrong types), through `unpack`, the server and `migrate --skip-tests`
(pm's linker, pip, real conda 25.11.1). After every case: no exit 3 ('unexpected'), nothing written
outside the store, the attempt, the prefix and output_dir, no process started from the bundle, and the
memory of the cases run in this process bounded. The sums of a mutated bundle are computed anew, so
each case reaches the checks behind the hashes. The per-case figures (cases, refused by reason, peak
RSS) are written to PM_FUZZ_REPORT when it is set."""
import collections
import copy
import io
import json
import os
import random
import re
import resource
import shutil
import subprocess
import zipfile

import pytest

import pm
import realconda
import wheels
from conftest import find_python, rewrite_bundle
from servers import Server

SEED = int(os.environ.get("PM_FUZZ_SEED", 20261206))  # another seed explores other cases
CASES = {"unpack": int(os.environ.get("PM_FUZZ_UNPACK", 2640)), "server": 240, "linker": 120, "pip": 8, "conda": 6}


def hostile_values(victim):
    """What an attacker puts in a field: paths out, lines, options, terminal escapes, sizes, types."""
    return ["..", "../../../../" + victim.lstrip("/") + "/escape", victim + "/abs", "a\nb",
            "x==1\n--index-url http://127.0.0.1:9/simple/", "x\x00y", "--channel=file:///", "-e .", "--file=/etc/passwd",
            "\x1b[2J\x1b]0;pwned\x07", "x" * 70000, "", " ", "lib/python3.11/site-packages/../../../" + victim,
            victim, "bin/.evil-post-link.sh", "urls.txt.tar.bz2", 0, -1, 2 ** 63, 1.5, None, True, [], {}, ["../x"],
            {"a": "b"}, [victim]]


def leaves(data, path=()):
    """Every place in a JSON document: (path, value), containers included."""
    found = [(path, data)]
    if isinstance(data, dict):
        for key, value in data.items():
            found += leaves(value, path + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data[:50]):
            found += leaves(value, path + (index,))
    return found


def put(data, path, value):
    if not path:
        return value
    target = data
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return data


def mutate_json(rng, text, bad):
    """One field of a JSON member replaced by a hostile value (or a key renamed to one)."""
    data = json.loads(text)
    places = leaves(data)
    path, _ = places[rng.randrange(len(places))]
    if path and isinstance(path[-1], str) and rng.random() < 0.15:  # a hostile key
        parent = put(copy.deepcopy(data), (), data)
        holder = parent
        for step in path[:-1]:
            holder = holder[step]
        holder[str(bad) if not isinstance(bad, str) else bad] = holder.pop(path[-1])
        return json.dumps(parent).encode()
    return json.dumps(put(data, path, bad)).encode()


def mutate_lines(rng, text, bad):
    """One line of a YAML member with its value replaced by a hostile one."""
    lines = text.splitlines() or [""]
    index = rng.randrange(len(lines))
    head = re.match(r"^(\s*(?:- )?(?:[A-Za-z_]+:\s*)?)", lines[index]).group(1)
    lines[index] = head + (bad if isinstance(bad, str) else json.dumps(bad))
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def mutate_inner(rng, data, bad, victim):
    """A carried package (a zip of its files): an info/ JSON field mutated, a member renamed, or a
    link script added that would touch the victim folder if it ran."""
    with zipfile.ZipFile(io.BytesIO(data)) as inner:
        members = dict((info.filename, inner.read(info)) for info in inner.infolist())
    choice = rng.random()
    infos = [n for n in members if n.startswith("info/") and n.endswith(".json")]
    if choice < 0.5 and infos:
        name = infos[rng.randrange(len(infos))]
        members[name] = mutate_json(rng, members[name].decode(), bad)
    elif choice < 0.8:
        names = sorted(members)
        old = names[rng.randrange(len(names))]
        members[bad[:4000] if isinstance(bad, str) and bad else "../escape"] = members.pop(old)  # zip names: < 64 KiB
    else:
        script = "#!/bin/sh\ntouch %s/ran-from-the-bundle\n" % victim
        members["bin/.%s-post-link.sh" % rng.choice(["python", "numlite", "x"])] = script.encode()
        if "info/files" in members:
            members["info/files"] += b"bin/.x-post-link.sh\n"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as inner:
        for name, content in members.items():
            inner.writestr(name, content)
    return out.getvalue()


def mutation(seed, victim):
    """edit(members, manifest) for one seeded case, and what it mutates (for the figures)."""
    rng = random.Random(seed)
    bad = rng.choice(hostile_values(victim))

    def edit(members, manifest):
        kinds = ["manifest", "json", "yaml", "inner", "name", "wheel-name"]
        kind = kinds[rng.randrange(len(kinds))] if rng.random() > 0.03 else "size"
        edit.kind = kind
        if kind == "manifest":
            text = json.dumps(dict((k, v) for k, v in manifest.items() if k != "members"))
            changed = json.loads(mutate_json(rng, text, bad).decode())
            if isinstance(changed, dict):
                for key in list(manifest):
                    if key != "members":
                        del manifest[key]
                manifest.update((k, v) for k, v in changed.items() if k != "members")
        elif kind == "json":
            name = rng.choice([n for n in members if n.endswith(".json") and n != "manifest.json"])
            members[name] = mutate_json(rng, members[name].decode(), bad)
            edit.kind = name.rsplit("/", 1)[-1]
        elif kind == "yaml":
            name = rng.choice([n for n in members if n.endswith(".yml")])
            members[name] = mutate_lines(rng, members[name].decode(), bad)
            edit.kind = name
        elif kind == "inner":
            name = rng.choice([n for n in members if n.startswith("channel/") and n.endswith(".zip")])
            members[name] = mutate_inner(rng, members[name], bad, victim)
        elif kind in ("name", "wheel-name"):
            pool = [n for n in members if n.startswith("wheels/")] if kind == "wheel-name" else \
                [n for n in members if not n.endswith("/")]
            old = rng.choice(pool)
            new = ("wheels/" if kind == "wheel-name" else "") + (bad[:4000] if isinstance(bad, str) else "x")
            members[new or "x"] = members.pop(old)
            if old in manifest["members"]:
                del manifest["members"][old]
            manifest["members"][new or "x"] = {}
        else:  # a member swollen far past what any real one holds
            name = rng.choice([n for n in members if n.endswith((".json", ".yml"))])
            members[name] = members[name] + b" " * pm.PARSED_LIMITS.get(name, 16 << 20)
    return edit


def tree_state(folder):
    """Every path under folder with its size: what 'nothing written there' is checked against."""
    state = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            state[path] = os.lstat(path).st_size
    return state


def run_main(argv):
    """pm's command line in this process: (exit code, what it said)."""
    import contextlib
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = pm.main(argv)
    return code, err.getvalue() + out.getvalue()


def refusal(text):
    """The reason a case was refused, as a figure: the member or field named, else the first words."""
    line = ([l for l in text.splitlines() if l.startswith("pm: ")] or [""])[-1].replace("pm: error: ", "pm: ")
    named = re.search(r"(manifest\.json|env(-history)?\.yml|min-deps\.json|conda-list\.json|python-dists\.json|"
                      r"repodata\.json|info/[a-z_.]+|wheels/|channel/|software/|a member|the zip|over \d+ MiB)", line)
    return named.group(1) if named else (line[4:40] or "accepted")


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory, pip_base):
    work = tmp_path_factory.mktemp("fuzz")
    victim = str(work / "victim")
    os.makedirs(os.path.join(victim, "lib", "python3.11", "site-packages"))
    with open(os.path.join(victim, "keep.txt"), "w") as handle:
        handle.write("the user's own file\n")
    return {"work": str(work), "victim": victim, "bundle": pip_base["bundles"]["carried-3"], "pip_base": pip_base}


def check_case(fuzz_env, code, said, figures, label):
    assert code != pm.INTERNAL_ERROR and "unexpected" not in said, "%s: %s" % (label, said[-2000:])
    assert "Traceback" not in said, "%s: %s" % (label, said[-2000:])
    assert tree_state(fuzz_env["victim"]) == fuzz_env["victim_state"], "%s wrote outside: %s" % (label, said[-500:])
    figures[refusal(said)] += 1


@pytest.fixture(scope="module")
def figures():
    counts = collections.Counter()
    yield counts
    if os.environ.get("PM_FUZZ_REPORT"):
        with open(os.environ["PM_FUZZ_REPORT"], "a") as handle:
            handle.write(json.dumps({"refused_by_reason": counts,
                                     "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10}) + "\n")


def cases(route):
    start = sum(CASES[r] for r in list(CASES)[:list(CASES).index(route)])
    return range(SEED + start, SEED + start + CASES[route])


def mutated(fuzz_env, seed, folder):
    edit = mutation(seed, fuzz_env["victim"])
    path = os.path.join(folder, "case-%d.zip" % seed)
    rewrite_bundle(fuzz_env["bundle"], path, edit)
    return path, getattr(edit, "kind", "?")


def test_the_door_refuses_hostile_members_at_unpack_with_one_line_never_unexpected(fuzz_env, figures, tmp_path):
    fuzz_env["victim_state"] = tree_state(fuzz_env["victim"])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for seed in cases("unpack"):
        path, kind = mutated(fuzz_env, seed, str(tmp_path))
        code, said = run_main(["unpack", path, "--name", "fuzz"])
        check_case(fuzz_env, code, said, figures, "unpack case %d (%s)" % (seed, kind))
        os.remove(path)
        shutil.rmtree(os.path.join(os.environ["PM_HOME"], "fuzz"), ignore_errors=True)  # each case meets an empty store
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) >> 10
    assert grown < 512, "the cases took %d MiB more than before them" % grown


def test_the_server_refuses_hostile_bundles_and_stays_up(fuzz_env, figures, pyz, tmp_path):
    fuzz_env["victim_state"] = tree_state(fuzz_env["victim"])
    server = Server(pyz, str(tmp_path / "server-home"), find_python("newest"))
    try:
        for seed in cases("server"):
            path, kind = mutated(fuzz_env, seed, str(tmp_path))
            with open(path, "rb") as handle:
                status, body = server.request("PUT", "/bundles/fuzz", handle.read())
            assert status in (200, 201, 400, 409, 413, 422), "server case %d (%s): %d %s" % (seed, kind, status, body)
            check_case(fuzz_env, 0 if status < 300 else 2, body.decode("utf-8", "replace"), figures,
                       "server case %d (%s)" % (seed, kind))
            os.remove(path)
        assert server.request("GET", "/bundles")[0] == 200
    finally:
        server.stop()


CONFIG = "[pipsim]\noutput_dir = {out}\npackage_managers = {managers}\ntests = check\n[test_check]\nexec = true\n"


def migrate_cases(fuzz_env, figures, tmp_path, route, managers, extra, runner, env=None):
    fuzz_env["victim_state"] = tree_state(fuzz_env["victim"])
    config = tmp_path / "fuzz.ini"
    out = tmp_path / "installed"
    config.write_text(CONFIG.format(out=out, managers=managers))
    for seed in cases(route):
        path, kind = mutated(fuzz_env, seed, str(tmp_path))
        code, said = runner(["migrate", "pipsim", str(config), "--bundle", path, "--yes", "--skip-tests",
                             "--force"] + extra)
        check_case(fuzz_env, code, said, figures, "%s case %d (%s)" % (route, seed, kind))
        assert not os.path.exists(os.path.join(fuzz_env["victim"], "ran-from-the-bundle")), \
            "%s case %d ran a script of the bundle" % (route, seed)
        os.remove(path)


def test_migrate_on_pms_linker_refuses_hostile_bundles_before_they_write_outside(fuzz_env, figures, tmp_path,
                                                                               monkeypatch):
    """In this process (pm's linker, --no-conda): no conda, no network needed."""
    migrate_cases(fuzz_env, figures, tmp_path, "linker", "conda", ["--no-conda"], run_main)


def test_migrate_with_pip_refuses_hostile_bundles(fuzz_env, figures, pyz, real_condas, tmp_path):
    site = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "target"), [])
    env = site.env(**wheels.pip_env(fuzz_env["pip_base"]["index"]))

    def runner(argv):
        proc = subprocess.run(["unshare", "-n", find_python("newest"), pyz] + argv, env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, timeout=300)
        return proc.returncode, proc.stdout
    migrate_cases(fuzz_env, figures, tmp_path, "pip", "pip", [], runner)


def test_migrate_with_real_conda_refuses_hostile_bundles(fuzz_env, figures, pyz, real_condas, tmp_path):
    site = realconda.RealCondaSite(real_condas["25.11.1"], str(tmp_path / "target"), [])

    def runner(argv):
        proc = subprocess.run(["unshare", "-n", find_python("newest"), pyz] + argv, env=site.env(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, timeout=300)
        return proc.returncode, proc.stdout
    migrate_cases(fuzz_env, figures, tmp_path, "conda", "conda", [], runner)
