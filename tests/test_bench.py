"""The benchmark driver still runs and writes what `make bench` promises: one small section here
(start-up, BENCH_QUICK); `make bench` runs every section in full. Nothing asserts on timings."""
import json
import os
import subprocess
import sys

from conftest import ROOT


def test_make_bench_measures_a_figure_beside_its_anchor_and_writes_results_json(tmp_path):
    results = str(tmp_path / "results.json")
    proc = subprocess.run([sys.executable, os.path.join("bench", "all.py")], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=600,
                          env=dict(os.environ, BENCH_QUICK="1", BENCH_ONLY="start-up", BENCH_RESULTS=results))
    assert proc.returncode == 0, proc.stdout
    with open(results) as handle:
        data = json.load(handle)
    assert data["quick"] and data["commit"] and data["machine"]["cores"] == os.cpu_count()
    assert all(set(row) == {"figure", "pm", "anchor", "anchor_value", "unit", "ratio", "target", "note"}
               for row in data["figures"])
    startup = [row for row in data["figures"] if row["figure"].startswith("start-up, Python ")]
    assert [row["figure"].split()[2] for row in startup][:2] == ["2.7", "3.6"] and len(startup) == 3, startup
    for row in startup:
        assert row["pm"] > 0 and row["anchor_value"] > 0 and row["anchor"] == "python -c pass"
        assert abs(row["ratio"] - row["anchor_value"] / row["pm"]) < 1e-9, row
    (size,) = [row for row in data["figures"] if row["figure"] == "pm.pyz size"]
    assert size["pm"] == os.path.getsize(os.path.join(ROOT, "pm.pyz")) / 1024.0
    assert [row["figure"] for row in data["figures"]] == [row["figure"] for row in startup] + ["pm.pyz size"], \
        "BENCH_ONLY runs only the sections it names"
    assert "ratio" in proc.stdout and "target / note" in proc.stdout and "start-up, Python 2.7" in proc.stdout
