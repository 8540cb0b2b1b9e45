"""Benchmark: zipping a software tree, one read per file (the probe under Python 3) against two
reads per file (hash, then zipfile.write: the probe under Python 2.7, the baseline), side by side
in one interpreter on the same tree.

The tree is 8 files of SIZE/8 MiB each, half random bytes, half repetitive text, so deflate does
real work on both kinds. Each variant runs REPEAT times, alternating; reported: median wall time,
throughput and the ratio. When this process may write /proc/sys/vm/drop_caches (root on Linux),
the page cache is dropped before every run, so the numbers are for files read from disk; else the
files are warm and only the extra pass over memory shows.

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


def make_tree(root, mib):
    os.makedirs(root)
    each = mib * 1048576 // 8
    line = b"step 000042 temperature 273.15 pressure 101325.0 ok\n"
    for number in range(8):
        with open(os.path.join(root, "data%d.bin" % number), "wb") as handle:
            if number % 2:
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


def zip_tree(probe, root, out, write_one):
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, True) as bundle:
        for name in sorted(os.listdir(root)):
            write_one(bundle, os.path.join(root, name), "software/" + name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    probe = pm.load_probe()
    work = tempfile.mkdtemp(prefix="pm-zip-bench-")
    try:
        root = os.path.join(work, "tree")
        make_tree(root, args.mib)
        variants = [("two reads (2.7 path, baseline)", probe.write_file_py2),
                    ("one read (3.x path)", probe.copy_hashing)]
        times = {label: [] for label, _ in variants}
        cold = True
        for _ in range(args.repeat):
            for label, write_one in variants:
                cold = drop_caches() and cold
                started = time.perf_counter()
                zip_tree(probe, root, os.path.join(work, "out.zip"), write_one)
                times[label].append(time.perf_counter() - started)
                os.remove(os.path.join(work, "out.zip"))
        print("zipping %d MiB in 8 files, median of %d, %s page cache" %
              (args.mib, args.repeat, "cold (dropped before each run)" if cold else "warm"))
        medians = {label: statistics.median(values) for label, values in times.items()}
        for label, _ in variants:
            print("  %-32s %6.2f s  %6.1f MiB/s" % (label, medians[label], args.mib / medians[label]))
        base, new = medians[variants[0][0]], medians[variants[1][0]]
        print("  one read is %.2fx the speed of two reads" % (base / new))
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
