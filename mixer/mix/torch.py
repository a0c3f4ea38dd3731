"""PyTorch datasets over a `MixSampler`; the only module that imports torch.

Two ways in:

- `MixedDataset` (map-style): item i is this rank's i-th block, ordered so that
  ``DataLoader(ds, batch_size=B, shuffle=False)`` yields the rank's slice of each global batch.
- `MixedIterableDataset` + `MixedDataLoader`: whole batches; DataLoader worker w of W produces
  global steps w, w + W, ..., which the DataLoader's in-order round robin interleaves back into
  step order. `MixedDataLoader` counts the batches it hands out in the main process, so its
  `state_dict()` after k batches resumes at batch k exactly, with any number of workers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from mixer.errors import MixerError
from mixer.mix.loader import BatchIterator
from mixer.mix.sampler import Blocks, MixSampler


def _tensors(tokens: np.ndarray, source: np.ndarray, positions: np.ndarray | None) -> dict:
    out = {
        "tokens": torch.from_numpy(tokens.astype(np.int64)),
        "source": torch.from_numpy(np.asarray(source, dtype=np.int64)),
    }
    if positions is not None:
        out["positions"] = torch.from_numpy(positions)
    return out


class MixedDataset(Dataset):
    """Map-style view of one rank's blocks: {"tokens", "source"[, "positions"]} per item."""

    def __init__(
        self,
        sampler: MixSampler,
        batch_size: int = 1,
        rank: int = 0,
        world_size: int = 1,
        positions: bool = False,
    ):
        if batch_size < 1 or not 0 <= rank < world_size:
            raise MixerError(
                f"batch_size {batch_size}, rank {rank}, world_size {world_size}: need "
                "batch_size >= 1 and 0 <= rank < world_size"
            )
        self.sampler = sampler
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.positions = positions

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
        blocks: Blocks = self.sampler.read_many(self._global_indices(items), self.positions)
        batch = _tensors(blocks.tokens, blocks.sources, blocks.positions)
        return [{key: value[n] for key, value in batch.items()} for n in range(len(items))]


class MixedIterableDataset(IterableDataset):
    """One rank's batches from a resume point: {"tokens", "source"[, "positions"], "step"}.

    Use with `MixedDataLoader` (or ``DataLoader(ds, batch_size=None)`` when you track
    `batch["step"]` yourself); workers split the steps round robin and never share a seed.
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
        self.batches = BatchIterator(sampler, batch_size, rank, world_size, start_step, positions)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        if worker is None:
            batches = iter(self.batches)  # tracks the resume step itself
        else:
            steps = itertools.islice(self.batches.steps_left(), worker.id, None, worker.num_workers)
            batches = self.batches.iter_steps(steps)
        for batch in batches:
            yield {
                **_tensors(batch["tokens"], batch["source"], batch.get("positions")),
                "step": batch["step"],
            }

    @property
    def sampler(self) -> MixSampler:
        """The current (possibly amended) sampler."""
        return self.batches.sampler

    def set_weights(self, weights: dict[str, float], at_step: int) -> None:
        """`BatchIterator.set_weights`: before iterating, or through `MixedDataLoader`."""
        self.batches.set_weights(weights, at_step)

    def skip_steps(self, start_step: int, stop_step: int) -> None:
        self.batches.skip_steps(start_step, stop_step)

    def set_policy(self, policy: Any) -> None:
        self.batches.set_policy(policy)

    def report_loss(self, step: int, loss_sums: Any, counts: Any) -> dict[str, float] | None:
        return self.batches.report_loss(step, loss_sums, counts)

    def state_dict(self) -> dict[str, Any]:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches.load_state_dict(state)


class MixedDataLoader(DataLoader):
    """A DataLoader over a `MixedIterableDataset` whose state_dict() resumes exactly.

    Workers run on copies of the dataset, so only the main process knows which batches the
    trainer received; this loader records each one as it hands it out.
    """

    def __init__(self, dataset: MixedIterableDataset, num_workers: int = 0, **kwargs: Any):
        if kwargs.get("persistent_workers"):
            raise MixerError(
                "persistent_workers: True would keep workers on a stale resume step; leave it off"
            )
        super().__init__(dataset, batch_size=None, num_workers=num_workers, **kwargs)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        batches = self.dataset.batches
        while True:
            changes = batches._changes
            for batch in super().__iter__():
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
        self.dataset.set_weights(weights, at_step)

    def skip_steps(self, start_step: int, stop_step: int) -> None:
        self.dataset.skip_steps(start_step, stop_step)

    def set_policy(self, policy: Any) -> None:
        self.dataset.set_policy(policy)

    def report_loss(self, step: int, loss_sums: Any, counts: Any) -> dict[str, float] | None:
        return self.dataset.report_loss(step, loss_sums, counts)

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)
