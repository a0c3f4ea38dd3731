"""A random-access data source of whole rank batches, for grain (JAX) and any indexable loader.

grain's `DataLoader` hands records to its workers round robin and batches inside each worker,
so a source of single blocks with ``grain.Batch`` regroups blocks differently per worker count.
Record r of `BatchSource` is already this rank's whole batch of the r-th global step still to
hand out (`BatchIterator`'s dict of numpy arrays), so use it with no Batch operation and a
sequential `IndexSampler` (shuffle=False, one epoch): every worker count yields the same
batches in the same order, and grain's own iterator state (`get_state`/`set_state`) resumes
exactly. The source itself imports no framework.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mixer.errors import MixerError
from mixer.mix.loader import BatchIterator
from mixer.mix.sampler import MixSampler


class BatchSource:
    """`grain.RandomAccessDataSource` protocol (len, getitem): record r = the r-th batch left.

    Takes `BatchIterator`'s arguments (rank, world_size, start_step, extras); `state`, a saved
    `LoaderState` dict (any batch size or world size), starts the records there."""

    def __init__(
        self,
        sampler: MixSampler,
        batch_size: int,
        state: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        self.batches = BatchIterator(sampler, batch_size, **kwargs)
        if state is not None:
            self.batches.load_state_dict(state)
        self.steps = np.fromiter(self.batches.steps_left(), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, record: int) -> dict[str, Any]:
        step = int(self.steps[record])
        return next(self.batches.iter_steps([step]))

    def set_weights(self, weights: dict[str, float], at_step: int) -> None:
        raise MixerError(
            "BatchSource.set_weights: grain's workers read records ahead on their own copies; "
            "build the source from an amended sampler (MixSampler.amended) or from a state "
            "with the change"
        )

    def set_policy(self, policy: Any) -> None:
        raise MixerError(
            "BatchSource: an online policy changes weights during training, which grain's "
            "workers would not see; use BatchIterator with report_loss"
        )

    def __repr__(self) -> str:  # grain logs and checkpoints the source's repr
        b = self.batches
        return (
            f"BatchSource(batch_size={b.batch_size}, rank={b.rank}, world_size={b.world_size}, "
            f"first_step={b.step}, records={len(self)})"
        )
