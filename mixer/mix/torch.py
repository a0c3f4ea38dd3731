"""PyTorch datasets over a `MixSampler`; the only module that imports torch.

Two ways in:

- `MixedDataset` (map-style): item i is this rank's i-th block, ordered so that
  ``DataLoader(ds, batch_size=B, shuffle=False)`` yields the rank's slice of each global batch.
- `MixedIterableDataset` + `MixedDataLoader`: whole batches; DataLoader worker w of W produces
  global steps w, w + W, ..., which the DataLoader's in-order round robin interleaves back into
  step order. `MixedDataLoader` counts the batches it hands out in the main process, so its
  `state_dict()` after k batches resumes at batch k exactly, with any number of workers.
- torchdata's `StatefulDataLoader` over either dataset: over `MixedDataset` it tracks the
  sampler itself; over `MixedIterableDataset` it keeps one state per worker, and each worker's
  copy records its own position (`LoaderState.worker`), so resuming with the same num_workers
  is exact. `stream_state(loader.state_dict())` is the whole stream's state (for another
  world size, or a `MixedDataLoader`).

Steering (`set_weights`, and `skip_steps` on the iterable dataset): `MixedDataLoader` applies
it live with any number of workers (it restarts them from the next step). On a dataset, it is
exact while no worker holds a copy of it: with num_workers=0, or before a loader with workers
starts them (before iterating it or asking its state_dict); the change is then in every worker's
copy and in the state torchdata collects from them. Once a worker may hold a copy
(`mixer.mix.copies`) it is refused: the workers would keep the old weights.

Refused, because they cannot be exact: ``in_order=False`` (batches out of step order), and a
plain `DataLoader` over `MixedIterableDataset` with workers (its state is never seen by the
main process).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from mixer.errors import MixerError
from mixer.mix.copies import CopyGuard
from mixer.mix.extras import Extras
from mixer.mix.loader import BatchIterator, LoaderState
from mixer.mix.sampler import MixSampler, check_geometry


def _dtype(key: str, value: np.ndarray) -> np.dtype:
    """A batch array's tensor dtype: tokens int64 unless int32 was asked for, ids int64."""
    if key in ("tokens", "inputs") and value.dtype != np.int32:
        return np.dtype(np.int64)
    if key in ("source", "index"):
        return np.dtype(np.int64)
    return value.dtype


def _tensors(batch: dict[str, Any]) -> dict[str, Any]:
    """numpy arrays -> tensors of `_dtype`; other values as they are."""
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, np.ndarray):
            value = np.ascontiguousarray(value.astype(_dtype(key, value), copy=False))
            out[key] = torch.from_numpy(value)
        else:
            out[key] = value
    return out


def check_not_copied(guard: CopyGuard, what: str) -> None:
    """Refuse a change on a dataset that DataLoader workers may hold copies of."""
    if guard.copied:
        raise MixerError(
            f"{what}: DataLoader workers may hold copies of this dataset (num_workers > 0) and "
            "would keep the old weights; call it before the loader starts its workers (before "
            "iterating it or asking its state_dict), use num_workers=0, or use MixedDataLoader, "
            "which restarts its workers"
        )


_ALIGN = 64  # bytes: every array of a packed batch starts aligned for any dtype
# Up to this size a packed batch travels as bytes through the worker queue's pipe, above it as
# one shared-memory segment: a segment costs a file, a descriptor handed over a socket and a
# map per batch, more than copying a small batch twice (BENCHMARKS.md, "Trainer loaders").
_INLINE_BYTES = 1 << 20
_TORCH_DTYPES: dict[np.dtype, torch.dtype] = {}


class _Packed:
    """One batch as one byte buffer, for the trip from a DataLoader worker to the main process.

    Every tensor a worker sends costs a shared-memory segment and a descriptor handed over a
    socket; a batch dict of several tensors costs that several times per batch, which at
    8 x 2048 tokens takes longer than making the batch. Packed, a batch is one buffer (bytes
    in the pipe up to `_INLINE_BYTES`, else one segment); `unpack` gives back
    `_tensors(batch)` as views into it (no copy), keys in the same order and every value
    equal. `pin_memory` (the DataLoader's pin thread) pins the one buffer.
    """

    def __init__(self, buffer: np.ndarray | torch.Tensor, layout: tuple[tuple[Any, ...], ...]):
        self.buffer = buffer
        # (key, torch dtype, shape, strides, offset in elements) per array; (key, value) else
        self.layout = layout

    @classmethod
    def pack(cls, batch: dict[str, Any]) -> _Packed:
        arrays, layout, size = [], [], 0
        for key, value in batch.items():
            if not isinstance(value, np.ndarray):
                layout.append((key, value))
                continue
            dtype = _dtype(key, value)
            strides, n = [], 1
            for dim in reversed(value.shape):
                strides.insert(0, n)
                n *= dim
            if dtype not in _TORCH_DTYPES:
                _TORCH_DTYPES[dtype] = torch.from_numpy(np.empty(0, dtype)).dtype
            entry = (key, _TORCH_DTYPES[dtype], value.shape, tuple(strides), size // dtype.itemsize)
            layout.append(entry)
            arrays.append((size, dtype, value))
            size += -(-value.size * dtype.itemsize // _ALIGN) * _ALIGN
        buffer = np.empty(size, dtype=np.uint8)
        for offset, dtype, value in arrays:
            view = buffer[offset : offset + value.size * dtype.itemsize].view(dtype)
            np.copyto(view.reshape(value.shape), value)
        if size > _INLINE_BYTES:
            return cls(torch.from_numpy(buffer), tuple(layout))  # sent as shared memory
        return cls(buffer, tuple(layout))  # a numpy array: pickled into the queue's pipe

    @property
    def tensor(self) -> torch.Tensor:
        buffer = self.buffer
        return torch.from_numpy(buffer) if isinstance(buffer, np.ndarray) else buffer

    def unpack(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        tensor = self.tensor
        typed: dict[torch.dtype, torch.Tensor] = {}  # the buffer viewed as each dtype
        for entry in self.layout:
            if len(entry) == 2:
                out[entry[0]] = entry[1]
                continue
            key, dtype, shape, strides, offset = entry
            if dtype not in typed:
                typed[dtype] = tensor.view(dtype)
            out[key] = typed[dtype].as_strided(shape, strides, offset)
        return out

    def pin_memory(self, device: Any = None) -> _Packed:
        return _Packed(self.tensor.pin_memory(), self.layout)


def stream_state(state: dict[str, Any]) -> dict[str, Any]:
    """The whole stream's `LoaderState` dict inside a torchdata `StatefulDataLoader` state over a
    `MixedIterableDataset`: the newest of its workers' states (the batches come back in step
    order, so the worker that yielded last knows the next step). Load it into a loader of any
    world size or num_workers."""
    found: list[LoaderState] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "global_batch_size" in node and "step" in node:
                found.append(LoaderState.from_dict(node))
                return
            for value in node.values():
                walk(value)

    walk(state)
    if not found:
        raise MixerError("stream_state: no mixer loader state inside this state dict")
    newest = max(found, key=lambda s: s.step)
    return LoaderState(**{**newest.__dict__, "worker": None}).to_dict()


class MixedDataset(Dataset):
    """Map-style view of one rank's blocks: {"tokens", "source", "index"[, "positions"]} per
    item. Use ``DataLoader(ds, batch_size=B, shuffle=False)`` (or torchdata's
    `StatefulDataLoader`, which resumes it exactly); with `documents`, `loss_mask` or `bos_id`,
    pass ``collate_fn=ds.collate`` to get ``cu_seqlens``/``max_seqlen``/``loss_mask``/``inputs``
    per batch.

    `set_weights(weights, at_step)` changes the blocks that items of global steps >= at_step
    map to; at_step must not be before the next step this copy has not fetched yet, and no
    DataLoader worker may hold a copy (module docstring). `state_dict()` (a `LoaderState`
    dict: the next unfetched step, the steering, a fingerprint) is what torchdata saves with
    each worker; loading it restores the steering.
    """

    def __init__(
        self,
        sampler: MixSampler,
        batch_size: int = 1,
        rank: int = 0,
        world_size: int = 1,
        positions: bool = False,
        documents: bool = False,
        loss_mask: bool = False,
        int32: bool = False,
        bos_id: int | None = None,
    ):
        check_geometry(sampler.spec, batch_size, rank, world_size)
        self.steps = BatchIterator(sampler, batch_size, rank, world_size)  # steering and state
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.positions = positions
        self.extras = Extras(sampler, positions, documents, loss_mask, int32, bos_id)
        self._rows = Extras(sampler, self.extras.need_starts, False, False, int32)
        self._copies = CopyGuard()

    @property
    def sampler(self) -> MixSampler:
        """The current (possibly amended) sampler."""
        return self.steps.sampler

    def __len__(self) -> int:
        return self.sampler.num_batches(self.batch_size * self.world_size) * self.batch_size

    def _global_indices(self, items: list[int]) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        if items.size and (items.min() < 0 or items.max() >= len(self)):
            raise IndexError(f"items outside [0, {len(self)})")
        step, row = np.divmod(items, self.batch_size)
        return step * self.batch_size * self.world_size + self.rank * self.batch_size + row

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([item])[0]

    def __getitems__(self, items: list[int]) -> list[dict[str, torch.Tensor]]:
        """Batched fetch (DataLoader calls this when present): one vectorized locate."""
        index = self._global_indices(items)
        if len(items):  # fetched: steps up to here can no longer change
            self.steps.step = max(self.steps.step, int(max(items)) // self.batch_size + 1)
        blocks = self.sampler.read_many(index, starts=self.extras.need_starts)
        batch = _tensors(
            {**self._rows.batch(blocks.tokens, blocks.sources, blocks.starts), "index": index}
        )
        return [{key: value[n] for key, value in batch.items()} for n in range(len(items))]

    def collate(self, items: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
        """Stack items into a batch and add the extras asked for (`mixer.mix.extras`)."""
        stacked = {key: torch.stack([item[key] for item in items]) for key in items[0]}
        positions = stacked.pop("positions", None)
        starts = None if positions is None else positions.numpy() == 0
        extra = self.extras.batch(stacked["tokens"].numpy(), stacked["source"].numpy(), starts)
        return {**stacked, **_tensors(extra)}

    def set_weights(self, weights: dict[str, float], at_step: int) -> None:
        """Items of global steps >= `at_step` map to blocks mixed by `weights`
        (`BatchIterator.set_weights`); every rank's dataset must get the same call."""
        check_not_copied(self._copies, "set_weights")
        self.steps.set_weights(weights, at_step)

    def set_policy(self, policy: Any) -> None:
        raise MixerError(
            "MixedDataset: an online policy needs a loader that hands out whole steps; use "
            "MixedIterableDataset with MixedDataLoader (or BatchIterator)"
        )

    def state_dict(self) -> dict[str, Any]:
        return self.steps.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps.load_state_dict(state)


class MixedIterableDataset(IterableDataset):
    """One rank's batches from a resume point: `BatchIterator`'s dict as tensors.

    Use with `MixedDataLoader`, torchdata's ``StatefulDataLoader(ds, batch_size=None)``, or a
    plain ``DataLoader(ds, batch_size=None)`` with num_workers=0; workers split the steps round
    robin and never share a seed.
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
        self.batches = BatchIterator(
            sampler,
            batch_size,
            rank,
            world_size,
            start_step,
            positions,
            documents,
            loss_mask,
            int32,
            bos_id,
        )
        self.worker: tuple[int, int] | None = None  # set when this copy's state is a worker's
        self._copies = CopyGuard()
        self._tracked = False  # MixedDataLoader tracks the state in the main process
        self._state_asked = False  # a StatefulDataLoader asked this worker copy for its state

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        if info is None:
            for batch in self.batches:  # tracks the resume step itself
                yield _tensors(batch)
            return
        if not (self._tracked or self._state_asked):
            raise MixerError(
                "MixedIterableDataset: a plain DataLoader with num_workers > 0 never sees where "
                "its workers are, so state_dict() would stay at the start; use MixedDataLoader "
                "or torchdata's StatefulDataLoader (or num_workers=0)"
            )
        me = (info.id, info.num_workers)
        if self.worker is None:
            offset = info.id  # the stream's state: worker w takes steps w, w + W, ...
        elif self.worker == me:
            offset = info.num_workers - 1  # this worker's own state: it last made step - 1
        else:
            raise MixerError(
                f"MixedIterableDataset: a state saved by worker {self.worker[0]} of "
                f"{self.worker[1]} loaded into worker {me[0]} of {me[1]}; resume with "
                f"num_workers={self.worker[1]}, or load stream_state(state) instead"
            )
        steps = itertools.islice(self.batches.steps_left(), offset, None, info.num_workers)
        for batch in self.batches.iter_steps(steps):
            self.batches.step, self.worker = batch["step"] + 1, me  # this copy is the worker's
            yield _Packed.pack(batch) if self._tracked else _tensors(batch)

    @property
    def sampler(self) -> MixSampler:
        """The current (possibly amended) sampler."""
        return self.batches.sampler

    def set_weights(self, weights: dict[str, float], at_step: int) -> None:
        """`BatchIterator.set_weights`, while no DataLoader worker holds a copy (module
        docstring); `MixedDataLoader.set_weights` works at any time."""
        check_not_copied(self._copies, "set_weights")
        self.batches.set_weights(weights, at_step)

    def skip_steps(self, start_step: int, stop_step: int) -> None:
        check_not_copied(self._copies, "skip_steps")
        self.batches.skip_steps(start_step, stop_step)

    def set_policy(self, policy: Any) -> None:
        self.batches.set_policy(policy)

    def report_loss(self, step: int, loss_sums: Any, counts: Any) -> dict[str, float] | None:
        check_not_copied(self._copies, "report_loss")
        return self.batches.report_loss(step, loss_sums, counts)

    def state_dict(self) -> dict[str, Any]:
        """`LoaderState` dict; in a DataLoader worker, that worker's own position."""
        if get_worker_info() is not None:
            self._state_asked = True
        state = self.batches.state()
        if self.worker is not None:
            state = LoaderState(**{**state.__dict__, "worker": self.worker})
        return state.to_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        worker = state.get("worker")
        self.batches.load_state_dict({k: v for k, v in state.items() if k != "worker"})
        self.worker = None if worker is None else (int(worker[0]), int(worker[1]))


class MixedDataLoader(DataLoader):
    """A DataLoader over a `MixedIterableDataset` whose state_dict() resumes exactly.

    Workers run on copies of the dataset, so only the main process knows which batches the
    trainer received; this loader records each one as it hands it out.

    ``len(loader)`` is the run's batches counted from step 0, the same before and after a
    resume (Lightning counts an epoch's batches so, and so do learning-rate schedules); the
    batches still to come are ``len(loader.dataset)``.
    """

    def __init__(self, dataset: MixedIterableDataset, num_workers: int = 0, **kwargs: Any):
        if kwargs.get("persistent_workers"):
            raise MixerError(
                "persistent_workers: True would keep workers on a stale resume step; leave it off"
            )
        if kwargs.get("in_order", True) is False:
            raise MixerError(
                "in_order: False hands out batches out of step order, so no state can resume "
                "exactly; leave it True (the default)"
            )
        if kwargs.get("batch_size") is not None:
            raise MixerError("batch_size: set it on the MixedIterableDataset, not the loader")
        kwargs.pop("batch_size", None)
        super().__init__(dataset, batch_size=None, num_workers=num_workers, **kwargs)

    def __len__(self) -> int:
        batches = self.dataset.batches
        done = batches.step
        if batches.sampler.skip_blocks:  # skipped steps are never handed out
            done -= sum(1 for s in range(batches.step) if batches._skipped(s))
        return done + len(batches)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        batches = self.dataset.batches
        while True:
            changes = batches._changes
            self.dataset._tracked = True  # workers (started by super().__iter__) may iterate
            try:
                it = super().__iter__()
            finally:
                self.dataset._tracked = False
            for item in it:
                batch = item.unpack() if isinstance(item, _Packed) else item
                batches.step = batch["step"] + 1
                yield batch
                if batches._changes != changes:
                    # Steered: workers hold copies of the old sampler and batches prefetched
                    # with it. Restart them all from the next step, so every worker sees the
                    # change at the same step and nothing prefetched is handed out.
                    break
            else:
                return

    def set_weights(self, weights: dict[str, float], at_step: int) -> None:
        """From global step `at_step` (>= the next step not yet handed out), mix by `weights`;
        batches the workers prefetched beyond the handed-out ones are recomputed. The amended
        sampler is `loader.dataset.sampler` (`loader.sampler` is torch's own)."""
        self.dataset.batches.set_weights(weights, at_step)  # __iter__ restarts the workers

    def skip_steps(self, start_step: int, stop_step: int) -> None:
        self.dataset.batches.skip_steps(start_step, stop_step)

    def set_policy(self, policy: Any) -> None:
        self.dataset.set_policy(policy)

    def report_loss(self, step: int, loss_sums: Any, counts: Any) -> dict[str, float] | None:
        return self.dataset.batches.report_loss(step, loss_sums, counts)

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)
