from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sampler import make_store, spec_for

from mixer.errors import MixerError
from mixer.mix.loader import BatchIterator, LoaderState
from mixer.mix.sampler import MixSampler


@pytest.fixture(scope="module")
def sampler(tmp_path_factory) -> MixSampler:
    root = tmp_path_factory.mktemp("loader")
    stores = {"a": make_store(root / "a", 900, seed=1), "b": make_store(root / "b", 300, seed=2)}
    return MixSampler(spec_for(stores, {"a": 0.7, "b": 0.3}, seq_len=8, blocks=203))


def test_batches_carry_tokens_source_ids_and_the_global_step(sampler):
    batches = list(BatchIterator(sampler, batch_size=3, rank=1, world_size=2))
    assert len(batches) == 203 // 6
    for step, batch in enumerate(batches):
        assert batch["step"] == step
        indices = range(step * 6 + 3, step * 6 + 6)
        assert np.array_equal(batch["tokens"], np.stack([sampler[i] for i in indices]))
        names = [sampler.source_names[s] for s in batch["source"]]
        assert names == [sampler.locate(i).source for i in indices]
        assert "positions" not in batch


def test_positions_come_with_the_tokens_when_asked(sampler):
    batch = next(iter(BatchIterator(sampler, batch_size=2, positions=True)))
    for row in range(2):
        assert np.array_equal(batch["positions"][row], sampler.get(row, positions=True)[1])


@settings(max_examples=30, deadline=None)
@given(stop_after=st.integers(0, 33))
def test_state_dict_after_k_batches_resumes_at_batch_k(sampler, stop_after):
    uninterrupted = [b["tokens"] for b in BatchIterator(sampler, batch_size=6)]
    first = BatchIterator(sampler, batch_size=6)
    seen = [b["tokens"] for _, b in zip(range(stop_after), first, strict=False)]
    state = first.state_dict()
    assert {k: state[k] for k in ("version", "step", "samples", "global_batch_size")} == {
        "version": 1,
        "step": stop_after,
        "samples": 6 * stop_after,
        "global_batch_size": 6,
    }
    assert LoaderState.from_dict(json.loads(json.dumps(state))).to_dict() == state
    resumed = BatchIterator(sampler, batch_size=6)
    resumed.load_state_dict(state)
    assert len(resumed) == len(uninterrupted) - stop_after
    seen += [b["tokens"] for b in resumed]
    assert len(seen) == len(uninterrupted)
    assert all(np.array_equal(a, b) for a, b in zip(seen, uninterrupted, strict=True))


def test_resuming_on_a_different_world_size_with_the_same_global_batch(sampler):
    single = BatchIterator(sampler, batch_size=4, world_size=1)
    for _ in zip(range(5), single, strict=False):
        pass
    ranks = [BatchIterator(sampler, batch_size=2, rank=r, world_size=2) for r in range(2)]
    for it in ranks:
        it.load_state_dict(single.state_dict())
    reference = list(BatchIterator(sampler, batch_size=4, start_step=5))
    for parts, ref in zip(zip(*ranks, strict=True), reference, strict=True):
        assert parts[0]["step"] == parts[1]["step"] == ref["step"]
        assert np.array_equal(np.concatenate([p["tokens"] for p in parts]), ref["tokens"])


@pytest.mark.parametrize(
    ("before", "after"), [((2, 4), (2, 3)), ((1, 8), (1, 6)), ((3, 2), (5, 1))]
)
def test_elastic_resume_under_another_world_size_neither_replays_nor_skips(sampler, before, after):
    """8 -> 6 data-parallel ranks (and others): the sample ids every rank sees, before and
    after the change, are each global block once, in order, up to the last whole batch."""
    (b0, w0), (b1, w1) = before, after
    ranks = [BatchIterator(sampler, batch_size=b0, rank=r, world_size=w0) for r in range(w0)]
    seen: list[int] = []
    for parts in zip(*(zip(range(7), it, strict=False) for it in ranks), strict=True):
        seen += [int(i) for _, p in parts for i in p["index"]]
    state = json.loads(json.dumps(ranks[0].state_dict()))
    assert state["samples"] == 7 * b0 * w0 and state["step"] == 7
    resumed = [BatchIterator(sampler, batch_size=b1, rank=r, world_size=w1) for r in range(w1)]
    for it in resumed:
        it.load_state_dict(state)
    for parts in zip(*resumed, strict=True):
        assert len({p["step"] for p in parts}) == 1
        seen += [int(i) for p in parts for i in p["index"]]
    g1 = b1 * w1
    end = 7 * b0 * w0 + (len(sampler) - 7 * b0 * w0) // g1 * g1
    assert seen == list(range(end))
    assert resumed[0].state_dict()["samples"] == end
    assert resumed[0].state_dict()["step"] == 7 + (end - 7 * b0 * w0) // g1


def test_elastic_batches_hold_the_blocks_their_indices_name(sampler):
    it = BatchIterator(sampler, batch_size=3, rank=1, world_size=2)
    it.load_state_dict({"step": 4, "samples": 21, "global_batch_size": 7})
    batch = next(iter(it))
    assert batch["step"] == 4 and list(batch["index"]) == [24, 25, 26]
    assert np.array_equal(batch["tokens"], np.stack([sampler[i] for i in (24, 25, 26)]))


def test_states_from_a_newer_mixer_or_a_worker_are_refused(sampler):
    it = BatchIterator(sampler, batch_size=4)
    with pytest.raises(MixerError, match=r"unknown keys \['weights'\]; it was saved by a newer"):
        it.load_state_dict({"step": 3, "global_batch_size": 4, "weights": {}})
    with pytest.raises(MixerError, match="one DataLoader worker's state"):
        it.load_state_dict({"step": 3, "global_batch_size": 4, "worker": [0, 2]})


def test_a_step_past_the_end_is_rejected(sampler):
    with pytest.raises(MixerError, match=r"step: 51 outside \[0, 50\]"):
        BatchIterator(sampler, batch_size=4, start_step=51)
