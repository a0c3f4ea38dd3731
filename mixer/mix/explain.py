"""What did step N read: the rows of a global batch, their blocks and the documents in them.

`explain_step` is what `mixer explain SPEC --step N` prints; every row lists the documents whose
pieces fill its `seq_len + 1` tokens, with the input file and record each came from
(`MixSampler.provenance`) and, with a decoder (`load_decoder`: by default the copy of the
tokenizer the stores hold), the first characters of the document.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from mixer.errors import MixerError
from mixer.mix.sampler import MixSampler, check_global_batch
from mixer.store.reader import TokenStore

PREVIEW_TOKENS = 48  # tokens decoded per document for its preview


def load_decoder(sampler: MixSampler, tokenizer: str | os.PathLike | None) -> Any | None:
    """A `tokenizers.Tokenizer` for previews: `tokenizer` when given (it must be the one the
    stores were built with), else the copy a store holds (`TokenStore.tokenizer_json`); None
    when no store holds one (stores written before mixer kept a copy)."""
    if tokenizer is not None:
        return store_decoder(sampler.stores[0], tokenizer)
    for store in sampler.stores:
        if (decoder := store_decoder(store, None)) is not None:
            return decoder
    return None


def store_decoder(store: TokenStore, tokenizer: str | os.PathLike | None) -> Any | None:
    """`load_decoder` for one store (`mixer inspect --sample`)."""
    from tokenizers import Tokenizer

    if tokenizer is None:
        text = store.tokenizer_json()
        return None if text is None else Tokenizer.from_str(text)
    path = Path(tokenizer)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise MixerError(f"tokenizer {tokenizer}: no tokenizer.json there")
    raw = path.read_bytes()
    expected = store.tokenizer_sha256
    if hashlib.sha256(raw).hexdigest() != expected:
        raise MixerError(
            f"tokenizer {tokenizer}: not the tokenizer the stores were built with "
            f"(sha256 {expected[:12]}…)"
        )
    return Tokenizer.from_str(raw.decode("utf-8"))


def explain_step(
    sampler: MixSampler,
    step: int,
    global_batch_size: int,
    rank: int | None = None,
    world_size: int = 1,
    decoder: Any | None = None,
    chars: int = 60,
    first: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of global batch `step` (only rank `rank`'s slice when given), each with its global
    block index, source, block, epoch, phase and documents (`MixSampler.provenance`, plus a
    `text` preview when a decoder is given). The step's first global block is `first`, by
    default step x global_batch_size; a run resumed at another global batch size places its
    steps elsewhere, which its loader state knows (`LoaderState.locate_step`)."""
    check_global_batch(
        sampler.spec,
        global_batch_size,
        f"global_batch_size={global_batch_size}",
        params=("global_batch_size",),
    )
    steps = sampler.num_batches(global_batch_size)
    if first is None:
        if not 0 <= step < steps:
            raise MixerError(
                f"step={step} outside [0, {steps}) for global batch size {global_batch_size}",
                params=("step",),
            )
        first = step * global_batch_size
    elif not 0 <= first <= len(sampler) - global_batch_size:
        raise MixerError(
            f"step={step} starts at block {first}, outside the run's {len(sampler)} blocks",
            params=("step",),
        )
    if global_batch_size % world_size:
        raise MixerError(
            f"world_size={world_size} does not divide the global batch size {global_batch_size}",
            params=("world_size",),
        )
    per_rank = global_batch_size // world_size
    rows = range(first, first + global_batch_size)
    if rank is not None:
        if not 0 <= rank < world_size:
            raise MixerError(
                f"rank={rank} outside [0, {world_size}) (world_size={world_size})",
                params=("rank", "world_size"),
            )
        rows = range(first + rank * per_rank, first + (rank + 1) * per_rank)
    out = []
    for i in rows:
        ref = sampler.locate(i)
        documents = sampler.provenance(i)
        if decoder is not None:
            store = sampler.stores[sampler.source_names.index(ref.source)]
            for piece in documents:
                ids = store.document(piece["document"])[:PREVIEW_TOKENS].tolist()
                piece["text"] = decoder.decode(ids)[:chars]
        out.append(
            {
                "row": i - first,
                "rank": (i - first) // per_rank,
                "index": i,
                "source": ref.source,
                "block": ref.block,
                "epoch": ref.epoch,
                "phase": ref.phase,
                "skipped": sampler.is_skipped(i, i + 1),
                "documents": documents,
            }
        )
    return out


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The text `mixer explain` prints: one line per row, one indented line per document."""
    lines = []
    for row in rows:
        skipped = "  (skipped)" if row["skipped"] else ""
        lines.append(
            f"row {row['row']} (rank {row['rank']}, block {row['index']}): {row['source']} "
            f"block {row['block']} epoch {row['epoch']} phase {row['phase']}{skipped}"
        )
        for d in row["documents"]:
            where = "no provenance" if d["input"] is None else f"{d['input']}:{d['record']}"
            text = f"  {d['text']!r}" if "text" in d else ""
            lines.append(
                f"    [{d['start']:>5}, {d['stop']:>5}) document {d['document']} "
                f"(from token {d['offset']}) {where}{text}"
            )
    return "\n".join(lines)
