"""One process of a 2-process (gloo, CPU) HF Trainer run, launched by tests/test_hf.py.

    python tests/hf_ddp_worker.py STORES_JSON OUT MODE   (env: RANK, WORLD_SIZE, MASTER_*)

MODE "full": train 6 steps with an online mixing policy (MixedTrainer.set_policy), checkpoint
at step 3, then check that a dataset which shards itself is refused under the real 2
processes. MODE "resume": a fresh run resumed from OUT/checkpoint-3. Each process writes
OUT/MODE-RANK.json: the input_ids of every training forward, the per-source losses it logged,
the refusal message (full), the amendments its dataset ended with and the policy's state.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_hf import args, model  # noqa: E402
from test_sampler import spec_for  # noqa: E402

from mixer.errors import MixerError  # noqa: E402
from mixer.mix.hf import MixedTrainDataset, MixedTrainer  # noqa: E402
from mixer.mix.policy import ExcessLossPolicy  # noqa: E402
from mixer.mix.sampler import MixSampler  # noqa: E402
from mixer.mix.torch import MixedDataset  # noqa: E402


def main() -> None:
    stores, out, mode = json.loads(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    sampler = MixSampler(spec_for(stores, {"a": 0.75, "b": 0.25}, seq_len=8, blocks=100))
    train_args = args(
        out / "run", per_device_train_batch_size=2, logging_steps=3, ddp_backend="gloo"
    )
    m = model()
    trainer = MixedTrainer(
        model=m, args=train_args, train_dataset=MixedTrainDataset(sampler), per_source_loss=True
    )
    # a's reference loss is out of reach: only b has excess loss, so b gains 0.2 per proposal
    policy = ExcessLossPolicy(
        sampler.source_names,
        {"a": 0.75, "b": 0.25},
        every=2,
        reference_losses={"a": 100.0},
        eta=5.0,
        max_change=0.2,
    )
    trainer.set_policy(policy)
    refusal = None
    if mode == "full":
        trainer.train()
        sharded = MixedDataset(sampler, batch_size=2, rank=trainer.args.process_index, world_size=2)
        try:
            MixedTrainer(
                model=model(), args=train_args, train_dataset=sharded
            ).get_train_dataloader()
        except MixerError as e:
            refusal = str(e)
    else:
        trainer.train(resume_from_checkpoint=str(out / "run" / "checkpoint-3"))
    logs = [
        {k: v for k, v in e.items() if k.startswith("loss/") or k == "step"}
        for e in trainer.state.log_history
        if "loss" in e
    ]
    rank = trainer.args.process_index
    record = {
        "world_size": trainer.args.world_size,
        "seen": m.seen,
        "logs": logs,
        "refusal": refusal,
        "amendments": [a.to_dict() for a in trainer.train_dataset.sampler.amendments],
        "policy": policy.state_dict(),
    }
    (out / f"{mode}-{rank}.json").write_text(json.dumps(record))
    # The results are written: skip interpreter teardown, where gloo's threads sometimes abort
    # (SIGABRT, "terminate called without an active exception") or hang, on torch's side.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
