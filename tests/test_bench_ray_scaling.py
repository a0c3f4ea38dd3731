"""benchmarks/bench_ray_scaling.py in its --tiny mode (so the 16-core script is not dead code):
it generates its corpus and tokenizer, runs the in-process and the Ray cells, checks their
stores byte-identical, and prints the table and writes the JSON the scaling run reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")
ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_tiny_run_prints_the_table_and_writes_json(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OUT": str(tmp_path / "out")}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_ray_scaling.py"), "--tiny"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| workers | wall s |" in done.stdout
    assert "stores byte-identical across worker counts: True" in done.stdout
    report = json.loads((tmp_path / "out" / "ray_scaling.json").read_text())
    assert [r["workers"] for r in report["rows"]] == [1, 2]
    assert report["identical_stores"] and "4 files, 4 MB text" in report["header"]
    assert all(r["wall_s"] > 0 and r["cli_s"] > 0 for r in report["rows"])
