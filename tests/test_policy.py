"""The online mixing policy: bounded, deterministic, resumable, right where the answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_sampler import make_store

from mixer.errors import MixerError
from mixer.mix.policy import ExcessLossPolicy
from mixer.mix.sampler import MixSampler
from mixer.mix.spec import MixSpec

SOURCES = ("web", "code", "math")
START = {"web": 0.5, "code": 0.3, "math": 0.2}


def run(policy: ExcessLossPolicy, losses, steps: range) -> list[dict[str, float]]:
    """Feed constant per-source row losses (4 rows of each source per step); collect proposals."""
    proposals = []
    ids = np.repeat(np.arange(3), 4)
    for step in steps:
        policy.observe_rows(step, ids, np.asarray(losses)[ids])
        if policy.due(step):
            proposals.append(policy.propose())
    return proposals


def test_weight_moves_to_the_source_with_excess_loss_within_the_bounds():
    # only math is above its reference: DoReMi moves weight to it, the others fall to the floor
    policy = ExcessLossPolicy(
        SOURCES,
        START,
        every=5,
        reference_losses={"web": 3.0, "code": 2.0, "math": 1.0},
        min_weight=0.05,
        max_change=0.1,
    )
    proposals = run(policy, [2.9, 1.5, 2.0], range(200))
    previous = START
    for weights in proposals:
        assert sum(weights.values()) == pytest.approx(1, abs=1e-12)
        assert all(w * 1000 == pytest.approx(round(w * 1000)) for w in weights.values())
        assert all(w >= 0.05 - 1e-3 for w in weights.values())
        assert all(abs(weights[s] - previous[s]) <= 0.1 + 1e-3 for s in SOURCES)
        previous = weights
    assert proposals[-1] == pytest.approx({"web": 0.05, "code": 0.05, "math": 0.9}, abs=1e-3)
    assert proposals[0]["math"] == pytest.approx(0.3, abs=1e-3)  # one max_change step up


def test_no_excess_leaves_the_weights_but_smooths_towards_uniform():
    policy = ExcessLossPolicy(SOURCES, START, every=1, reference_losses=dict.fromkeys(SOURCES, 5))
    weights = run(policy, [1.0, 1.0, 1.0], range(1))[0]
    assert weights == pytest.approx({s: 0.999 * START[s] + 0.001 / 3 for s in SOURCES}, abs=1e-3)


def test_the_same_loss_history_gives_the_same_weights_also_after_a_resume():
    rng = np.random.default_rng(0)
    history = [(rng.integers(0, 3, 16), rng.random(16) * 4) for _ in range(60)]

    def fresh() -> ExcessLossPolicy:
        return ExcessLossPolicy(SOURCES, START, every=7, eta=2.0, max_change=0.2)

    def feed(policy, steps):
        out = []
        for step in steps:
            policy.observe_rows(step, *history[step])
            if policy.due(step):
                out.append(policy.propose())
        return out

    whole = feed(fresh(), range(60))
    first = fresh()
    head = feed(first, range(31))
    resumed = fresh()
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert head + feed(resumed, range(31, 60)) == whole
    assert whole == feed(fresh(), range(60))
    with pytest.raises(MixerError, match="already observed up to step 59"):
        resumed.observe_rows(59, *history[0])


def test_proposals_respect_max_repeats_through_the_sampler_caps(tmp_path):
    stores = {
        "web": make_store(tmp_path / "web", 2000, seed=1),
        "code": make_store(tmp_path / "code", 800, seed=2),
        "math": make_store(tmp_path / "math", 81, seed=3),  # 10 blocks of 8
    }
    spec = MixSpec.from_dict(
        {
            "seq_len": 8,
            "seed": 0,
            "steps": 100,
            "global_batch_size": 4,
            "source": [
                {"name": n, "store": stores[n], "weight": START[n], **extra}
                for n, extra in (("web", {}), ("code", {}), ("math", {"max_repeats": 12}))
            ],
        }
    )
    sampler = MixSampler(spec)
    policy = ExcessLossPolicy(SOURCES, START, every=10, max_change=0.3)
    ids = np.repeat(np.arange(3), 4)
    for step in range(100):
        policy.observe_rows(step, ids, np.array([1.0, 1.0, 9.0])[ids])  # math looks hardest
        if policy.due(step) and step + 1 < 100:
            at = (step + 1) * 4
            caps = sampler.weight_caps(at)
            weights = policy.propose(caps)
            assert weights["math"] <= caps["math"] + 1e-12
            sampler = sampler.amended(weights, at_block=at)  # would raise past max_repeats
    assert sampler.draws[2] <= 12 * 10
    assert sampler.draws[2] >= 12 * 10 - 12  # the cap binds: math gets what its limit allows


def test_bad_policy_settings_are_one_line_errors():
    with pytest.raises(MixerError, match="min_weight: 0.5 x 3 sources exceeds 1"):
        ExcessLossPolicy(SOURCES, START, every=1, min_weight=0.5)
    with pytest.raises(MixerError, match="unknown source 'wiki'"):
        ExcessLossPolicy(SOURCES, {"wiki": 1.0}, every=1)
    with pytest.raises(MixerError, match="not finite"):
        ExcessLossPolicy(SOURCES, START, every=1).observe(0, [float("nan"), 0, 0], [1, 0, 0])
