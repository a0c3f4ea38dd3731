"""Materialize a slice of a mix as a token store (`mixer mix --export`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mixer.errors import MixerError
from mixer.mix.sampler import READ_CHUNK_ROWS, MixSampler
from mixer.mix.steering import steering_state
from mixer.store.format import MANIFEST, write_json_atomic
from mixer.store.writer import ShardWriter, build_manifest

SHARD_BYTES = 1 << 30  # exported shards stay below this size


def export_mix(
    sampler: MixSampler,
    out_dir: str | os.PathLike,
    start: int = 0,
    stop: int | None = None,
    progress: bool = True,
    shard_blocks: int | None = None,
) -> Path:
    """Write blocks [start, stop) as a token store, one sequence of seq_len + 1 tokens each.

    For trainers that cannot call Python: sequence k of the output (tokens
    [k (seq_len + 1), (k + 1) (seq_len + 1)) of the concatenated .bin files) is global block
    start + k. Shards appear under their final names only when complete and the manifest,
    which records the spec and the range, is written last.
    """
    stop = len(sampler) if stop is None else stop
    if not 0 <= start < stop <= len(sampler):
        raise MixerError(
            f"--start/--stop: [{start}, {stop}) is not a range inside [0, {len(sampler)}]"
        )
    if sampler.is_skipped(start, stop):
        lo, hi = next((a, b) for a, b in sampler.skip_blocks if a < stop and start < b)
        raise MixerError(
            f"--start/--stop: blocks [{lo}, {hi}) of [{start}, {stop}) are skipped (skip_steps); "
            "an export holds every block of its range, so export the ranges around them"
        )
    out = Path(out_dir)
    if (out / MANIFEST).exists():
        raise MixerError(f"{out}: already a token store; export into a new directory")
    out.mkdir(parents=True, exist_ok=True)
    width = sampler.seq_len + 1
    per_shard = shard_blocks or max(1, SHARD_BYTES // (width * sampler.dtype.itemsize))
    bar = tqdm(total=stop - start, unit="block", disable=not progress, file=sys.stderr)
    shards: list[dict[str, Any]] = []
    writer = None
    try:
        for first in range(start, stop, per_shard):
            last = min(first + per_shard, stop)
            writer = ShardWriter(out, f"mix-{len(shards):05d}", sampler.dtype)
            for lo in range(first, last, READ_CHUNK_ROWS):
                hi = min(lo + READ_CHUNK_ROWS, last)
                tokens = sampler.read_many(np.arange(lo, hi)).tokens
                writer.add_documents(np.full(hi - lo, width), tokens.ravel())
                bar.update(hi - lo)
            shards.append(writer.close())
            writer = None
    finally:
        bar.close()
        if writer is not None:
            writer.abort()
    first_store = sampler.stores[0]
    mix = {
        "spec": sampler.spec.to_dict(),
        "start": start,
        "stop": stop,
        "sequence_tokens": width,
    }
    if sampler.amendments:
        mix["steering"] = steering_state(sampler)
    manifest = build_manifest(
        shards,
        tokenizer=first_store.manifest["tokenizer"],
        eos_id=first_store.eos_id,
        dtype=sampler.dtype,
        mix=mix,
    )
    write_json_atomic(out / MANIFEST, manifest)
    return out
