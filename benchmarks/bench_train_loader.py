"""Loader throughput next to a plain memmap-slicing loader, as a trainer would consume it.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_train_loader.py [--tokens 40_000_000]
        [--batches 300] [--runs 3]

Two random stores (web 90%, proofpile 10%, ~1000-token documents) are written to a temp dir and
read once into the page cache. Each row then drains --batches batches of 8 x (2048 + 1) tokens
through a torch DataLoader with num_workers=2, --runs times, rows interleaved (medians):

- plain: an IterableDataset that slices consecutive blocks of one memmap (worker w takes
  batches w, w + 2, ...) and returns an int64 tensor: no mixing, no lookup, the floor a
  trainer's own loader would have;
- MixedDataLoader(MixedIterableDataset(..., batch_size=8), num_workers=2): the mix, int64;
- the same with documents=True, loss_mask=True, int32=True (cu_seqlens, max_seqlen).

Prints JSON with batches/s per row and each row's ratio to plain. Wall clock on a shared
machine: medians of interleaved runs, still noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

sys.path.insert(0, str(Path(__file__).parent))
from bench_sampler import mix_spec, write_random_store  # noqa: E402

from mixer.mix.sampler import MixSampler  # noqa: E402
from mixer.mix.torch import MixedDataLoader, MixedIterableDataset  # noqa: E402
from mixer.store.reader import TokenStore  # noqa: E402

SEQ_LEN, BATCH = 2048, 8


class PlainSlices(IterableDataset):
    """Consecutive (BATCH, SEQ_LEN + 1) windows of one store's first shard, as int64."""

    def __init__(self, root: str, batches: int):
        self.root, self.batches = root, batches

    def __iter__(self):
        tokens = TokenStore.open(self.root).shards[0].tokens
        info = get_worker_info()
        w, n = (0, 1) if info is None else (info.id, info.num_workers)
        for b in range(w, self.batches, n):
            start = b * BATCH * SEQ_LEN
            rows = [
                tokens[start + r * SEQ_LEN : start + r * SEQ_LEN + SEQ_LEN + 1]
                for r in range(BATCH)
            ]
            yield torch.from_numpy(np.stack(rows).astype(np.int64))


def drain(loader, batches: int) -> float:
    """Batches/s over `batches` batches, after the first (worker start-up) is out."""
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    n = sum(1 for _ in zip(range(batches), it, strict=False))
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=40_000_000)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_random_store(root / "web", int(args.tokens * 0.9), seed=1)
        write_random_store(root / "proofpile", int(args.tokens * 0.1), seed=2)
        for path in root.rglob("*.bin"):
            path.read_bytes()  # page cache
        total = (args.batches + 2) * BATCH * SEQ_LEN
        sampler = MixSampler(mix_spec(root, SEQ_LEN, total, (0.9, 0.1)))
        rows = {
            "plain memmap slices": lambda: DataLoader(
                PlainSlices(str(root / "web"), args.batches + 1), batch_size=None, num_workers=2
            ),
            "MixedDataLoader": lambda: MixedDataLoader(
                MixedIterableDataset(sampler, BATCH), num_workers=2
            ),
            "MixedDataLoader documents+loss_mask+int32": lambda: MixedDataLoader(
                MixedIterableDataset(sampler, BATCH, documents=True, loss_mask=True, int32=True),
                num_workers=2,
            ),
        }
        rates: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.runs):
            for name, make in rows.items():
                rates[name].append(drain(make(), args.batches))
    medians = {name: statistics.median(r) for name, r in rates.items()}
    plain = medians["plain memmap slices"]
    print(
        json.dumps(
            {
                "batch": f"{BATCH} x {SEQ_LEN + 1}",
                "batches_per_s": {k: round(v, 1) for k, v in medians.items()},
                "ratio_to_plain": {k: round(v / plain, 3) for k, v in medians.items()},
                "runs": {k: [round(x, 1) for x in v] for k, v in rates.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
