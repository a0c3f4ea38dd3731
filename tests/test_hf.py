"""HF Trainer fed the mix in order; resume from a Trainer checkpoint is exact."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_sampler import make_store, spec_for

from mixer.errors import MixerError
from mixer.mix.sampler import MixSampler
from mixer.mix.spec import MixSpec

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


def model(**config_kw) -> Recording:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=1000,
        n_positions=16,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
        **config_kw,
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
    # as under 2 processes (the real 2-process launch is test_two_processes_...)
    monkeypatch.setattr(type(trainer.args), "world_size", property(lambda self: 2))
    with pytest.raises(MixerError, match="double sharding drops data"):
        trainer.get_train_dataloader()


def test_per_source_loss_is_logged_with_the_trainer_logs(sampler, tmp_path):
    # learning rate 0 and no dropout: the model stays fixed, so the logged per-source means
    # can be recomputed here from the blocks each log window trained on
    m = model(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    trainer = MixedTrainer(
        model=m,
        args=args(tmp_path, max_steps=4, logging_steps=2, learning_rate=0.0, save_strategy="no"),
        train_dataset=MixedTrainDataset(sampler, loss_mask=True),
        per_source_loss=True,
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logs] == [2, 4]
    dataset = MixedTrainDataset(sampler, loss_mask=True)
    m.eval()
    for entry, blocks in zip(logs, (range(0, 8), range(8, 16)), strict=True):
        sums, counts = {}, {}
        for i in blocks:
            item = dataset[i]
            name = sampler.source_names[int(item["source"])]
            with torch.no_grad():
                logits = m(input_ids=item["input_ids"][None]).logits[0, :-1]
            targets = item["labels"][1:]
            keep = targets != -100
            loss = torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum")
            sums[name] = sums.get(name, 0.0) + float(loss)
            counts[name] = counts.get(name, 0) + int(keep.sum())
        expected = {f"loss/{name}": sums[name] / counts[name] for name in sums}
        got = {key: value for key, value in entry.items() if key.startswith("loss/")}
        assert got.keys() == expected.keys()
        for key in expected:
            assert got[key] == pytest.approx(expected[key], rel=1e-5)


def test_per_source_loss_needs_logits(sampler, tmp_path):
    class NoLogits(Recording):
        def forward(self, input_ids=None, labels=None, **kwargs):
            return {"loss": super().forward(input_ids=input_ids, labels=labels, **kwargs).loss}

    torch.manual_seed(0)
    m = NoLogits(model().config)
    m.seen = []
    trainer = MixedTrainer(
        model=m,
        args=args(tmp_path, max_steps=1, save_strategy="no"),
        train_dataset=MixedTrainDataset(sampler),
        per_source_loss=True,
    )
    with pytest.raises(MixerError, match="per_source_loss=True needs the model to return logits"):
        trainer.train()


# ---------------------------------------------------------------------------- 2 processes (gloo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(stores: dict[str, str], out, mode: str) -> list[dict]:
    """Run tests/hf_ddp_worker.py as ranks 0 and 1 of a gloo group on 127.0.0.1; a hang fails."""
    here = Path(__file__).parent
    port = free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(here.parent), str(here)]),
        }
        cmd = [sys.executable, str(here / "hf_ddp_worker.py"), json.dumps(stores), str(out), mode]
        log = open(out / f"{mode}-{rank}.log", "wb")  # a file, not a pipe: a full pipe would hang
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        for p, _ in procs:
            p.wait(timeout=120)
    finally:
        for p, log in procs:
            p.kill()
            p.wait()
            log.close()
    for rank, (p, _) in enumerate(procs):
        assert p.returncode == 0, (out / f"{mode}-{rank}.log").read_text()[-3000:]
    return [json.loads((out / f"{mode}-{rank}.json").read_text()) for rank in range(2)]


@pytest.mark.slow
def test_two_processes_see_each_global_batch_once_steer_alike_and_resume_exactly(tmp_path):
    stores = {
        "a": make_store(tmp_path / "a", 700, seed=1),
        "b": make_store(tmp_path / "b", 200, seed=2),
    }
    sampler = MixSampler(spec_for(stores, {"a": 0.75, "b": 0.25}, seq_len=8, blocks=100))
    full = launch(stores, tmp_path, "full")
    assert [r["world_size"] for r in full] == [2, 2]
    # one policy, fed each step's losses summed over both processes: the same proposals at the
    # same steps on both ranks (b up by its max_change after steps 1, 3 and 5)
    assert full[0]["amendments"] == full[1]["amendments"]
    assert full[0]["policy"] == full[1]["policy"]
    assert [a["weights"]["b"] for a in full[0]["amendments"]] == pytest.approx([0.45, 0.65, 0.85])
    for a in full[0]["amendments"]:
        sampler = sampler.amended(a["weights"], a["at_block"])
    # global step s is blocks [4s, 4s + 4): rank r trained on its contiguous half, no block twice
    for s in range(6):
        union = full[0]["seen"][s] + full[1]["seen"][s]
        assert union == [sampler[i].tolist() for i in range(4 * s, 4 * s + 4)]
    # the same per-source losses on both ranks (summed over processes), every source present
    assert full[0]["logs"] == full[1]["logs"]
    assert [sorted(e) for e in full[0]["logs"]] == [["loss/a", "loss/b", "step"]] * 2
    # a dataset that shards itself is refused under the real 2 processes
    for r in full:
        assert "double sharding drops data" in r["refusal"]
    resumed = launch(stores, tmp_path, "resume")
    for rank in range(2):  # with the checkpoint's amendments and policy state
        assert resumed[rank]["seen"] == full[rank]["seen"][3:]
        assert resumed[rank]["amendments"] == full[rank]["amendments"]
        assert resumed[rank]["policy"] == full[rank]["policy"]


def test_bos_puts_bos_before_each_document_in_input_ids_and_keeps_eos_in_labels(sampler):
    dataset = MixedTrainDataset(sampler, bos_id=999)
    replaced = 0
    for i in range(20):
        item = dataset[i]
        tokens = sampler[i]
        bos = np.zeros(len(tokens), dtype=bool)
        bos[:-1] = tokens[:-1] == 0  # each EOS is followed by a document start in these stores
        assert item["labels"].tolist() == tokens.tolist()
        assert item["input_ids"].tolist() == np.where(bos, 999, tokens).tolist()
        replaced += int(bos.sum())
    assert replaced > 0
    with pytest.raises(MixerError, match="leave loss_mask off"):
        MixedTrainDataset(sampler, loss_mask=True, bos_id=999)


# ---------------------------------------------------------------------------- steering


class Steer(transformers.TrainerCallback):
    """Calls trainer.set_weights(weights, at_step) after optimizer step `after` (0-based);
    records the refusal instead when it raises."""

    def __init__(self, trainer, after, weights, at_step):
        self.trainer, self.after, self.weights, self.at_step = trainer, after, weights, at_step
        self.refusal = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step - 1 == self.after:
            try:
                self.trainer.set_weights(self.weights, self.at_step)
            except MixerError as e:
                self.refusal = str(e)


def amended_steps(sampler, *changes, steps=6):
    for weights, at_step in changes:
        sampler = sampler.amended(weights, at_step * 4)
    return [[sampler[i].tolist() for i in range(s * 4, s * 4 + 4)] for s in range(steps)]


def test_set_weights_during_training_applies_from_its_step_and_resumes_byte_identically(
    sampler, tmp_path
):
    weights = {"b": 1.0}
    full = model()
    trainer = MixedTrainer(
        model=full, args=args(tmp_path / "a"), train_dataset=MixedTrainDataset(sampler)
    )
    past = Steer(trainer, after=1, weights=weights, at_step=1)  # step 1 was trained on
    trainer.add_callback(past)
    trainer.add_callback(Steer(trainer, after=0, weights=weights, at_step=3))
    trainer.train()
    assert "is not in [" in past.refusal and "already handed out" in past.refusal
    expected = amended_steps(sampler, (weights, 3))
    assert full.seen == expected
    assert full.seen[3] != [sampler[i].tolist() for i in range(12, 16)]
    saved = json.loads((tmp_path / "a" / "checkpoint-3" / "mixer_state.json").read_text())
    assert saved["step"] == 3 and saved["samples"] == 12
    assert saved["steering"]["amendments"] == [{"at_block": 12, "weights": weights}]
    # a trainer built from the original, unsteered sampler continues byte-identically
    resumed = model()
    trainer = MixedTrainer(
        model=resumed, args=args(tmp_path / "a"), train_dataset=MixedTrainDataset(sampler)
    )
    trainer.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    assert resumed.seen == expected[3:]
    # a spec edited before the checkpoint is refused
    data = sampler.spec.to_dict()
    data["source"][0]["weight"], data["source"][1]["weight"] = 0.5, 0.5
    edited = MixSampler(MixSpec.from_dict(data))
    trainer = MixedTrainer(
        model=model(), args=args(tmp_path / "a"), train_dataset=MixedTrainDataset(edited)
    )
    with pytest.raises(MixerError, match="fingerprint: the spec's plan"):
        trainer.train(resume_from_checkpoint=True)  # the last checkpoint, checkpoint-6
    # so is another global batch size (the Trainer would skip 3 x 2 blocks, not 12)
    trainer = MixedTrainer(
        model=model(),
        args=args(tmp_path / "a", per_device_train_batch_size=2),
        train_dataset=MixedTrainDataset(sampler),
    )
    with pytest.raises(MixerError, match="was trained at 4 blocks per step and this trainer"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))


def test_with_dataloader_workers_set_weights_works_before_train_and_is_refused_during_it(
    sampler, tmp_path
):
    weights = {"b": 1.0}
    m = model()
    trainer = MixedTrainer(
        model=m,
        args=args(tmp_path, dataloader_num_workers=2, save_strategy="no"),
        train_dataset=MixedTrainDataset(sampler),
    )
    trainer.set_weights(weights, at_step=2)  # before train() forks the workers
    during = Steer(trainer, after=1, weights={"a": 1.0}, at_step=5)
    trainer.add_callback(during)
    trainer.train()
    assert m.seen == amended_steps(sampler, (weights, 2))
    assert during.refusal.startswith("set_weights: DataLoader workers may hold copies")
    from mixer.mix.policy import ExcessLossPolicy

    policy = ExcessLossPolicy(sampler.source_names, {"a": 0.75, "b": 0.25}, every=2)
    with pytest.raises(MixerError, match="use dataloader_num_workers=0"):
        trainer.set_policy(policy)
    other = MixedTrainer(
        model=model(), args=args(tmp_path), train_dataset=MixedDataset(sampler, batch_size=4)
    )
    with pytest.raises(MixerError, match="set_weights: needs train_dataset=MixedTrainDataset"):
        other.set_weights(weights, at_step=2)


def policy_run(sampler, out, resume=None, callbacks=()):
    from mixer.mix.policy import ExcessLossPolicy

    m = model()
    dataset = MixedTrainDataset(sampler)
    trainer = MixedTrainer(model=m, args=args(out), train_dataset=dataset)
    for callback in callbacks:
        trainer.add_callback(callback)
    # a's reference loss is out of reach: only b has excess loss, so b gains max_change each time
    policy = ExcessLossPolicy(
        sampler.source_names,
        {"a": 0.75, "b": 0.25},
        every=2,
        reference_losses={"a": 100.0},
        eta=5.0,
        max_change=0.2,
    )
    trainer.set_policy(policy)
    trainer.set_policy(policy)  # attached again: still fed once per step
    trainer.train(resume_from_checkpoint=resume)
    return m, dataset, policy


def test_a_policy_fed_by_the_trainer_s_per_source_losses_resumes_with_the_same_weights(
    sampler, tmp_path
):
    full, dataset, policy = policy_run(sampler, tmp_path)
    amendments = [a.to_dict() for a in dataset.sampler.amendments]
    # proposals after steps 1, 3, 5, each from the first step the trainer had not fetched
    assert [a["weights"]["b"] for a in amendments] == pytest.approx([0.45, 0.65, 0.85])
    starts = [a["at_block"] // 4 for a in amendments]
    assert starts == sorted(starts) and starts[0] >= 2
    assert full.seen == amended_steps(
        sampler, *[(a["weights"], a["at_block"] // 4) for a in amendments]
    )
    saved = json.loads((tmp_path / "checkpoint-3" / "mixer_state.json").read_text())
    assert len(saved["steering"]["amendments"]) == 1 and saved["policy"]["updates"] == 1
    resumed, again, policy_again = policy_run(
        sampler, tmp_path, resume=str(tmp_path / "checkpoint-3")
    )
    assert resumed.seen == full.seen[3:]
    assert [a.to_dict() for a in again.sampler.amendments] == amendments
    assert policy_again.state_dict() == policy.state_dict()


def test_a_fork_during_training_does_not_stop_the_policy(sampler, tmp_path):
    """With dataloader_num_workers=0 no copy of the dataset exists, so a process forked by
    something else (a pool in a callback) leaves the policy's weight changes allowed."""
    from transformers import TrainerCallback

    class ForkAtStep1(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                pid = os.fork()
                if pid == 0:
                    os._exit(0)
                os.waitpid(pid, 0)

    _, dataset, _ = policy_run(sampler, tmp_path, callbacks=[ForkAtStep1()])
    weights = [a.to_dict()["weights"]["b"] for a in dataset.sampler.amendments]
    assert weights == pytest.approx([0.45, 0.65, 0.85])
