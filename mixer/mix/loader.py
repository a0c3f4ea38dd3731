"""A framework-free batch iterator (JAX, numpy or custom loops) that resumes exactly.

The sampler is a pure function of the global index, so the whole loader state is the next
global step plus the run's steering: resuming at step k, with any world size of the same
global batch size, yields the same global batches an uninterrupted run would have.

Steering (`set_weights`, `skip_steps`, `set_policy`) changes only steps not yet handed out;
each change is recorded (`mixer.mix.steering`) in `state_dict()` with a fingerprint of the plan
before the next step, so `load_state_dict` on a fresh iterator built from the original spec
continues byte-identically, and refuses a spec whose past was edited.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from mixer.errors import MixerError
from mixer.mix.sampler import MixSampler
from mixer.mix.steering import apply_steering, steering_state


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
        self.policy: Any = None
        self._changes = 0  # bumped by every steering change: iterators restart from self.step
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
        while True:
            changes = self._changes
            for batch in self.iter_steps(self.steps_left()):
                self.step = batch["step"] + 1  # handed out means consumed: resume after it
                yield batch
                if self._changes != changes:
                    break  # steered: batches located ahead with the old sampler are dropped
            else:
                return

    # -- steering
    def set_weights(self, weights: dict[str, float], at_step: int) -> None:
        """Mix by `weights` from global step `at_step` to the end of the phase it falls in
        (`MixSampler.amended`); `at_step` must not be before the next step to hand out."""
        self._check_future("at_step", at_step)
        self.sampler = self.sampler.amended(weights, at_step * self.global_batch_size)
        self._changes += 1

    def skip_steps(self, start_step: int, stop_step: int) -> None:
        """Leave out global steps [start_step, stop_step): consumed, not re-drawn, so every
        later step is unchanged."""
        self._check_future("start_step", start_step)
        g = self.global_batch_size
        self.sampler = self.sampler.skipping(start_step * g, min(stop_step, self.num_steps) * g)
        self._changes += 1

    def _check_future(self, name: str, step: int) -> None:
        if not self.step <= step < self.num_steps:
            raise MixerError(
                f"{name}: {step} is not in [{self.step}, {self.num_steps}): steps before "
                f"{self.step} were already handed out (or prefetched), so their data cannot change"
            )

    def set_policy(self, policy: Any) -> None:
        """Attach an online mixing policy (`mixer.mix.policy`): `report_loss` feeds it and
        applies its proposals; its state travels in `state_dict()`."""
        if getattr(policy, "sources", None) != self.sampler.source_names:
            raise MixerError(
                f"policy: its sources {getattr(policy, 'sources', None)} are not the mix's "
                f"{self.sampler.source_names} (same names, same order)"
            )
        self.policy = policy

    def report_loss(self, step: int, loss_sums: Any, counts: Any) -> dict[str, float] | None:
        """Feed the attached policy global step `step`'s per-source loss sums and row counts
        (all-reduced over ranks under data parallelism, so every rank proposes the same); when
        a proposal is due, apply it from step + 1 and return it."""
        if self.policy is None:
            raise MixerError("report_loss: no policy attached; call set_policy first")
        self.policy.observe(step, loss_sums, counts)
        if not self.policy.due(step) or step + 1 >= self.num_steps:
            return None
        at = max(step + 1, self.step)
        if at >= self.num_steps:
            return None
        weights = self.policy.propose(self.sampler.weight_caps(at * self.global_batch_size))
        self.set_weights(weights, at)
        return weights

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

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable: the next step, the global batch size, the steering (amendments
        and skipped ranges), a fingerprint of the plan before the next step, the policy."""
        state: dict[str, Any] = {"step": self.step, "global_batch_size": self.global_batch_size}
        state["steering"] = steering_state(self.sampler)
        state["fingerprint"] = self.sampler.fingerprint(self.step * self.global_batch_size)
        if self.policy is not None:
            state["policy"] = self.policy.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at `state['step']` with its steering; the global batch size must match the run
        that saved it, and the plan before that step must be the one it was saved with."""
        if int(state["global_batch_size"]) != self.global_batch_size:
            raise MixerError(
                f"global_batch_size: checkpoint has {state['global_batch_size']}, this loader "
                f"has {self.global_batch_size} (batch_size x world_size); resuming would skip "
                "or repeat data"
            )
        step = int(state["step"])
        if not 0 <= step <= self.num_steps:
            raise MixerError(f"step: {step} outside [0, {self.num_steps}] for this mix")
        sampler = self.sampler
        if "steering" in state:
            sampler = apply_steering(sampler.unsteered(), state["steering"])
        if "fingerprint" in state:
            sampler.check_fingerprint(
                state["fingerprint"], step * self.global_batch_size, f"step {step}"
            )
        if "policy" in state:
            if self.policy is None:
                raise MixerError(
                    "policy: the checkpoint has a mixing policy's state; attach the same "
                    "policy (set_policy) before load_state_dict"
                )
            self.policy.load_state_dict(state["policy"])
        self.sampler = sampler
        self.step = step
        self._changes += 1
