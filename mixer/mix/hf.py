"""Hugging Face `Trainer` (and accelerate) fed the mix in order, resuming exactly.

`MixedTrainDataset` is the whole global stream, map-style: item i is global block i as
``{"input_ids", "labels"}``, both the block's seq_len + 1 tokens. HF causal-LM models shift
labels themselves (logits[:, :-1] against labels[:, 1:]), so the targets are exactly
y = block[1:] for inputs x = block[:-1]; the last position's logit is computed and ignored.
With `loss_mask=True` a label that starts a new document is -100 (never predicted across a
document boundary).

`MixedTrainer` is `Trainer` with a sequential sampler (the default random sampler would destroy
the mix order). accelerate then shards each global batch of `per_device_train_batch_size x
processes` blocks across processes by contiguous slices, which is the mixer's own layout, and
on resume from a checkpoint the Trainer skips the batches already trained on with accelerate's
`skip_first_batches` (index-only, no data read): exact.

Refused, in one line each: a dataset that shards itself (rank/world_size set) under more than
one process (accelerate shards it again: double sharding silently drops data),
``ignore_data_skip=True`` (resume would replay from block 0), ``dataloader_in_order=False``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, SequentialSampler
from transformers import Trainer

from mixer.errors import MixerError
from mixer.mix.sampler import MixSampler


class MixedTrainDataset(Dataset):
    """Global block i as {"input_ids", "labels"} (int64, seq_len + 1 tokens each), in order."""

    def __init__(self, sampler: MixSampler, loss_mask: bool = False):
        self.sampler = sampler
        self.loss_mask = loss_mask

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([item])[0]

    def __getitems__(self, items: list[int]) -> list[dict[str, torch.Tensor]]:
        index = np.asarray(items, dtype=np.int64)
        blocks = self.sampler.read_many(index, self.loss_mask)
        tokens = torch.from_numpy(blocks.tokens.astype(np.int64))
        labels = tokens.clone()
        if self.loss_mask:
            labels[torch.from_numpy(blocks.positions == 0)] = -100
            labels[:, 0] = tokens[:, 0]  # never a target: the model's shift drops it
        return [{"input_ids": tokens[n], "labels": labels[n]} for n in range(len(items))]


class MixedTrainer(Trainer):
    """`Trainer` that consumes its train dataset in order and refuses what breaks exact resume."""

    def _get_train_sampler(self, train_dataset: Any = None) -> SequentialSampler:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return SequentialSampler(dataset)

    def get_train_dataloader(self) -> Any:
        dataset = self.train_dataset
        shards_itself = getattr(dataset, "world_size", 1) > 1 or (
            getattr(getattr(dataset, "batches", None), "world_size", 1) > 1
        )
        if shards_itself and self.args.world_size > 1:
            raise MixerError(
                "MixedTrainer: the dataset already shards by rank/world_size and accelerate "
                "shards again across processes (double sharding drops data); use "
                "MixedTrainDataset(sampler), which accelerate shards once"
            )
        if self.args.ignore_data_skip:
            raise MixerError(
                "MixedTrainer: ignore_data_skip=True would replay the mix from block 0 on "
                "resume; leave it False"
            )
        if not getattr(self.args, "dataloader_in_order", True):
            raise MixerError(
                "MixedTrainer: dataloader_in_order=False reorders the mix; leave it on"
            )
        return super().get_train_dataloader()
