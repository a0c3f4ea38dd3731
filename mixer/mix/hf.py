"""Hugging Face `Trainer` (and accelerate) fed the mix in order, resuming exactly.

`MixedTrainDataset` is the whole global stream, map-style: item i is global block i as
``{"input_ids", "labels"}``, both the block's seq_len + 1 tokens. HF causal-LM models shift
labels themselves (logits[:, :-1] against labels[:, 1:]), so the targets are exactly
y = block[1:] for inputs x = block[:-1]; the last position's logit is computed and ignored.
With `loss_mask=True` a label that starts a new document is -100 (never predicted across a
document boundary). With `bos_id` (`mixer.mix.extras`: for tokenizers whose documents are
``BOS text EOS``), input_ids has BOS in place of the EOS before each document that starts
inside the block, and labels keep the EOS: the model reads ``BOS t1 .. tn`` against
``t1 .. tn EOS`` (loss_mask is then refused: no target crosses a document).

`MixedTrainer` is `Trainer` with a sequential sampler (the default random sampler would destroy
the mix order). accelerate then shards each global batch of `per_device_train_batch_size x
processes` blocks across processes by contiguous slices, which is the mixer's own layout, and
on resume from a checkpoint the Trainer skips the batches already trained on with accelerate's
`skip_first_batches` (index-only, no data read): exact.

Per-source loss: every item also carries ``source`` (its id in `sampler.source_names`), which
`MixedTrainer` keeps past the Trainer's unused-column filter and takes out before the model
sees the batch. With ``MixedTrainer(..., per_source_loss=True)`` it sums each row's token losses
(cross-entropy of ``logits[:, :-1]`` against ``labels[:, 1:]``, the targets the model's own loss
uses, -100 left out) per source, and each training log adds ``loss/<source name>``: the mean
token loss of that source's rows since the previous log, summed over all processes (so every
process logs the same). It needs the model to return ``logits``; a source with no rows in the
window is left out of that log.

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
from mixer.mix.extras import check_bos, with_bos
from mixer.mix.sampler import MixSampler, check_global_batch


class MixedTrainDataset(Dataset):
    """Global block i as {"input_ids", "labels"} (int64, seq_len + 1 tokens each) and "source"
    (int64 id into `sampler.source_names`), in order."""

    def __init__(self, sampler: MixSampler, loss_mask: bool = False, bos_id: int | None = None):
        self.sampler = sampler
        self.loss_mask = loss_mask
        self.bos_id = bos_id
        self.eos_id = check_bos(sampler, bos_id, loss_mask)

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([item])[0]

    def __getitems__(self, items: list[int]) -> list[dict[str, torch.Tensor]]:
        index = np.asarray(items, dtype=np.int64)
        blocks = self.sampler.read_many(index, self.loss_mask or self.bos_id is not None)
        tokens = torch.from_numpy(blocks.tokens.astype(np.int64))
        sources = torch.from_numpy(blocks.sources.astype(np.int64))
        labels = tokens.clone()
        if self.bos_id is not None:
            inputs, _ = with_bos(blocks.tokens, blocks.positions, self.bos_id, self.eos_id)
            tokens = torch.from_numpy(inputs.astype(np.int64))
        if self.loss_mask:
            labels[torch.from_numpy(blocks.positions == 0)] = -100
            labels[:, 0] = tokens[:, 0]  # never a target: the model's shift drops it
        return [
            {"input_ids": tokens[n], "labels": labels[n], "source": sources[n]}
            for n in range(len(items))
        ]


class MixedTrainer(Trainer):
    """`Trainer` that consumes its train dataset in order and refuses what breaks exact resume;
    `per_source_loss=True` logs ``loss/<source name>`` (module docstring)."""

    def __init__(self, *args: Any, per_source_loss: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.per_source_loss = per_source_loss
        self._source_loss: torch.Tensor | None = None  # (2, sources): token-loss sums, counts

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if "source" not in self._signature_columns:
            self._signature_columns.append("source")  # kept by the collator, popped below

    def _get_train_sampler(self, train_dataset: Any = None) -> SequentialSampler:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return SequentialSampler(dataset)

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        source = inputs.pop("source", None)
        if not (self.per_source_loss and model.training and source is not None):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        logits = outputs.get("logits") if isinstance(outputs, dict) else None
        if logits is None:
            raise MixerError(
                "MixedTrainer: per_source_loss=True needs the model to return logits; "
                "turn it off for a model with a fused loss"
            )
        self._add_source_loss(logits.detach(), inputs["labels"], source)
        return (loss, outputs) if return_outputs else loss

    def _add_source_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, source: torch.Tensor
    ) -> None:
        targets = labels[:, 1:]
        per_token = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100, reduction="none"
        )
        if self._source_loss is None:
            names = self.train_dataset.sampler.source_names
            self._source_loss = torch.zeros(
                2, len(names), dtype=torch.float64, device=logits.device
            )
        source = source.to(logits.device)
        self._source_loss[0].index_add_(0, source, per_token.sum(1).double())
        self._source_loss[1].index_add_(0, source, (targets != -100).sum(1).double())

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.per_source_loss and "loss" in logs and self._source_loss is not None:
            # every process logs training at the same steps, so this reduce is collective-safe
            sums, counts = self.accelerator.reduce(self._source_loss.clone(), "sum").tolist()
            names = self.train_dataset.sampler.source_names
            for name, total, n in zip(names, sums, counts, strict=True):
                if n:
                    logs[f"loss/{name}"] = total / n
            self._source_loss.zero_()
        super().log(logs, *args, **kwargs)

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
        sampler = getattr(dataset, "sampler", None)
        if isinstance(sampler, MixSampler):
            args = self.args
            per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
            check_global_batch(
                sampler.spec,
                per_step * args.world_size,
                f"MixedTrainer: per_device_train_batch_size {args.per_device_train_batch_size} x "
                f"{args.world_size} processes x gradient_accumulation_steps "
                f"{args.gradient_accumulation_steps}",
            )
        if not getattr(self.args, "dataloader_in_order", True):
            raise MixerError(
                "MixedTrainer: dataloader_in_order=False reorders the mix; leave it on"
            )
        return super().get_train_dataloader()
