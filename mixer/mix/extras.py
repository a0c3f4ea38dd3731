"""What a GPU step needs besides the tokens, computed on the host next to the batch (opt-in).

For a batch of blocks ``tokens`` (B, seq_len + 1) a trainer takes x = tokens[:, :-1] and
y = tokens[:, 1:]. Document boundaries come from the stores' document index, the same one
`positions` uses (a store's documents end with EOS, so a document starts after each EOS):

- ``cu_seqlens`` (int32, 1-D): offsets into the flattened x (B * seq_len tokens) where a
  document starts: 0, every row start r * seq_len, every document start inside a row, and
  finally B * seq_len. Ready for flash-attention varlen (`flash_attn_varlen_func`); each row
  start is a boundary because rows are unrelated blocks.
- ``max_seqlen`` (int): the longest segment.
- ``loss_mask`` (bool, B x seq_len): False where the target y[r, j] is the first token of a
  new document, i.e. predicting it would cross a document boundary.
- int32 tokens when every store's vocabulary fits (a quarter of int64's host-to-device bytes).

BOS (`bos_id=N`, for tokenizers whose documents are ``BOS text EOS``; stores hold ``text EOS``):
the batch gains ``inputs`` (B, seq_len), x with the token just before each document start
inside a row (the previous document's EOS) replaced by N; the targets stay y = tokens[:, 1:].
So every document that starts inside a row is read as inputs ``BOS t1 .. tn`` against targets
``t1 .. tn EOS``: the BOS predicts the first token and the last token predicts EOS, and no
target crosses a document. A row start is not a document start: it is a block cut at an
arbitrary offset (the middle of a document, or a document whose BOS is the last input of the
block before it in the store), and gets no BOS. Positions, ``cu_seqlens`` and ``max_seqlen``
are those of ``inputs``: a segment starts at each row start and at each BOS. Refused:
``loss_mask=True`` (nothing crosses, the mask would be all True), N equal to the stores' EOS
(documents already start after it), N outside the vocabulary, a store without an EOS id, and,
at read time, a document that does not end with EOS (its last token would be overwritten).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mixer.errors import MixerError
from mixer.mix.sampler import MixSampler, restart_positions


def cu_seqlens(starts: np.ndarray) -> np.ndarray:
    """Segment start offsets of the flattened x for a (B, seq_len) mask of x's segment starts
    (column 0 True)."""
    rows, seq_len = starts.shape
    return np.append(np.flatnonzero(starts), rows * seq_len).astype(np.int32)


def bos_segments(
    tokens: np.ndarray, starts: np.ndarray, bos_id: int, eos_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens with `bos_id` just before each document start inside a row, the mask of their
    segment starts: column 0 and each BOS).

    `starts` are the stores' document starts (`Blocks.starts`). The replaced tokens must be
    EOS: a document that does not end with one would lose its last token, so that is refused."""
    bos = np.zeros(tokens.shape, dtype=bool)
    bos[:, :-1] = starts[:, 1:]
    if not (tokens[bos] == eos_id).all():
        raise MixerError(
            f"bos_id: a document in this batch does not end with EOS {eos_id}, so its BOS would "
            "overwrite a token; rebuild the store with EOS appended, or leave bos_id unset"
        )
    out = tokens.copy()
    out[bos] = bos_id
    bos[:, 0] = True
    return out, bos


def with_bos(
    tokens: np.ndarray, positions: np.ndarray, bos_id: int, eos_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """`bos_segments` from the stores' `positions` (0 at each document start): (tokens with
    BOS, their positions)."""
    out, segments = bos_segments(tokens, positions == 0, bos_id, eos_id)
    return out, restart_positions(segments)


def check_bos(sampler: MixSampler, bos_id: int | None, loss_mask: bool = False) -> int | None:
    """The stores' EOS id when `bos_id` is usable with them; refuses what would be wrong."""
    if bos_id is None:
        return None
    if loss_mask:
        raise MixerError(
            "loss_mask: with bos_id no target crosses a document (BOS predicts its first token), "
            "so the mask would be all True; leave loss_mask off"
        )
    eos = {store.eos_id for store in sampler.stores}
    if None in eos or len(eos) != 1:
        raise MixerError(
            f"bos_id: the stores' EOS ids are {sorted(map(str, eos))}; BOS replaces the EOS "
            "ending the document before, so every store needs the same eos_id"
        )
    (eos_id,) = eos
    vocab = min(store.vocab_size for store in sampler.stores)
    if bos_id == eos_id:
        raise MixerError(
            f"bos_id: {bos_id} is the stores' EOS id; documents already start after it, "
            "leave bos_id unset"
        )
    if not 0 <= bos_id < vocab:
        raise MixerError(f"bos_id: {bos_id} is outside the vocabulary [0, {vocab})")
    return int(eos_id)


class Extras:
    """Turns read blocks into a batch dict with the extras a loader was asked for."""

    def __init__(
        self,
        sampler: MixSampler,
        positions: bool = False,
        documents: bool = False,
        loss_mask: bool = False,
        int32: bool = False,
        bos_id: int | None = None,
    ):
        self.positions = positions
        self.documents = documents
        self.loss_mask = loss_mask
        self.bos_id = bos_id
        self.eos_id = check_bos(sampler, bos_id, loss_mask)
        self.need_starts = positions or documents or loss_mask or bos_id is not None
        self.dtype = sampler.dtype
        if int32:
            vocab = max(store.vocab_size for store in sampler.stores)
            if vocab > np.iinfo(np.int32).max:
                raise MixerError(f"int32: vocabulary of {vocab} ids does not fit in int32")
            self.dtype = np.dtype(np.int32)

    def batch(
        self, tokens: np.ndarray, sources: np.ndarray, starts: np.ndarray | None
    ) -> dict[str, Any]:
        """The batch dict of read blocks; `starts` is their `Blocks.starts` (None unless
        `need_starts`)."""
        out: dict[str, Any] = {"tokens": tokens.astype(self.dtype, copy=False), "source": sources}
        segments = starts
        if self.bos_id is not None:
            inputs, segments = bos_segments(tokens, starts, self.bos_id, self.eos_id)
            out["inputs"] = inputs[:, :-1].astype(self.dtype, copy=False)
        if self.positions:
            out["positions"] = restart_positions(segments)
        if self.documents:
            cu = cu_seqlens(segments[:, :-1])
            out["cu_seqlens"] = cu
            out["max_seqlen"] = int(np.diff(cu).max())
        if self.loss_mask:
            out["loss_mask"] = ~starts[:, 1:]
        return out
