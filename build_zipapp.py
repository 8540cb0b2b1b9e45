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


def _load(name):
    """Import NAME.py from this archive. zipimport compiles the source on every run, so the code
    object is kept in ~/.cache/pm/<python>/ (keyed by the source's CRC and size), written unless
    Python is told not to write bytecode (-B, PYTHONDONTWRITEBYTECODE)."""
    import marshal
    import os
    import zlib
    source = __loader__.get_data(name + ".py")
    where = os.path.join(os.path.dirname(__file__), name + ".py")
    tag = "%s-%d%d" % ("pypy" if hasattr(sys, "pypy_version_info") else "cpython", sys.version_info[0],
                       sys.version_info[1])
    folder = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pm", tag)
    cached = os.path.join(folder, "%s-%08x-%d.code" % (name, zlib.crc32(source) & 0xffffffff, len(source)))
    code = None
    try:
        with open(cached, "rb") as handle:
            code = marshal.loads(handle.read())
    except (IOError, OSError, ValueError, EOFError, TypeError):
        pass
    if code is None:
        code = compile(source, where, "exec")
        if not sys.dont_write_bytecode:
            try:
                if not os.path.isdir(folder):
                    os.makedirs(folder)
                temp = "%s.%d.part" % (cached, os.getpid())
                with open(temp, "wb") as handle:
                    handle.write(marshal.dumps(code))
                os.rename(temp, cached)
            except (IOError, OSError):
                pass  # no cache here: compile again next time
    module = type(sys)(name)
    module.__file__ = where
    sys.modules[name] = module
    exec(code, module.__dict__)
    return module


def _main():
    args = sys.argv[1:]
    verb = args[0] if args else None
    if verb == "pack":
        return _load("pm_probe").main(args[1:])
    if sys.version_info < (3, 6):
        if verb in (None, "-h", "--help", "help"):
            print(_load("pm_probe").TOP_HELP)
            print("This is Python %d.%d: only 'pack' works here; the other verbs need Python 3.6 or newer."
                  % sys.version_info[:2])
            return 0
        sys.stderr.write("pm: error: '%s' needs Python 3.6 or newer (this is Python %d.%d) -- "
                         "run it with python3, or use 'pack' here\\n" % ((verb,) + tuple(sys.version_info[:2])))
        return 2
    _load("pm_probe")  # pm uses this one (sys.modules) instead of compiling its own
    return _load("pm").main(args)


sys.exit(_main())
'''


def sources():
    sys.path.insert(0, HERE)
    import pm
    with open(os.path.join(HERE, "pm.py"), "rb") as handle:
        pm_source = handle.read()
    return [("__main__.py", MAIN.encode("utf-8")), ("pm.py", pm_source),
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
