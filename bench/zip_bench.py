"""Benchmark: zipping a software tree with the probe's own functions, side by side in one run.

1. One read per file (the probe under Python 3) against two reads per file (hash, then
   zipfile.write: the probe under Python 2.7, the baseline), on a tree of 8 files of SIZE/8 MiB,
   half random bytes, half repetitive text.
2. Already-compressed data (random bytes) named .gz, which the probe stores as it is, against the
   same bytes named .bin, which it deflates (the baseline: what every file got before).

Each variant runs REPEAT times, alternating; reported: median wall time, throughput and the ratio.
When this process may write /proc/sys/vm/drop_caches (root on Linux), the page cache is dropped
before every run, so the numbers are for files read from disk; else the files are warm.

    .venv/bin/python bench/zip_bench.py [--mib 512] [--repeat 3]
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import pm  # noqa: E402


def make_tree(root, mib, suffix=".bin", text=True):
    """8 files of mib/8 MiB: half random bytes, half repetitive text (all random when not text)."""
    os.makedirs(root)
    each = mib * 1048576 // 8
    line = b"step 000042 temperature 273.15 pressure 101325.0 ok\n"
    for number in range(8):
        with open(os.path.join(root, "data%d%s" % (number, suffix)), "wb") as handle:
            if text and number % 2:
                handle.write((line * (each // len(line) + 1))[:each])
            else:
                for _ in range(each // 1048576):
                    handle.write(os.urandom(1048576))


def drop_caches():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("1\n")
        return True
    except OSError:
        return False


PROBE = pm.load_probe()


def zip_tree(root, out, write_one):
    """A bundle of the tree through the probe's BundleWriter, each file added by write_one."""
    writer = PROBE.BundleWriter(out)
    for name in sorted(os.listdir(root)):
        write_one(writer, os.path.join(root, name), "software/" + name)
    writer.finish(PROBE.make_manifest("bench", None, {}))


def one_read(writer, path, arcname, method):
    """The Python 3 path: one read per file, hashed as it is compressed."""
    info = zipfile.ZipInfo(arcname)
    info.compress_type = method
    info.file_size = os.path.getsize(path)
    with open(path, "rb") as source:
        writer.add_stream(info, source)


def compare(work, title, variants, mib, repeat):
    """Run each (label, root, write_one) variant repeat times, alternating; print medians and the ratio."""
    times = dict((label, []) for label, _, _ in variants)
    cold = True
    for _ in range(repeat):
        for label, root, write_one in variants:
            cold = drop_caches() and cold
            started = time.perf_counter()
            zip_tree(root, os.path.join(work, "out.zip"), write_one)
            times[label].append(time.perf_counter() - started)
            os.remove(os.path.join(work, "out.zip"))
    print("%s: %d MiB in 8 files, median of %d, %s page cache" %
          (title, mib, repeat, "cold (dropped before each run)" if cold else "warm"))
    medians = dict((label, statistics.median(values)) for label, values in times.items())
    for label, _, _ in variants:
        print("  %-36s %6.2f s  %7.1f MiB/s" % (label, medians[label], mib / medians[label]))
    base, new = medians[variants[0][0]], medians[variants[1][0]]
    print("  ratio: %.2fx the baseline's speed" % (base / new))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    deflate = zipfile.ZIP_DEFLATED
    work = tempfile.mkdtemp(prefix="pm-zip-bench-")
    try:
        mixed = os.path.join(work, "mixed")
        make_tree(mixed, args.mib)
        compare(work, "reads per file", [
            ("two reads (2.7 path, baseline)", mixed, lambda w, p, a: w.add_file_py2(p, a, deflate)),
            ("one read (3.x path)", mixed, lambda w, p, a: one_read(w, p, a, deflate))],
            args.mib, args.repeat)
        packed = os.path.join(work, "packed")
        make_tree(packed, args.mib, ".gz", text=False)
        compare(work, "already-compressed files", [
            ("deflated again (baseline)", packed, lambda w, p, a: one_read(w, p, a, deflate)),
            ("stored (.gz and the like)", packed, lambda w, p, a: w.add_file(p, a, PROBE.Progress("")))],
            args.mib, args.repeat)
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
