"""A/B of single lookups, `sampler[i]`, against another commit's sampler, in one process.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/ab_sampler_getitem.py [--base main] [--runs 15]

The machine is shared and its load drifts by 2-4x within a minute, so separate invocations
cannot compare two versions. Here `mixer/mix/sampler.py` of `--base` (read with `git show`)
is loaded as a second module next to the checkout's, both samplers open the same page-cached
stores (`bench_sampler.write_random_store`, web 98% / proofpile 2%), and each run times, in
turn, the limit (slice copies from the stores' own ndarray views into a preallocated array,
blocks located beforehand), the base's `sampler[i]` and the checkout's over the same blocks.
Both share the checkout's permutation, spec and store modules (the base's sampler must import
against them); their blocks are checked equal first. Reported: median blocks/s of each and
the median over runs of each sampler's rate / the limit's rate in that run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from ab_base import module_at  # noqa: E402
from bench_sampler import copy_blocks, mix_spec, write_random_store  # noqa: E402

from mixer.mix.sampler import MixSampler  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="main", help="commit whose sampler is the A side")
    parser.add_argument("--tokens", type=int, default=20_000_000, help="tokens in both stores")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--blocks", type=int, default=20_000, help="blocks per run")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    base = module_at(args.base, "mixer/mix/sampler.py", "base_sampler")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_random_store(root / "web", int(args.tokens * 0.9), seed=1)
        write_random_store(root / "proofpile", int(args.tokens * 0.1), seed=2)
        spec = mix_spec(root, args.seq_len, 4 * args.tokens, (0.98, 0.02))
        new = MixSampler(spec)
        stores = dict(zip(new.source_names, new.stores, strict=True))
        old = base.MixSampler(spec, stores)
        n = min(args.blocks, len(new))
        for i in range(n):  # page cache, round tables, and the two agree
            if not np.array_equal(old[i], new[i]):
                raise SystemExit(f"block {i} differs between {args.base} and the checkout")
        refs = new.locate_many(np.arange(n))
        views = [store.shards[0].tokens for store in new.stores]
        starts = (refs.block * args.seq_len).tolist()
        sources = refs.source.tolist()
        out = np.empty((n, args.seq_len + 1), dtype=new.dtype)

        def lookups(sampler) -> None:
            for i in range(n):
                sampler[i]

        fns = {
            "limit: ndarray view slice copy": lambda: copy_blocks(views, sources, starts, out),
            f"{args.base} sampler[i]": lambda: lookups(old),
            "checkout sampler[i]": lambda: lookups(new),
        }
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(args.runs):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)

    limit = times["limit: ndarray view slice copy"]
    print(f"seq_len {args.seq_len}, {n:,} blocks per run, {args.runs} alternated runs\n")
    print("| path | blocks/s (median) | x limit (median of per-run ratios) |")
    print("|---|---:|---:|")
    for name, t in times.items():
        ratio = statistics.median(lim / x for lim, x in zip(limit, t, strict=True))
        print(f"| {name} | {n / statistics.median(t):,.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
