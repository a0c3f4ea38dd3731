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
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mixer.errors import MixerError
from mixer.mix.sampler import MixSampler


def cu_seqlens(positions: np.ndarray) -> np.ndarray:
    """Document start offsets of the flattened x for a (B, seq_len) array of x's positions."""
    rows, seq_len = positions.shape
    starts = positions == 0
    starts[:, 0] = True
    flat = np.flatnonzero(starts.ravel())
    return np.append(flat, rows * seq_len).astype(np.int32)


class Extras:
    """Turns read blocks into a batch dict with the extras a loader was asked for."""

    def __init__(
        self,
        sampler: MixSampler,
        positions: bool = False,
        documents: bool = False,
        loss_mask: bool = False,
        int32: bool = False,
    ):
        self.positions = positions
        self.documents = documents
        self.loss_mask = loss_mask
        self.need_positions = positions or documents or loss_mask
        self.dtype = sampler.dtype
        if int32:
            vocab = max(store.vocab_size for store in sampler.stores)
            if vocab > np.iinfo(np.int32).max:
                raise MixerError(f"int32: vocabulary of {vocab} ids does not fit in int32")
            self.dtype = np.dtype(np.int32)

    def batch(
        self, tokens: np.ndarray, sources: np.ndarray, positions: np.ndarray | None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"tokens": tokens.astype(self.dtype, copy=False), "source": sources}
        if self.positions:
            out["positions"] = positions
        if self.documents:
            cu = cu_seqlens(positions[:, :-1])
            out["cu_seqlens"] = cu
            out["max_seqlen"] = int(np.diff(cu).max())
        if self.loss_mask:
            out["loss_mask"] = positions[:, 1:] != 0
        return out
