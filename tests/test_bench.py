"""The benchmarks under bench/ still run (small sizes here; `make bench` runs them in full)."""
import json
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


def test_make_bench_measures_every_figure_beside_its_anchor_and_writes_results_json(tmp_path):
    """BENCH_QUICK=1: the one-minute version of `make bench`; nothing asserts on timings."""
    results = str(tmp_path / "results.json")
    proc = subprocess.run([sys.executable, os.path.join("bench", "all.py")], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=600,
                          env=dict(os.environ, BENCH_QUICK="1", BENCH_RESULTS=results))
    assert proc.returncode == 0, proc.stdout
    with open(results) as handle:
        data = json.load(handle)
    assert data["quick"] and data["commit"] and data["machine"]["cores"]
    names = " ".join(row["figure"] for row in data["figures"])
    for part in ("minimal deps", "pack ", "upload ", "start-up, Python 2.7", "migration overhead", "pm.pyz size"):
        assert part in names, part
    assert all(set(row) == {"figure", "pm", "anchor", "anchor_value", "unit", "ratio", "target", "note"}
               for row in data["figures"])
    assert "ratio" in proc.stdout and "target / note" in proc.stdout
