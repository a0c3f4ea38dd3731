"""Materialize a slice of a mix as a token store (`mixer mix --export`).

Reruns are idempotent: an export records what it is (the spec, the range and a fingerprint of
every source store's manifest), so exporting the same thing into the same directory again
reuses it, and exporting something else there is refused unless `force` rewrites it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from tqdm import tqdm

from mixer.errors import MixerError
from mixer.mix.sampler import READ_CHUNK_ROWS, MixSampler
from mixer.mix.steering import steering_state
from mixer.store.format import MANIFEST, TOKENIZER_FILE, json_bytes, listed_files
from mixer.store.output import Claimant, LocalOutput
from mixer.store.reader import TokenStore, read_manifest
from mixer.store.writer import ShardWriter, build_manifest

logger = logging.getLogger(__name__)

SHARD_BYTES = 1 << 30  # exported shards stay below this size


def export_record(sampler: MixSampler, start: int, stop: int) -> dict[str, Any]:
    """What an export is, as stored under `mix` in its manifest: equal records, equal bytes."""
    record = {
        "spec": sampler.spec.to_dict(),
        "start": start,
        "stop": stop,
        "sequence_tokens": sampler.seq_len + 1,
        "source_manifests": {
            name: hashlib.sha256(json_bytes(store.manifest)).hexdigest()
            for name, store in zip(sampler.source_names, sampler.stores, strict=True)
        },
    }
    if sampler.amendments:
        record["steering"] = steering_state(sampler)
    return json.loads(json.dumps(record))  # as it reads back from the manifest


def is_exported(sampler: MixSampler, out_dir: str | os.PathLike, start: int, stop: int) -> bool:
    """Whether `out_dir` already holds exactly this export (so `export_mix` would reuse it)."""
    out = Path(out_dir)
    if not (out / MANIFEST).exists():
        return False
    return read_manifest(out).get("mix") == export_record(sampler, start, stop)


def existing_export(out: Path, record: dict[str, Any], force: bool) -> bool:
    """True when `out` already holds this exact export (intact); removes a different one if
    `force`, else refuses it in one line."""
    if not (out / MANIFEST).exists():
        return False
    manifest = read_manifest(out)
    if manifest.get("mix") == record:
        TokenStore.open(out)  # checks every file's size against the manifest
        return True
    if not force:
        what = "another export" if "mix" in manifest else "a token store that is not an export"
        raise MixerError(
            f"{out}: holds {what}; choose a new directory, or force=True to replace it",
            params=("force",),
        )
    if "mix" not in manifest:
        raise MixerError(
            f"{out}: holds a token store that is not an export; force=True only replaces exports",
            params=("force",),
        )
    (out / MANIFEST).unlink()  # first: from here on the directory is not a store
    for name, *_ in listed_files(manifest):
        (out / name).unlink(missing_ok=True)
    return False


def export_mix(
    sampler: MixSampler,
    out_dir: str | os.PathLike,
    start: int = 0,
    stop: int | None = None,
    progress: TextIO | None = None,
    shard_blocks: int | None = None,
    force: bool = False,
) -> Path:
    """Write blocks [start, stop) as a token store, one sequence of seq_len + 1 tokens each.

    For trainers that cannot call Python: sequence k of the output (tokens
    [k (seq_len + 1), (k + 1) (seq_len + 1)) of the concatenated .bin files) is global block
    start + k. Shards appear under their final names only when complete and the manifest,
    which records the spec, the range and the source stores (`export_record`), is written last.
    The same export into the same directory is reused as is; `force` rewrites a different one.
    `progress`: a stream for a bar of blocks written (None: no bar).
    """
    stop = len(sampler) if stop is None else stop
    if not 0 <= start < stop <= len(sampler):
        raise MixerError(
            f"start={start}, stop={stop}: not a range inside [0, {len(sampler)}]",
            params=("start", "stop"),
        )
    if sampler.is_skipped(start, stop):
        lo, hi = next((a, b) for a, b in sampler.skip_blocks if a < stop and start < b)
        raise MixerError(
            f"start={start}, stop={stop}: blocks [{lo}, {hi}) are skipped (skip_steps); "
            "an export holds every block of its range, so export the ranges around them",
            params=("start", "stop"),
        )
    out = Path(out_dir)
    record = export_record(sampler, start, stop)
    if existing_export(out, record, force):
        logger.info("%s already holds this export; reused", out)
        return out
    # The same claim as a tokenize job's: one writer at a time, temporaries of dead ones removed.
    output = LocalOutput(out)
    output.claim(Claimant.for_job(hashlib.sha256(json_bytes(record)).hexdigest(), "export"))
    try:
        if existing_export(out, record, force=False):  # written while this one waited
            return out
        output.publish(_write(sampler, output, start, stop, shard_blocks, progress, record))
    finally:
        output.release()
    return out


def _write(
    sampler: MixSampler,
    output: LocalOutput,
    start: int,
    stop: int,
    shard_blocks: int | None,
    progress: TextIO | None,
    record: dict[str, Any],
) -> dict[str, Any]:
    """Write the shards of blocks [start, stop) into the claimed output; their manifest."""
    width = sampler.seq_len + 1
    per_shard = shard_blocks or max(1, SHARD_BYTES // (width * sampler.dtype.itemsize))
    bar = tqdm(total=stop - start, unit="block", disable=not progress, file=progress or None)
    shards: list[dict[str, Any]] = []
    writer = None
    try:
        for first in range(start, stop, per_shard):
            last = min(first + per_shard, stop)
            writer = ShardWriter(output.staging, f"mix-{len(shards):05d}", sampler.dtype)
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
    tokenizer = dict(sampler.stores[0].manifest["tokenizer"])
    copy = next((t for s in sampler.stores if (t := s.tokenizer_json()) is not None), None)
    if copy is None:  # sources from before stores held their tokenizer's copy
        tokenizer.pop("file", None)
        tokenizer.pop("file_bytes", None)
    else:  # every source has this tokenizer (MixSampler checks its sha256)
        data = copy.encode("utf-8")
        tokenizer.update(file=TOKENIZER_FILE, file_bytes=len(data))
        output.write_file(TOKENIZER_FILE, data)
    return build_manifest(
        shards,
        tokenizer=tokenizer,
        eos_id=sampler.stores[0].eos_id,
        dtype=sampler.dtype,
        mix=record,
    )
