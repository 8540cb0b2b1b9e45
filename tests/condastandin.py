"""A stand-in for the `conda` command, for tests only: there is no conda on these machines.

It implements, with real conda's output shapes, the subcommands pm calls:
`info --json`, `env list --json`, `list --json`, `env export [--no-builds] [--from-history]`,
`create`, `env create -f`, `env remove`, `run`. Solving and installing are real: py-rattler
solves against local file:// channels and links packages into prefixes, writing conda-compatible
`conda-meta/*.json` records; this module adds `conda-meta/history` the way conda writes it.

Configuration comes from the environment:
  PM_STANDIN_ROOT      the base prefix; named environments live in ROOT/envs/NAME
  PM_STANDIN_CHANNELS  comma-separated local channel folders (built by tests/channels.py)

The module also offers `create_env()` for tests that build environments directly.
"""
import asyncio
import datetime
import json
import os
import shutil
import sys

import rattler
import rattler.exceptions
import yaml

CONDA_VERSION = "24.11.3"
PLATFORM = "linux-64"
OWN_PACKAGES = ()


def fail(message, code=1):
    sys.stderr.write("\nCondaError: %s\n" % message)
    sys.exit(code)


def root_prefix():
    root = os.environ.get("PM_STANDIN_ROOT")
    if not root:
        fail("PM_STANDIN_ROOT is not set")
    os.makedirs(os.path.join(root, "conda-meta"), exist_ok=True)
    os.makedirs(os.path.join(root, "envs"), exist_ok=True)
    return root


def channels():
    return ["file://" + os.path.abspath(c) for c in os.environ.get("PM_STANDIN_CHANNELS", "").split(",") if c]


def env_prefixes():
    root = root_prefix()
    envs = os.path.join(root, "envs")
    return [root] + sorted(os.path.join(envs, n) for n in os.listdir(envs)
                           if os.path.isdir(os.path.join(envs, n, "conda-meta")))


def take(args, *flags):
    """Remove a flag and its value from args; return the value or None."""
    for flag in flags:
        if flag in args:
            at = args.index(flag)
            value = args[at + 1]
            del args[at:at + 2]
            return value
    return None


def take_switch(args, *flags):
    found = False
    for flag in flags:
        while flag in args:
            args.remove(flag)
            found = True
    return found


def target_prefix(args, must_exist=True):
    name = take(args, "-n", "--name")
    prefix = take(args, "-p", "--prefix")
    if prefix:
        prefix = os.path.abspath(prefix)
    elif name:
        prefix = root_prefix() if name == "base" else os.path.join(root_prefix(), "envs", name)
    else:
        prefix = os.environ.get("CONDA_PREFIX") or root_prefix()
    if must_exist and not os.path.isdir(os.path.join(prefix, "conda-meta")):
        fail("EnvironmentLocationNotFound: Not a conda environment: %s" % prefix)
    return prefix


def installed_records(prefix):
    meta = os.path.join(prefix, "conda-meta")
    records = []
    for fn in sorted(os.listdir(meta)):
        if fn.endswith(".json"):
            with open(os.path.join(meta, fn)) as handle:
                records.append(json.load(handle))
    return records


def channel_label(url):
    return url.rstrip("/").rsplit("/", 1)[-1]


# -- subcommands ------------------------------------------------------------


def cmd_info(args):
    data = {
        "conda_version": CONDA_VERSION,
        "platform": PLATFORM,
        "root_prefix": root_prefix(),
        "envs_dirs": [os.path.join(root_prefix(), "envs")],
        "envs": env_prefixes(),
        "active_prefix": os.environ.get("CONDA_PREFIX"),
        "channels": channels(),
        "python_version": "%d.%d.%d.final.0" % sys.version_info[:3],
    }
    print(json.dumps(data, indent=2))


def cmd_env_list(args):
    print(json.dumps({"envs": env_prefixes()}, indent=2))


def cmd_list(args):
    take_switch(args, "--json")
    prefix = target_prefix(args)
    rows = []
    for r in installed_records(prefix):
        url = r.get("channel", "")
        rows.append({
            "base_url": url.rstrip("/"),
            "build_number": r.get("build_number", 0),
            "build_string": r.get("build", ""),
            "channel": channel_label(url),
            "dist_name": "%s-%s-%s" % (r["name"], r["version"], r.get("build", "")),
            "name": r["name"],
            "platform": r.get("subdir", PLATFORM),
            "version": r["version"],
        })
    print(json.dumps(rows, indent=1))


def cmd_env_export(args):
    no_builds = take_switch(args, "--no-builds")
    from_history = take_switch(args, "--from-history")
    prefix = target_prefix(args)
    records = installed_records(prefix)
    chans = sorted(set(channel_label(r.get("channel", "")) for r in records if r.get("channel")))
    if from_history:
        deps = sorted(read_history_specs(prefix))
    elif no_builds:
        deps = ["%s=%s" % (r["name"], r["version"]) for r in records]
    else:
        deps = ["%s=%s=%s" % (r["name"], r["version"], r.get("build", "")) for r in records]
    lines = ["name: %s" % os.path.basename(prefix), "channels:"]
    lines += ["  - %s" % c for c in chans or ["defaults"]]
    lines.append("dependencies:")
    lines += ["  - %s" % d for d in deps]
    lines.append("prefix: %s" % prefix)
    print("\n".join(lines))


def read_history_specs(prefix):
    specs = {}
    path = os.path.join(prefix, "conda-meta", "history")
    if os.path.exists(path):
        for line in open(path):
            if line.startswith("# update specs: "):
                for spec in eval(line.split(":", 1)[1].strip()):
                    specs[spec.split("=")[0].split()[0]] = spec
    return list(specs.values())


def cmd_create(args, from_file=False):
    take_switch(args, "-y", "--yes", "-q", "--quiet", "--json")
    force = take_switch(args, "--force")
    dry_run = take_switch(args, "--dry-run", "-d")
    take_switch(args, "--offline")
    clone = take(args, "--clone")
    extra = []
    while "-c" in args or "--channel" in args:
        extra.append(take(args, "-c", "--channel"))
    specs, pip = [], []
    name_from_file = None
    if from_file:
        path = take(args, "-f", "--file")
        with open(path) as handle:
            doc = yaml.safe_load(handle)
        name_from_file = doc.get("name")
        for dep in doc.get("dependencies") or []:
            if isinstance(dep, dict):
                pip.extend(dep.get("pip", []))
            else:
                specs.append(str(dep))
    if "-n" not in args and "--name" not in args and "-p" not in args and "--prefix" not in args:
        if not name_from_file:
            fail("ArgumentError: one of the arguments -n/--name -p/--prefix is required")
        args += ["-n", name_from_file]
    prefix = target_prefix(args, must_exist=False)
    specs += [a for a in args if not a.startswith("-")]
    if clone:  # the same packages, versions and builds as the source environment
        source = target_prefix(["-p" if os.sep in clone else "-n", clone])
        specs += ["%s=%s=%s" % (r["name"], r["version"], r.get("build", "")) for r in installed_records(source)]
    if os.path.exists(os.path.join(prefix, "conda-meta")) and not dry_run:
        if not force:
            fail("A conda environment already exists at %s" % prefix)
        shutil.rmtree(prefix)
    try:
        records = once_more_if_not_unsolvable("solving", lambda: solve(specs, extra))
    except Exception as exc:  # rattler raises its own exception types
        fail("PackagesNotFoundError: the following packages are not available from current channels:"
             "\n  %s\n%s" % ("\n  ".join(specs), exc))
    if dry_run:
        print(json.dumps({"actions": {"LINK": [{"name": r.name.normalized} for r in records]}}))
        return
    if pip:
        sys.stderr.write("note: the stand-in skips pip entries: %s\n" % ", ".join(pip))
    def install_fresh():
        shutil.rmtree(prefix, ignore_errors=True)  # nothing half-linked from a first try
        install(records, prefix, specs, "conda " + " ".join(sys.argv[1:]))
    once_more_if_not_unsolvable("installing", install_fresh)
    print("\n# To activate this environment, use\n#\n#     $ conda activate %s\n" % os.path.basename(prefix))


def once_more_if_not_unsolvable(what, action):
    """Run action; after an error that is not an unsolvable request (rattler's I/O, cache or
    gateway errors), say so on stderr (pm logs it) and try once more, as a retried conda would."""
    try:
        return action()
    except rattler.exceptions.SolverError:
        raise
    except Exception as exc:
        sys.stderr.write("conda stand-in: %s failed (%s: %s); trying once more\n" % (what, type(exc).__name__, exc))
        return action()


def conda_style(spec):
    """conda's 'name=version=build' form, which rattler's strict parser does not take."""
    parts = spec.split("=")
    if len(parts) == 3 and all(parts) and " " not in spec:
        name, version, build = parts
        return "%s %s %s" % (name, version if "*" in version else "==" + version, build)
    return spec


def solve(specs, extra_channels=()):
    sources = channels() + ["file://" + os.path.abspath(c) for c in extra_channels]
    specs = [conda_style(s) for s in specs]
    return asyncio.run(rattler.solve(sources, specs, platforms=[PLATFORM, "noarch"],
                                     virtual_packages=virtual_packages()))


def virtual_packages():
    """A fixed linux-64 system: no detection, so solves never depend on the machine running the tests."""
    fixed = [("__unix", "0", "0"), ("__linux", "5.10", "0"), ("__glibc", "2.36", "0"),
             ("__archspec", "1", "x86_64")]
    return [rattler.GenericVirtualPackage(rattler.PackageName(n), rattler.Version(v), rattler.BuildString(b))
            for n, v, b in fixed]


def install(records, prefix, specs, command, cache="pkgs"):
    cache = os.path.join(root_prefix(), cache)
    asyncio.run(rattler.install(records, prefix, cache_dir=cache, show_progress=False))
    write_history(prefix, records, specs, command)


def write_history(prefix, records, specs, command):
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    lines = ["==> %s <==" % now, "# cmd: %s" % command, "# conda version: %s" % CONDA_VERSION]
    for r in records:
        lines.append("+%s::%s-%s-%s" % (channel_label(str(r.channel)), r.name.normalized, r.version, r.build))
    lines.append("# update specs: %r" % [str(s) for s in specs])
    with open(os.path.join(prefix, "conda-meta", "history"), "a") as handle:
        handle.write("\n".join(lines) + "\n")


def cmd_env_remove(args):
    take_switch(args, "-y", "--yes")
    prefix = target_prefix(args)
    if prefix == root_prefix():
        fail("cannot remove the base environment")
    shutil.rmtree(prefix)


def cmd_run(args):
    take_switch(args, "--no-capture-output", "--live-stream", "--no-banner")
    prefix = target_prefix(args)
    env = dict(os.environ)
    env["PATH"] = os.path.join(prefix, "bin") + os.pathsep + env.get("PATH", "")
    env["CONDA_PREFIX"] = prefix
    env["CONDA_DEFAULT_ENV"] = os.path.basename(prefix)
    if not args:
        fail("ArgumentError: no command given to run")
    try:
        os.execvpe(args[0], args, env)
    except OSError as exc:
        fail("cannot run %s: %s" % (args[0], exc))


def create_env(prefix, specs, requested=None, channel_dirs=None):
    """Build an environment directly (for test set-up): solve specs, link, write history.

    It runs inside the test process, so it keeps a package cache of its own: the `conda`
    subprocesses pm starts never meet a cache this process touched."""
    if channel_dirs:
        os.environ["PM_STANDIN_CHANNELS"] = ",".join(channel_dirs)
    records = solve(specs)
    install(records, prefix, requested if requested is not None else specs, "conda create -p %s" % prefix,
            cache="pkgs-setup")
    return records


def main(argv):
    args = list(argv)
    if not args or args[0] in ("-h", "--help"):
        print("conda stand-in for pm tests: info, env list|export|create|remove, list, create, run")
        return 0
    if args[0] == "--version":
        print("conda %s" % CONDA_VERSION)
        return 0
    verb = args.pop(0)
    if verb == "env" and args:
        sub = args.pop(0)
        handlers = {"list": cmd_env_list, "export": cmd_env_export, "remove": cmd_env_remove,
                    "create": lambda a: cmd_create(a, from_file=True)}
        if sub in handlers:
            handlers[sub](args)
            return 0
        fail("unknown env subcommand %s" % sub, 2)
    handlers = {"info": cmd_info, "list": cmd_list, "create": cmd_create, "run": cmd_run}
    if verb not in handlers:
        fail("invalid choice: %s" % verb, 2)
    handlers[verb](args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
