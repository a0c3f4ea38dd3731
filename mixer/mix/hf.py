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

Steering: `MixedTrainer.set_weights(weights, at_step)` (or `MixedTrainDataset.set_weights`)
mixes by `weights` from global step `at_step`: blocks [at_step x G, ...) for G =
per_device_train_batch_size x processes x gradient_accumulation_steps. at_step must not be
before the next step whose blocks this process has not fetched (the Trainer fetches a step's
micro-batches up front, and accelerate one batch more), and call it on every process alike
(e.g. from a `TrainerCallback`). With ``dataloader_num_workers > 0`` the workers hold copies of
the dataset, so it works only before `train()` starts them and is refused after
(`mixer.mix.copies`). `MixedTrainer.set_policy(policy)` feeds an online policy
(`mixer.mix.policy`) every optimizer step with that step's per-source token-loss sums and token
counts, summed over processes, and applies its proposals the same way (so it needs
dataloader_num_workers=0). Every checkpoint holds ``mixer_state.json`` (`STATE_FILE`): a
`LoaderState` dict at the checkpoint's step with the steering, a fingerprint of the plan
before it and the policy's state; `train(resume_from_checkpoint=...)` loads it before any data
is read, so a trainer built from the original spec continues byte-identically (and refuses a
spec edited before the checkpoint). `mixer explain --state checkpoint-N/mixer_state.json`
reads it too.

Refused, in one line each: a dataset that shards itself (rank/world_size set) under more than
one process (accelerate shards it again: double sharding silently drops data),
``ignore_data_skip=True`` (resume would replay from block 0), ``dataloader_in_order=False``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, SequentialSampler
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from mixer.errors import MixerError
from mixer.mix.copies import CopyGuard
from mixer.mix.extras import check_bos, with_bos
from mixer.mix.loader import BatchIterator, LoaderState
from mixer.mix.sampler import MixSampler, check_global_batch
from mixer.mix.torch import check_not_copied
from mixer.store.format import write_json_atomic

STATE_FILE = "mixer_state.json"  # in each checkpoint folder, next to trainer_state.json


class MixedTrainDataset(Dataset):
    """Global block i as {"input_ids", "labels"} (int64, seq_len + 1 tokens each) and "source"
    (int64 id into `sampler.source_names`), in order.

    `global_batch_size` (blocks per optimizer step; default the spec's, and `MixedTrainer`
    sets its own) is needed only to steer by step (module docstring)."""

    def __init__(
        self,
        sampler: MixSampler,
        loss_mask: bool = False,
        bos_id: int | None = None,
        global_batch_size: int | None = None,
    ):
        self._sampler = sampler
        self.loss_mask = loss_mask
        self.bos_id = bos_id
        self.eos_id = check_bos(sampler, bos_id, loss_mask)
        self.global_batch_size = global_batch_size or sampler.spec.global_batch_size
        if global_batch_size is not None:
            check_global_batch(sampler.spec, global_batch_size, "global_batch_size")
        self._steps: BatchIterator | None = None  # steering and state, once G is known
        self._fetched = 0  # one past the highest block this copy has read
        self._copies = CopyGuard()

    @property
    def sampler(self) -> MixSampler:
        """The current (possibly amended) sampler."""
        return self._sampler if self._steps is None else self._steps.sampler

    def use_global_batch_size(self, global_batch_size: int) -> None:
        """Steer by steps of `global_batch_size` blocks (`MixedTrainer` passes its own)."""
        if self.global_batch_size not in (None, global_batch_size):
            raise MixerError(
                f"MixedTrainDataset: global_batch_size {self.global_batch_size}, but the trainer "
                f"steps by {global_batch_size} blocks; make them equal"
            )
        self.global_batch_size = global_batch_size

    def steps(self) -> BatchIterator:
        """The global steps of G blocks, whose next step is the first this copy has not read."""
        if self._steps is None:
            if self.global_batch_size is None:
                raise MixerError(
                    "MixedTrainDataset: steering counts steps, so it needs global_batch_size "
                    "(pass it, give the spec one, or train with MixedTrainer)"
                )
            self._steps = BatchIterator(self._sampler, self.global_batch_size)
        g = self._steps.global_batch_size
        self._steps.step = max(self._steps.step, -(-self._fetched // g))
        return self._steps

    def set_weights(self, weights: dict[str, float], at_step: int) -> None:
        """Mix by `weights` from global step `at_step` (`BatchIterator.set_weights`)."""
        check_not_copied(self._copies, "set_weights")
        self.steps().set_weights(weights, at_step)

    def set_policy(self, policy: Any) -> None:
        self.steps().set_policy(policy)

    def report_loss(self, step: int, loss_sums: Any, counts: Any) -> dict[str, float] | None:
        """`BatchIterator.report_loss`: applies a due proposal from the next unread step."""
        check_not_copied(self._copies, "report_loss")
        return self.steps().report_loss(step, loss_sums, counts)

    def state_dict(self, step: int) -> dict[str, Any]:
        """The `LoaderState` dict of a run that has trained on global steps [0, step)."""
        steps = self.steps()
        samples = step * steps.global_batch_size
        state = steps.state()
        return LoaderState(
            step,
            samples,
            steps.global_batch_size,
            steering=state.steering,
            fingerprint=self.sampler.fingerprint(samples),
            policy=state.policy,
        ).to_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`'s steering and policy state (`BatchIterator.load_state_dict`)."""
        steps = self.steps()
        steps.load_state_dict(state)
        self._fetched = max(self._fetched, steps.sample_of(steps.step))

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([item])[0]

    def __getitems__(self, items: list[int]) -> list[dict[str, torch.Tensor]]:
        index = np.asarray(items, dtype=np.int64)
        if index.size:  # read: these steps can no longer change
            self._fetched = max(self._fetched, int(index.max()) + 1)
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


class _FeedPolicy(TrainerCallback):
    """Hands each optimizer step's per-source losses to `MixedTrainer`'s policy."""

    def __init__(self, trainer: MixedTrainer):
        self.trainer = trainer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._feed_policy(state.global_step - 1)


class MixedTrainer(Trainer):
    """`Trainer` that consumes its train dataset in order and refuses what breaks exact resume;
    `per_source_loss=True` logs ``loss/<source name>``; `set_weights`, `set_policy` steer the
    mix and every checkpoint saves the steering (module docstring)."""

    def __init__(self, *args: Any, per_source_loss: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.per_source_loss = per_source_loss
        self.policy: Any = None
        self._source_loss: torch.Tensor | None = None  # (2, sources): token-loss sums, counts
        self._step_loss: torch.Tensor | None = None  # the same for the policy, per step

    # -- steering
    def _steered(self, what: str) -> MixedTrainDataset:
        dataset = self.train_dataset
        if not isinstance(dataset, MixedTrainDataset):
            raise MixerError(f"MixedTrainer.{what}: needs train_dataset=MixedTrainDataset(...)")
        args = self.args
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        dataset.use_global_batch_size(per_step * args.world_size)
        return dataset

    def set_weights(self, weights: dict[str, float], at_step: int) -> None:
        """Mix by `weights` from global step `at_step` on every process (module docstring)."""
        self._steered("set_weights").set_weights(weights, at_step)

    def set_policy(self, policy: Any) -> None:
        """Feed `policy` every optimizer step and apply its proposals (module docstring);
        its state is saved in each checkpoint. Attach it before `train()`."""
        dataset = self._steered("set_policy")
        if self.args.dataloader_num_workers > 0:
            raise MixerError(
                "MixedTrainer.set_policy: the policy changes weights during training, which "
                "DataLoader workers (dataloader_num_workers > 0) would not see; use "
                "dataloader_num_workers=0"
            )
        dataset.set_policy(policy)
        if self.policy is None:  # one feed, whichever policy is attached
            self.add_callback(_FeedPolicy(self))
        self.policy = policy

    def _feed_policy(self, step: int) -> None:
        if self._step_loss is None:  # no training batch reached compute_loss
            return
        sums, counts = self.accelerator.reduce(self._step_loss.clone(), "sum").tolist()
        self._step_loss.zero_()
        # set_policy refused dataloader workers, so no copy of the dataset exists: a fork
        # elsewhere in the process (a pool in a callback) must not trip the copy guard
        self.train_dataset.steps().report_loss(step, sums, counts)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        """`Trainer.train`, restoring the checkpoint's `STATE_FILE` before any data is read."""
        if isinstance(self.train_dataset, MixedTrainDataset):
            checkpoint = resume_from_checkpoint
            if checkpoint is True:
                checkpoint = get_last_checkpoint(self.args.output_dir)
            if checkpoint:
                self._load_mixer_state(str(checkpoint))
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_mixer_state(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, STATE_FILE)
        if not os.path.exists(path):
            if self.policy is not None or self.train_dataset.sampler.amendments:
                raise MixerError(
                    f"MixedTrainer: {checkpoint} has no {STATE_FILE}, so its steering and "
                    "policy state are unknown; resume from a checkpoint MixedTrainer saved"
                )
            return  # a checkpoint of an unsteered run saved before mixer kept one
        with open(path) as f:
            state = json.load(f)
        dataset = self._steered("resume")
        g, saved = dataset.global_batch_size, int(state["global_batch_size"])
        if saved != g:
            raise MixerError(
                f"MixedTrainer: {checkpoint} was trained at {saved} blocks per step and this "
                f"trainer steps by {g}, so the Trainer would skip {state['step']} x {g} blocks, "
                f"not the {state['samples']} trained on; resume with the same "
                "per_device_train_batch_size x processes x gradient_accumulation_steps"
            )
        dataset.load_state_dict(state)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        dataset = self.train_dataset
        if not (isinstance(dataset, MixedTrainDataset) and self.args.should_save):
            return
        self._steered("checkpoint")
        folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        path = os.path.join(self._get_output_dir(trial=trial), folder, STATE_FILE)
        write_json_atomic(path, dataset.state_dict(self.state.global_step))

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
        wanted = self.per_source_loss or self.policy is not None
        if not (wanted and model.training and source is not None):
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
        k = len(self.train_dataset.sampler.source_names)
        source = source.to(logits.device)
        step = torch.zeros(2, k, dtype=torch.float64, device=logits.device)
        step[0].index_add_(0, source, per_token.sum(1).double())
        step[1].index_add_(0, source, (targets != -100).sum(1).double())
        if self.per_source_loss:
            self._source_loss = step if self._source_loss is None else self._source_loss + step
        if self.policy is not None:
            self._step_loss = step if self._step_loss is None else self._step_loss + step

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
