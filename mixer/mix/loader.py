"""A framework-free batch iterator (JAX, numpy or custom loops) that resumes exactly.

The sampler is a pure function of the global index, so the whole loader state is the next
global step: resuming at step k, with any world size of the same global batch size, yields the
same global batches an uninterrupted run would have.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from mixer.errors import MixerError
from mixer.mix.sampler import MixSampler


class BatchIterator:
    """This rank's slice of each global batch, from `start_step` on, as a dict of arrays:

    ``tokens`` (batch_size, seq_len + 1) in the stores' dtype; ``source`` (batch_size,) ids into
    `sampler.source_names` (to log loss per source); ``positions`` (like tokens, restarting at
    each document start) when `positions=True`; ``step``, the global step of the batch.
    """

    def __init__(
        self,
        sampler: MixSampler,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        positions: bool = False,
    ):
        self.sampler = sampler
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.positions = positions
        self.global_batch_size = batch_size * world_size
        self.num_steps = sampler.num_batches(self.global_batch_size)
        self.step = 0
        self.load_state_dict({"step": start_step, "global_batch_size": self.global_batch_size})

    def __len__(self) -> int:
        """Batches left to yield."""
        return self.sampler.num_batch_steps(self.global_batch_size, self.step)

    def steps_left(self) -> Iterator[int]:
        """Global steps still to hand out, in order: skipped ranges are left out."""
        return self.sampler.batch_steps(self.global_batch_size, self.step)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.iter_steps(self.steps_left()):
            self.step = batch["step"] + 1  # handed out means consumed: resume after it
            yield batch

    def iter_steps(self, steps: Iterable[int]) -> Iterator[dict[str, Any]]:
        """Batches of the given global steps, leaving the resume state alone (for workers)."""
        steps, read = itertools.tee(steps)  # tee buffers only the chunk read_batches holds
        batches = self.sampler.read_batches(
            self.batch_size, read, self.rank, self.world_size, self.positions
        )
        for step, blocks in zip(steps, batches, strict=True):
            batch: dict[str, Any] = {"tokens": blocks.tokens, "source": blocks.sources}
            if blocks.positions is not None:
                batch["positions"] = blocks.positions
            batch["step"] = step
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at `state['step']`; the global batch size must match the run that saved it."""
        if int(state["global_batch_size"]) != self.global_batch_size:
            raise MixerError(
                f"global_batch_size: checkpoint has {state['global_batch_size']}, this loader "
                f"has {self.global_batch_size} (batch_size x world_size); resuming would skip "
                "or repeat data"
            )
        step = int(state["step"])
        if not 0 <= step <= self.num_steps:
            raise MixerError(f"step: {step} outside [0, {self.num_steps}] for this mix")
        self.step = step
