"""The benchmarks under bench/ still run (small sizes here; `make bench` runs them in full)."""
import os
import subprocess
import sys

from conftest import ROOT


def run_bench(*args):
    proc = subprocess.run([sys.executable] + list(args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=600)
    assert proc.returncode == 0, proc.stdout
    return proc.stdout


def test_the_zip_benchmark_compares_both_pairs():
    out = run_bench(os.path.join("bench", "zip_bench.py"), "--mib", "8", "--repeat", "1")
    assert out.count("ratio:") == 2 and "one read (3.x path)" in out and "stored (.gz and the like)" in out


def test_the_pack_benchmark_packs_under_every_promised_interpreter():
    out = run_bench(os.path.join("bench", "pack_bench.py"))
    assert "python2.7" in out and "python3.6" in out and "915 solver runs" in out
