"""Loader throughput next to a plain memmap-slicing loader, as a trainer would consume it.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_train_loader.py [--tokens 40_000_000]
        [--batches 300] [--runs 3]

Two random stores (web 90%, proofpile 10%, ~1000-token documents) are written to a temp dir and
read once into the page cache. Each row then drains --batches batches of 8 x (2048 + 1) tokens
through a torch DataLoader with num_workers=2, --runs times, rows interleaved (medians):

- plain: an IterableDataset that slices consecutive blocks of one memmap (worker w takes
  batches w, w + 2, ...) and returns one int64 tensor per batch: no mixing, no lookup, the
  loader a trainer writes with torch defaults (the ratios are to this row);
- the same plain slices sent as numpy arrays, uncollated: they travel pickled through the
  worker queue's pipe, as MixedDataLoader's batches up to 1 MiB do (a torch tensor from a
  worker goes through a shared-memory segment instead, which costs more per batch);
- plain random slices: the map-style loader most trainers write (a Dataset returning one
  random memmap window, DataLoader(batch_size=8) collating in the workers);
- MixedDataLoader(MixedIterableDataset(..., batch_size=8), num_workers=2): the mix, int64;
- the same with documents=True, loss_mask=True, int32=True (cu_seqlens, max_seqlen).

Prints JSON with batches/s per row and each row's ratio to plain, and the CPU time per batch of
the main process and its workers (psutil) with plain's CPU over each row's. Wall clock on a
shared machine is noisy (medians of interleaved runs); CPU per batch holds still under load.
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
import psutil
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

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


class RandomSlices(Dataset):
    """Map-style: item i is a (SEQ_LEN + 1) window at a random offset of one store's first
    shard, as int64; DataLoader(batch_size=BATCH) collates them in the workers (the nanoGPT
    `get_batch` as a torch Dataset)."""

    def __init__(self, root: str, batches: int):
        self.root, self.tokens = root, None  # mapped in each worker on first use
        tokens = len(TokenStore.open(root).shards[0].tokens)
        rng = np.random.default_rng(0)
        self.offsets = rng.integers(0, tokens - SEQ_LEN - 1, batches * BATCH)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.tokens is None:
            self.tokens = TokenStore.open(self.root).shards[0].tokens
        start = int(self.offsets[i])
        return torch.from_numpy(self.tokens[start : start + SEQ_LEN + 1].astype(np.int64))


class PlainArrays(PlainSlices):
    """`PlainSlices` yielding numpy arrays, passed through uncollated (`as_is`): the batch
    travels pickled through the worker queue's pipe instead of as a shared-memory tensor,
    the transport `MixedDataLoader` uses for batches up to 1 MiB."""

    def __iter__(self):
        for batch in super().__iter__():
            yield batch.numpy()


def as_is(batch):
    return batch


def cpu_seconds(procs) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def drain(loader, batches: int) -> tuple[float, float]:
    """(batches/s, CPU ms per batch of the main process and its workers) over `batches`
    batches, after the first (worker start-up) is out. CPU time is what the loader costs the
    machine; it holds still when other jobs share the cores and wall clock does not."""
    it = iter(loader)
    next(it)
    procs = [psutil.Process(), *psutil.Process().children()]
    c0, t0 = cpu_seconds(procs), time.perf_counter()
    n = sum(1 for _ in zip(range(batches), it, strict=False))
    wall, cpu = time.perf_counter() - t0, cpu_seconds(procs) - c0
    return n / wall, cpu / n * 1e3


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
            "plain memmap slices, numpy through the pipe": lambda: DataLoader(
                PlainArrays(str(root / "web"), args.batches + 1),
                batch_size=None,
                num_workers=2,
                collate_fn=as_is,
            ),
            "plain random slices (map-style)": lambda: DataLoader(
                RandomSlices(str(root / "web"), args.batches + 1), batch_size=BATCH, num_workers=2
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
        cpu: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.runs):
            for name, make in rows.items():
                rate, ms = drain(make(), args.batches)
                rates[name].append(rate)
                cpu[name].append(ms)
    medians = {name: statistics.median(r) for name, r in rates.items()}
    cpu_medians = {name: statistics.median(c) for name, c in cpu.items()}
    plain = medians["plain memmap slices"]
    plain_cpu = cpu_medians["plain memmap slices"]
    print(
        json.dumps(
            {
                "batch": f"{BATCH} x {SEQ_LEN + 1}",
                "batches_per_s": {k: round(v, 1) for k, v in medians.items()},
                "ratio_to_plain": {k: round(v / plain, 3) for k, v in medians.items()},
                "cpu_ms_per_batch": {k: round(v, 3) for k, v in cpu_medians.items()},
                "cpu_ratio_plain_over_row": {
                    k: round(plain_cpu / v, 3) for k, v in cpu_medians.items()
                },
                "runs": {k: [round(x, 1) for x in v] for k, v in rates.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
