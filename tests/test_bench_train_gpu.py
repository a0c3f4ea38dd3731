"""benchmarks/bench_train_gpu.py in its tiny CPU mode (so the GPU script is not dead code), and
its attention inputs against the loader's own positions."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_sampler import make_store, spec_for

from mixer.mix.sampler import MixSampler

torch = pytest.importorskip("torch")
ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_train_gpu  # noqa: E402

from mixer.mix.torch import MixedDataLoader, MixedIterableDataset  # noqa: E402


def test_document_positions_and_mask_follow_cu_seqlens(tmp_path):
    stores = {"a": make_store(tmp_path / "a", 700, seed=1)}
    sampler = MixSampler(spec_for(stores, {"a": 1.0}, seq_len=8, blocks=60))
    dataset = MixedIterableDataset(sampler, 4, documents=True, positions=True)
    for batch in MixedDataLoader(dataset):
        docs = bench_train_gpu.documents(batch["cu_seqlens"], 4, 8, flash=False)
        assert torch.equal(docs["positions"], batch["positions"][:, :-1])
        # attend to an earlier key exactly when no document starts in between
        mask = docs["mask"][:, 0]
        pos = batch["positions"][:, :-1]
        for r in range(4):
            for i in range(8):
                allowed = [j <= i and j >= i - int(pos[r, i]) for j in range(8)]
                assert mask[r, i].tolist() == allowed


def test_tiny_cpu_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_train_gpu.py")]
    cmd += ["--device", "cpu", "--tiny", "--steps", "3", "--warmup", "1", "--num-workers", "2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["config"]["attention"] == "sdpa + document mask"
    for run in (report["mixed"], report["synthetic"]):
        assert run["tokens_per_s"] > 0 and 0 <= run["data_wait_fraction"] <= 1
        # a freshly initialized model: about ln(vocab), not blown up
        assert math.isfinite(run["final_loss"]) and run["final_loss"] < math.log(50_257) + 1
