"""A framework-free batch iterator (JAX, numpy or custom loops) that resumes exactly, and the one
resume state (`LoaderState`) every loader wrapper saves and loads.

The sampler is a pure function of the global block index, so what a loader has consumed is one
number: `samples`, the global blocks handed out so far. A state also says the `step` it was
taken at and the global batch size G it was taken under. A loader resumed from it numbers its
steps on from `step`, and its step s covers global blocks
``[samples + (s - step) * G', samples + (s - step + 1) * G')`` for its own G' =
batch_size x world_size: with G' = G that is the uninterrupted run's batch s; with another G'
(8 -> 6 data-parallel ranks) it continues at the next unconsumed block, neither replaying nor
skipping one.

Steering (`set_weights`, `skip_steps`, `set_policy`) changes only steps not yet handed out;
each change is recorded (`mixer.mix.steering`) in the state with a fingerprint of the plan
before the next block, so `load_state_dict` on a fresh iterator built from the original spec
continues byte-identically, and refuses a spec whose past was edited.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from mixer.errors import MixerError
from mixer.mix.sampler import READ_CHUNK_ROWS, MixSampler, check_geometry
from mixer.mix.steering import apply_steering, keep_future_steering, steering_state

STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class LoaderState:
    """What a loader has consumed: the one JSON-able dict all loaders save (`to_dict`) and
    load (`from_dict`).

    `step`: the next global step; `samples`: global blocks consumed before it; `global_batch_size`:
    the G they were consumed at. `worker` is (id, num_workers) when the state is one DataLoader
    worker's own position (torchdata's StatefulDataLoader keeps one per worker); `None` for the
    state of the whole stream. `steering` (amendments and skipped ranges, `mixer.mix.steering`),
    `fingerprint` (of the plan before block `samples`) and `policy` (an online policy's state)
    are JSON dicts, absent when unused.

    `segments`: where each stretch of steps at one global batch size began, oldest first, as
    (step, samples, G); the last is the stretch the state is in. It is what maps any past step
    to its blocks (`locate_step`) in a run resumed at another G; saved only when there was
    more than the one stretch from step 0 (absent means ((0, 0, G),) when samples == step x G),
    and None when unknown (a state saved before mixer kept them, from a resized run).
    """

    step: int
    samples: int
    global_batch_size: int
    worker: tuple[int, int] | None = None
    steering: dict[str, Any] | None = None
    fingerprint: dict[str, str] | None = None
    policy: dict[str, Any] | None = None
    segments: tuple[tuple[int, int, int], ...] | None = ()

    def __post_init__(self) -> None:
        if self.segments == ():  # the default: one stretch from step 0, when that fits
            one = ((0, 0, self.global_batch_size),)
            fits = self.samples == self.step * self.global_batch_size
            object.__setattr__(self, "segments", one if fits else None)
        if self.segments is None:
            return
        segments = tuple((int(a), int(b), int(c)) for a, b, c in self.segments)
        object.__setattr__(self, "segments", segments)
        step, samples, g = segments[-1]
        pairs = zip(segments, segments[1:], strict=False)
        ordered = all(x[0] < y[0] and x[1] <= y[1] for x, y in pairs)
        if (
            not ordered
            or segments[0][:2] != (0, 0)
            or g != self.global_batch_size
            or step > self.step
            or (samples + (self.step - step) * g != self.samples)
        ):
            raise MixerError(
                f"loader state: segments {[list(x) for x in segments]} do not lead to step "
                f"{self.step} at block {self.samples} with G {self.global_batch_size}"
            )

    def locate_step(self, step: int) -> tuple[int, int]:
        """(first global block, G) of global step `step` in the run this state was taken in;
        steps after the state are taken to continue at its G."""
        if self.segments is None:
            if step < self.step:
                raise MixerError(
                    f"step {step}: this state's run changed its global batch size before step "
                    f"{self.step}, and the state (saved before mixer recorded where) cannot "
                    f"place earlier steps; use a state saved at or before step {step}"
                )
            g = self.global_batch_size
            return self.samples + (step - self.step) * g, g
        start, samples, g = next(x for x in reversed(self.segments) if x[0] <= step)
        return samples + (step - start) * g, g

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": STATE_VERSION,
            "step": self.step,
            "samples": self.samples,
            "global_batch_size": self.global_batch_size,
        }
        if self.worker is not None:
            out["worker"] = list(self.worker)
        for key in ("steering", "fingerprint", "policy"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.segments != ((0, 0, self.global_batch_size),):
            segments = self.segments
            out["segments"] = None if segments is None else [list(x) for x in segments]
        return out

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> LoaderState:
        """Parse a saved state; a state from before `samples` existed means step x G samples.

        Unknown keys are refused: a state from a newer mixer may carry something (a weight
        change, a fingerprint) that ignoring would silently change the data."""
        known = {f.name for f in dataclasses.fields(cls)} | {"version"}
        unknown = sorted(set(state) - known)
        if unknown:
            raise MixerError(
                f"loader state: unknown keys {unknown}; it was saved by a newer mixer, "
                "resume with that version"
            )
        if int(state.get("version", STATE_VERSION)) > STATE_VERSION:
            raise MixerError(
                f"loader state: version {state['version']} is newer than this mixer's "
                f"{STATE_VERSION}; resume with the mixer that saved it"
            )
        step, g = int(state["step"]), int(state["global_batch_size"])
        samples = int(state.get("samples", step * g))
        worker = state.get("worker")
        if step < 0 or samples < 0 or g < 1:
            raise MixerError(f"loader state: step {step}, samples {samples}, G {g} is invalid")
        return cls(
            step,
            samples,
            g,
            None if worker is None else (int(worker[0]), int(worker[1])),
            state.get("steering"),
            state.get("fingerprint"),
            state.get("policy"),
            state.get("segments", ()),
        )


class BatchIterator:
    """This rank's slice of each global batch, from `start_step` on, as a dict of arrays:

    ``tokens`` (batch_size, seq_len + 1); ``source`` (batch_size,) ids into
    `sampler.source_names` (to log loss per source); ``index`` (batch_size,), the global block
    index of each row (a sample id); ``step``, the global step of the batch.
    Opt-in extras (`mixer.mix.extras`): ``positions`` (restarting at each document start);
    with `documents=True`, ``cu_seqlens`` and ``max_seqlen`` of x = tokens[:, :-1] for varlen
    attention; with `loss_mask=True`, ``loss_mask`` (batch_size, seq_len), 0 where a target
    starts a new document. `int32=True` gives int32 tokens when the vocabulary fits. With
    `bos_id`, ``inputs`` (batch_size, seq_len): x with BOS before each document inside a row.

    Global step s covers global blocks [origin + (s - origin_step) G, ... + G), G =
    batch_size x world_size, and rank r takes its r-th contiguous slice of batch_size blocks.
    A batch holding a skipped block (`MixSampler.skipping`) is left out whole.

    Parameters: `sampler`, the stream; `batch_size`, blocks per rank per step; `rank` and
    `world_size`, this process's place among the data-parallel ranks; `start_step`, the global
    step to begin at (or `load_state_dict` a saved state); `positions`, `documents`,
    `loss_mask`, `int32` and `bos_id`, the extras above.
    """

    def __init__(
        self,
        sampler: MixSampler,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        positions: bool = False,
        documents: bool = False,
        loss_mask: bool = False,
        int32: bool = False,
        bos_id: int | None = None,
    ):
        check_geometry(sampler.spec, batch_size, rank, world_size)
        from mixer.mix.extras import Extras

        self.sampler = sampler
        self.policy: Any = None
        self._changes = 0  # bumped by every steering change: iterators restart from self.step
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.positions = positions
        self.extras = Extras(sampler, positions, documents, loss_mask, int32, bos_id)
        self.global_batch_size = batch_size * world_size
        self.origin_step = 0
        self.origin_samples = 0
        self.step = 0
        self.segments: tuple[tuple[int, int, int], ...] | None = ()  # LoaderState.segments
        self.load_state_dict(
            {"step": start_step, "global_batch_size": self.global_batch_size}, origin=True
        )

    # -- geometry
    def sample_of(self, step: int) -> int:
        """First global block of global step `step`."""
        return self.origin_samples + (step - self.origin_step) * self.global_batch_size

    @property
    def num_steps(self) -> int:
        """One past the last whole global step of the stream."""
        left = len(self.sampler) - self.origin_samples
        return self.origin_step + left // self.global_batch_size

    def _skipped(self, step: int) -> bool:
        lo, hi = self.sample_of(step), self.sample_of(step + 1)
        return any(a < hi and lo < b for a, b in self.sampler.skip_blocks)

    def steps_left(self) -> Iterator[int]:
        """Global steps still to hand out, in order: batches holding skipped blocks left out."""
        if not self.sampler.skip_blocks:
            return iter(range(self.step, self.num_steps))
        return (s for s in range(self.step, self.num_steps) if not self._skipped(s))

    def __len__(self) -> int:
        """Batches left to yield."""
        if not self.sampler.skip_blocks:
            return max(0, self.num_steps - self.step)
        return sum(1 for _ in self.steps_left())

    # -- batches
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
        self.sampler = self.sampler.amended(weights, self.sample_of(at_step))
        self._changes += 1

    def skip_steps(self, start_step: int, stop_step: int) -> None:
        """Leave out global steps [start_step, stop_step): consumed, not re-drawn, so every
        later step is unchanged."""
        self._check_future("start_step", start_step)
        stop = self.sample_of(min(stop_step, self.num_steps))
        self.sampler = self.sampler.skipping(self.sample_of(start_step), stop)
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
        weights = self.policy.propose(self.sampler.weight_caps(self.sample_of(at)))
        self.set_weights(weights, at)
        return weights

    def iter_steps(self, steps: Iterable[int]) -> Iterator[dict[str, Any]]:
        """Batches of the given global steps, leaving the resume state alone (for workers)."""
        b = self.batch_size
        per_chunk = max(1, READ_CHUNK_ROWS // b)
        steps = iter(steps)
        while chunk := [s for _, s in zip(range(per_chunk), steps, strict=False)]:
            if min(chunk) < self.origin_step or max(chunk) >= self.num_steps:
                raise IndexError(f"steps outside [{self.origin_step}, {self.num_steps})")
            first = np.array([self.sample_of(s) for s in chunk], dtype=np.int64)
            rows = (first[:, None] + self.rank * b + np.arange(b)).ravel()
            blocks = self.sampler.read_many(rows, starts=self.extras.need_starts)
            for n, step in enumerate(chunk):
                part = slice(n * b, (n + 1) * b)
                starts = None if blocks.starts is None else blocks.starts[part]
                batch = self.extras.batch(blocks.tokens[part], blocks.sources[part], starts)
                batch["index"] = rows[part]
                batch["step"] = step
                yield batch

    # -- state
    def state(self) -> LoaderState:
        """The next step, the blocks consumed before it and the global batch size, with the
        steering, a fingerprint of the plan before the next block, and the policy's state."""
        samples = self.sample_of(self.step)
        return LoaderState(
            self.step,
            samples,
            self.global_batch_size,
            steering=steering_state(self.sampler),
            fingerprint=self.sampler.fingerprint(samples),
            policy=None if self.policy is None else self.policy.state_dict(),
            segments=self.segments,
        )

    def state_dict(self) -> dict[str, Any]:
        return self.state().to_dict()

    def load_state_dict(self, state: Mapping[str, Any], origin: bool = False) -> None:
        """Resume where `state` stopped: at its next unconsumed block, under this loader's own
        global batch size (which may differ from the one the state was taken at), with its
        steering; the plan before that block must be the one it was saved with. Steering set on
        this loader that the state lacks is kept when it lies at or after the resume point
        (torchdata loads a state into each worker's copy after `set_weights` reached it) and
        refused before it."""
        parsed = LoaderState.from_dict(state)
        if parsed.worker is not None:
            raise MixerError(
                "loader state: this is one DataLoader worker's state; load the whole "
                "StatefulDataLoader state (or mixer.mix.torch.stream_state of it)"
            )
        if not 0 <= parsed.samples <= len(self.sampler):
            limit = len(self.sampler) // parsed.global_batch_size
            raise MixerError(
                f"step: {parsed.step} outside [0, {limit}] for this mix"
                if origin
                else f"samples: {parsed.samples} outside [0, {len(self.sampler)}] for this mix"
            )
        sampler = self.sampler
        if parsed.steering is not None:
            saved = apply_steering(sampler.unsteered(), parsed.steering)
            sampler = keep_future_steering(saved, sampler, parsed.samples, parsed.step)
        if parsed.fingerprint is not None:
            sampler.check_fingerprint(parsed.fingerprint, parsed.samples, f"step {parsed.step}")
        if parsed.policy is not None:
            if self.policy is None:
                raise MixerError(
                    "policy: the checkpoint has a mixing policy's state; attach the same "
                    "policy (set_policy) before load_state_dict"
                )
            self.policy.load_state_dict(parsed.policy)
        self.sampler = sampler
        self.origin_step, self.origin_samples = parsed.step, parsed.samples
        self.step = parsed.step
        self.segments = parsed.segments
        if self.segments is not None and self.segments[-1][2] != self.global_batch_size:
            # a new stretch at this loader's G (replacing one that had no step yet)
            kept = tuple(x for x in self.segments if x[0] < parsed.step)
            self.segments = (*kept, (parsed.step, parsed.samples, self.global_batch_size))
        self._changes += 1
