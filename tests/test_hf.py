"""HF Trainer fed the mix in order; resume from a Trainer checkpoint is exact."""

from __future__ import annotations

import numpy as np
import pytest
from test_sampler import make_store, spec_for

from mixer.errors import MixerError
from mixer.mix.sampler import MixSampler

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from mixer.mix.hf import MixedTrainDataset, MixedTrainer  # noqa: E402
from mixer.mix.torch import MixedDataset  # noqa: E402


@pytest.fixture(scope="module")
def sampler(tmp_path_factory) -> MixSampler:
    root = tmp_path_factory.mktemp("hf")
    stores = {"a": make_store(root / "a", 700, seed=1), "b": make_store(root / "b", 200, seed=2)}
    return MixSampler(spec_for(stores, {"a": 0.75, "b": 0.25}, seq_len=8, blocks=100))


class Recording(transformers.GPT2LMHeadModel):
    """A tiny GPT-2 that records the input_ids of every forward pass in training."""

    seen: list[list[list[int]]]

    def forward(self, input_ids=None, labels=None, **kwargs):
        if self.training:
            self.seen.append(input_ids.tolist())
        return super().forward(input_ids=input_ids, labels=labels, **kwargs)


def model() -> Recording:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=1000,
        n_positions=16,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    m = Recording(config)
    m.seen = []
    return m


def args(out, **kw) -> transformers.TrainingArguments:
    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        max_steps=6,
        save_steps=3,
        save_strategy="steps",
        report_to=[],
        use_cpu=True,
        logging_steps=100,
        dataloader_num_workers=0,
    )
    return transformers.TrainingArguments(**{**base, **kw})


def test_trainer_sees_the_mix_in_order_and_resumes_exactly(sampler, tmp_path):
    dataset = MixedTrainDataset(sampler)
    full = model()
    MixedTrainer(model=full, args=args(tmp_path / "a"), train_dataset=dataset).train()
    expected = [[sampler[i].tolist() for i in range(s * 4, s * 4 + 4)] for s in range(6)]
    assert full.seen == expected  # in mix order, input_ids = the block's seq_len + 1 tokens

    resumed = model()
    trainer = MixedTrainer(model=resumed, args=args(tmp_path / "a"), train_dataset=dataset)
    trainer.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    assert resumed.seen == expected[3:]


def test_loss_mask_drops_targets_that_start_a_document(sampler):
    item = MixedTrainDataset(sampler, loss_mask=True)[5]
    tokens, positions = sampler.get(5, positions=True)
    assert item["input_ids"].tolist() == tokens.tolist()
    starts = np.flatnonzero(positions[1:] == 0) + 1
    assert (item["labels"][starts] == -100).all()
    keep = np.setdiff1d(np.arange(len(tokens)), starts)
    assert item["labels"][keep].tolist() == tokens[keep].tolist()


def test_what_breaks_exact_resume_is_refused(sampler, tmp_path, monkeypatch):
    trainer = MixedTrainer(
        model=model(),
        args=args(tmp_path, ignore_data_skip=True),
        train_dataset=MixedTrainDataset(sampler),
    )
    with pytest.raises(MixerError, match="ignore_data_skip=True would replay the mix"):
        trainer.get_train_dataloader()
    sharded = MixedDataset(sampler, batch_size=4, rank=0, world_size=2)
    trainer = MixedTrainer(model=model(), args=args(tmp_path), train_dataset=sharded)
    # as under 2 processes (the 2-process launch itself is not in the suite)
    monkeypatch.setattr(type(trainer.args), "world_size", property(lambda self: 2))
    with pytest.raises(MixerError, match="double sharding drops data"):
        trainer.get_train_dataloader()
