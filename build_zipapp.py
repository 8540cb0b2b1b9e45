#!/usr/bin/env python3
"""Build pm.pyz with the standard library's zipapp: __main__.py, pm.py and pm_probe.py.

The probe is written out from pm.PROBE_SOURCE (one source of truth). Timestamps and order
are fixed, so two builds of the same tree are byte-identical.
"""
import argparse
import io
import os
import sys
import zipapp
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
FIXED_TIME = (2020, 1, 1, 0, 0, 0)

MAIN = '''# pm.pyz entry point: Python 2.7 and 3.x compatible.
import sys


def _private_folder(folder):
    """folder (and its parent pm-UID), made 0700 if missing; True only when each is a real folder
    owned by this user and writable by no one else, so no other user can plant code in it."""
    import os
    import stat
    try:
        os.makedirs(os.path.dirname(os.path.dirname(folder)), 0o700)  # ~/.cache itself, on a new account
    except OSError:
        pass
    for path in (os.path.dirname(folder), folder):
        try:
            os.mkdir(path, 0o700)
        except OSError:
            pass  # there already, or cannot be made: lstat says which
        try:
            st = os.lstat(path)
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            return False
    return True


def _load(name):
    """Import NAME.py from this archive. zipimport compiles the source on every run, so the code
    object is kept in ~/.cache/pm-UID/<python>/ (named by the source's sha256, which the file also
    holds and which is checked before it runs), only in folders and files of this user that no one
    else can write, created 0700/0600 without following links; never when Python is told not to
    write bytecode (-B, PYTHONDONTWRITEBYTECODE)."""
    import hashlib
    import marshal
    import os
    import stat
    source = __loader__.get_data(name + ".py")
    digest = hashlib.sha256(source).digest()
    where = os.path.join(os.path.dirname(__file__), name + ".py")
    tag = "%s-%d%d" % ("pypy" if hasattr(sys, "pypy_version_info") else "cpython", sys.version_info[0],
                       sys.version_info[1])
    folder = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                          "pm-%d" % os.getuid(), tag)
    cached = os.path.join(folder, "%s-%s.code" % (name, hashlib.sha256(source).hexdigest()[:32]))
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    code = None
    usable = not sys.dont_write_bytecode and _private_folder(folder)
    if usable:
        try:
            handle = os.open(cached, os.O_RDONLY | nofollow)
            try:
                st = os.fstat(handle)
                data = os.read(handle, st.st_size + 1) if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() \
                    and not st.st_mode & 0o022 else b""
            finally:
                os.close(handle)
            if data[:32] == digest:
                code = marshal.loads(data[32:])
        except (IOError, OSError, ValueError, EOFError, TypeError):
            code = None
    if code is None:
        code = compile(source, where, "exec")
        if usable:
            temp = "%s.%d.part" % (cached, os.getpid())
            try:
                handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | nofollow, 0o600)
                try:
                    os.write(handle, digest + marshal.dumps(code))
                finally:
                    os.close(handle)
                os.rename(temp, cached)
            except (IOError, OSError):
                try:
                    os.remove(temp)
                except (IOError, OSError):
                    pass  # no cache here: compile again next time
    module = type(sys)(name)
    module.__file__ = where
    sys.modules[name] = module
    exec(code, module.__dict__)
    return module


TOP_HELP = None  # pm.top_help(), written in by the build (sources): pm.py itself needs Python 3


def _main():
    args = sys.argv[1:]
    flags = []
    while args and args[0] in ("-q", "--quiet", "-v", "--verbose"):  # before the verb: pack takes them too
        flags.append(args.pop(0))
    verb = args[0] if args else None
    if verb == "pack":
        return _load("pm_probe").main(args[1:] + flags)
    if sys.version_info < (3, 6):
        if verb in (None, "-h", "--help", "help"):
            print(TOP_HELP)
            print("This is Python %d.%d: only 'pack' works here; the other verbs need Python 3.6 or newer."
                  % sys.version_info[:2])
            return 0
        sys.stderr.write("pm: error: '%s' needs Python 3.6 or newer (this is Python %d.%d) -- "
                         "run it with python3, or use 'pack' here\\n" % ((verb,) + tuple(sys.version_info[:2])))
        return 2
    _load("pm_probe")  # pm uses this one (sys.modules) instead of compiling its own
    return _load("pm").main(flags + args)


sys.exit(_main())
'''


def sources():
    sys.path.insert(0, HERE)
    import pm
    with open(os.path.join(HERE, "pm.py"), "rb") as handle:
        pm_source = handle.read()
    main = MAIN.replace("TOP_HELP = None", "TOP_HELP = %r" % pm.top_help(), 1)
    return [("__main__.py", main.encode("utf-8")), ("pm.py", pm_source),
            ("pm_probe.py", pm.PROBE_SOURCE.encode("utf-8"))]


def build(target):
    """Write the archive to memory with fixed times, then let zipapp add the shebang."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in sources():
            info = zipfile.ZipInfo(name, FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    buffer.seek(0)
    temp = target + ".part"
    zipapp.create_archive(buffer, temp, interpreter="/usr/bin/env python3")
    os.replace(temp, target)
    return target


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-o", "--output", default=os.path.join(HERE, "pm.pyz"))
    path = build(parser.parse_args().output)
    print("%s: %d bytes" % (path, os.path.getsize(path)))
