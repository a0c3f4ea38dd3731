"""mixer's MixSampler over the stores, and the memmap slicing ceiling, for bench_mix_peers.py.

Runs in the main .venv. A sample is block k of one source: tokens [k seq_len, k seq_len +
seq_len + 1) of its store's concatenated documents (crossing document boundaries); the source of
global index i comes from a fixed period of exact fractions, the block from a keyed permutation
per (source, epoch). Building is opening the stores and the period; nothing grows with the plan.
"""

import sys
from pathlib import Path

import numpy as np
from mix_common import emit_run, memory_after_read_mb, peak_rss_mb, read_config, sample_rate, timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_sampler import copy_blocks  # noqa: E402

from mixer.mix.loader import BatchIterator  # noqa: E402
from mixer.mix.sampler import MixSampler  # noqa: E402
from mixer.mix.spec import MixSpec  # noqa: E402


def slice_copy_rates(sampler: MixSampler, count: int) -> dict:
    """Plain slice copies of the very blocks the sampler picks, located beforehand: from the
    np.memmaps (the ceiling the issue names) and from plain ndarray views of them (no
    np.memmap.__getitem__ overhead; what the sampler itself slices)."""
    refs = sampler.locate_many(np.arange(count))
    memmaps = [store.shards[0].tokens for store in sampler.stores]
    out = np.ones((count, sampler.seq_len + 1), dtype=sampler.dtype)  # pages faulted in now
    starts, sources = (refs.block * sampler.seq_len).tolist(), refs.source.tolist()
    rates = {}
    for name, arrays in (
        ("np.memmap slice copy (ceiling)", memmaps),
        ("np.ndarray view slice copy", [m.view(np.ndarray) for m in memmaps]),
    ):
        _, seconds = timed(lambda arrays=arrays: copy_blocks(arrays, sources, starts, out))
        rates[name] = {"samples": count, "samples_per_s": count / seconds, "first": []}
    return rates


def main() -> None:
    config = read_config()
    rss_before = peak_rss_mb()
    spec = MixSpec.from_dict(
        {
            "seq_len": config["seq_len"],
            "seed": config["seed"],
            "total_tokens": config["plan_tokens"],
            "source": [
                {"name": s["name"], "store": s["store"], "weight": s["weight"]}
                for s in config["sources"]
            ],
        }
    )
    sampler, build_seconds = timed(lambda: MixSampler(spec))
    rss_built = peak_rss_mb()
    count = min(config["samples"], len(sampler))
    batch_size = config["batch_size"]
    steps = range(count // batch_size)  # so that it reads no rows beyond those counted
    batches = BatchIterator(sampler, batch_size).iter_steps(steps)
    rates = {"sampler[i]": sample_rate((sampler[i] for i in range(len(sampler))), count)}
    rates[f"BatchIterator({batch_size})"] = sample_rate(
        (row for batch in batches for row in batch["tokens"]), len(steps) * batch_size
    )
    rss_read = memory_after_read_mb()  # before the ceiling and the mix statistics
    if all(len(store.shards) == 1 for store in sampler.stores):
        rates.update(slice_copy_rates(sampler, count))
    sources = sampler.locate_many(np.arange(len(sampler))).source
    rss = (rss_before, rss_built, *rss_read)
    emit_run("mixer", config, build_seconds, len(sampler), rss, rates, sources)


if __name__ == "__main__":
    main()
