"""Steering a run: phases that start at a step, amendments, skipped ranges, fingerprints."""

from __future__ import annotations

import json
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sampler import cases, located, make_store, normalized

from mixer.errors import MixerError, SpecError
from mixer.mix.sampler import MixSampler
from mixer.mix.spec import Amendment, MixSpec


def steps_spec(stores: dict[str, str], phases=(), **top) -> MixSpec:
    data = {
        "seq_len": 8,
        "seed": 3,
        "steps": 50,
        "global_batch_size": 4,
        "source": [
            {"name": name, "store": store, "weight": w}
            for (name, store), w in zip(stores.items(), (0.5, 0.3, 0.2), strict=False)
        ],
        "phase": list(phases),
        **top,
    }
    return MixSpec.from_dict(data)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("steer")
    return {
        "web": make_store(root / "web", 900, seed=1, docs_per_shard=5),
        "code": make_store(root / "code", 300, seed=2),
        "math": make_store(root / "math", 120, seed=3),
    }


def assert_draws_continue(sampler: MixSampler) -> None:
    """Per source: the j-th draw is in epoch j // n and no block repeats within an epoch."""
    refs = located(sampler)
    for s, n in enumerate(sampler.source_blocks):
        mine = refs.source == s
        blocks, epochs = refs.block[mine], refs.epoch[mine]
        assert np.array_equal(epochs, np.arange(len(blocks)) // n)
        for e in range(-(-len(blocks) // n)):
            epoch = blocks[e * n : (e + 1) * n]
            assert len(np.unique(epoch)) == len(epoch)


# ---------------------------------------------------------------------------- phases with a start


def test_a_phase_with_a_start_step_runs_to_the_next_phase_and_packs_length_phases_after_it():
    spec = MixSpec.from_dict(
        {
            "seq_len": 4,
            "seed": 0,
            "steps": 100,
            "global_batch_size": 2,
            "source": [
                {"name": "a", "store": "/a", "weight": 0.5},
                {"name": "b", "store": "/b", "weight": 0.5},
            ],
            "phase": [
                {"name": "more_b", "start_step": 40, "weights": {"b": 1.0}},
                {"name": "anneal", "blocks": 20, "weights": {"a": 1.0}},
                {"name": "late", "start_tokens": 4 * 190, "weights": {"a": 0.25, "b": 0.75}},
            ],
        }
    )
    assert [(p.name, p.start, p.blocks) for p in spec.plan] == [
        ("main", 0, 80),
        ("more_b", 80, 90),
        ("anneal", 170, 20),
        ("late", 190, 10),
    ]
    assert MixSpec.from_dict(spec.to_dict()).plan == spec.plan


def test_length_only_specs_keep_their_layout():
    spec = MixSpec.from_dict(
        {
            "seq_len": 4,
            "seed": 0,
            "total_tokens": 400,
            "source": [{"name": "a", "store": "/a", "weight": 1.0}],
            "phase": [{"name": "p", "tokens": 10, "weights": {"a": 1.0}}],
        }
    )
    assert [(p.name, p.start, p.blocks) for p in spec.plan] == [("main", 0, 97), ("p", 97, 3)]


@pytest.mark.parametrize(
    ("phases", "top", "expected"),
    [
        (
            [{"name": "p", "start_step": 5, "weights": {"a": 1.0}}],
            {"total_tokens": 400},
            "phase 'p'.start_step: needs steps and global_batch_size",
        ),
        (
            [{"name": "p", "start_tokens": 400, "weights": {"a": 1.0}}],
            {"total_tokens": 400},
            "phase 'p': starts at token 400, at or after the end of the run",
        ),
        (
            [
                {"name": "p", "start_tokens": 200, "weights": {"a": 1.0}},
                {"name": "q", "start_tokens": 100, "weights": {"a": 1.0}},
            ],
            {"total_tokens": 400},
            "list phases in the order they run",
        ),
        (
            [
                {"name": "p", "start_tokens": 200, "weights": {"a": 1.0}},
                {"name": "q", "tokens": 300, "weights": {"a": 1.0}},
            ],
            {"total_tokens": 400},
            "phase 'q': the 1 phase(s) from here need 300 tokens but only 200 lie",
        ),
        (
            [{"name": "p", "start_tokens": 1, "tokens": 4, "weights": {"a": 1.0}}],
            {"total_tokens": 400},
            "give exactly one of tokens or blocks (a length) or start_step or start_tokens",
        ),
        (
            [{"name": "p@1", "tokens": 4, "weights": {"a": 1.0}}],
            {"total_tokens": 400},
            "'@' is reserved",
        ),
        ([], {"total_tokens": 400, "skip_steps": [[0, 1]]}, "skip_steps: needs steps"),
        ([], {"steps": 10, "global_batch_size": 1, "skip_steps": [[3, 11]]}, "0 <= start < stop"),
    ],
)
def test_phase_start_and_skip_errors_are_one_line_naming_the_key(phases, top, expected):
    data = {"seq_len": 4, "seed": 0, "source": [{"name": "a", "store": "/a", "weight": 1.0}]}
    with pytest.raises(SpecError) as info:
        MixSpec.from_dict({**data, **top, "phase": phases})
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


@settings(max_examples=40, deadline=None)
@given(case=cases(), at=st.floats(0, 1, exclude_max=True), weights=st.data())
def test_adding_a_phase_with_a_start_changes_nothing_before_it_and_continues_every_source(
    case, at, weights
):
    with tempfile.TemporaryDirectory() as tmp:
        spec = case.spec(Path(tmp))
        before = MixSampler(spec)
        start = int(at * spec.plan[0].blocks)  # inside the base phase: length phases follow
        ints = weights.draw(
            st.lists(st.integers(0, 9), min_size=len(case.names), max_size=len(case.names)).filter(
                any
            )
        )
        phase = {
            "name": "new",
            "start_tokens": start * spec.seq_len,
            "weights": normalized(case.names, ints),
        }
        data = spec.to_dict()
        data["phase"] = [phase, *data.get("phase", [])]
        after = MixSampler(MixSpec.from_dict(data))
    old, new = located(before), located(after)
    for a, b in zip(old, new, strict=True):
        if b is not new.phase:
            assert np.array_equal(a[:start], b[:start])
    assert after.fingerprint(start) == before.fingerprint(start)
    assert_draws_continue(after)
    table = after.phases[after.phase_names.index("new")]
    assert table.start == start
    counts = after.source_counts(np.arange(start, start + table.blocks + 1)) - after.source_counts(
        [start]
    )
    n = np.arange(table.blocks + 1)[:, None]
    assert np.all(np.abs(counts - np.array(table.targets) * n) < 1 + 1e-9)


# ---------------------------------------------------------------------------- amendments


def test_an_amendment_is_a_new_phase_to_the_end_of_the_phase_it_falls_in(stores):
    anneal = {"name": "anneal", "blocks": 40, "weights": {"math": 1.0}}
    sampler = MixSampler(steps_spec(stores, [anneal]))
    amended = sampler.amended({"code": 1.0}, at_block=60)
    assert [(t.name, t.start, t.blocks) for t in amended.phases] == [
        ("main", 0, 60),
        ("main@60", 60, 100),
        ("anneal", 160, 40),
    ]
    old, new = located(sampler), located(amended)
    assert np.array_equal(old.source[:60], new.source[:60])
    assert np.array_equal(old.block[:60], new.block[:60])
    assert (new.source[60:160] == amended.source_names.index("code")).all()
    assert_draws_continue(amended)
    again = amended.amended({"web": 0.5, "math": 0.5}, at_block=100)
    assert [t.name for t in again.phases] == ["main", "main@60", "main@100", "anneal"]
    assert np.array_equal(located(again).block[:100], new.block[:100])
    assert again.amendments == (
        Amendment(60, {"code": 1.0}),
        Amendment(100, {"web": 0.5, "math": 0.5}),
    )
    reopened = pickle.loads(pickle.dumps(again))
    assert all(np.array_equal(a, b) for a, b in zip(located(reopened), located(again), strict=True))


def test_amendments_are_refused_when_they_break_max_repeats_or_name_unknown_sources(stores):
    data = steps_spec(stores).to_dict()
    data["source"][2]["max_repeats"] = 3
    sampler = MixSampler(MixSpec.from_dict(data))
    with pytest.raises(SpecError, match="source 'math'.max_repeats: 3"):
        sampler.amended({"math": 1.0}, at_block=0)
    with pytest.raises(SpecError, match="unknown source 'wiki'"):
        sampler.amended({"wiki": 1.0}, at_block=10)
    with pytest.raises(SpecError, match="weights sum to 0.5"):
        sampler.amended({"web": 0.5}, at_block=10)
    with pytest.raises(SpecError, match="at or after the end of the run"):
        sampler.amended({"web": 1.0}, at_block=200)


# ---------------------------------------------------------------------------- skips


def test_skipped_steps_are_consumed_not_redrawn(stores):
    plain = MixSampler(steps_spec(stores))
    skipping = MixSampler(steps_spec(stores, skip_steps=[[10, 15], [40, 42]]))
    assert skipping.skip_blocks == ((40, 60), (160, 168))
    kept = list(skipping.batch_steps(4))
    assert kept == [s for s in range(50) if not (10 <= s < 15 or 40 <= s < 42)]
    every = dict(zip(range(50), plain.batches(4), strict=True))
    for step, batch in zip(kept, skipping.batches(4), strict=True):
        assert np.array_equal(batch, every[step])
    # the library form, in blocks; a batch holding any skipped block is left out whole
    partial = plain.skipping(41, 45)
    assert list(partial.batch_steps(4, start_step=9)) == [9] + list(range(12, 50))
    assert plain.skipping(0, 4).skipping(2, 9).skip_blocks == ((0, 9),)
    with pytest.raises(MixerError, match=r"skip range \[5, 300\) is not inside"):
        plain.skipping(5, 300)


# ---------------------------------------------------------------------------- fingerprints


def test_the_fingerprint_covers_the_past_only(stores):
    sampler = MixSampler(steps_spec(stores))
    fp = sampler.fingerprint(80)
    json.dumps(fp)
    assert sampler.amended({"code": 1.0}, at_block=80).fingerprint(80) == fp
    assert sampler.amended({"code": 1.0}, at_block=79).fingerprint(80)["plan"] != fp["plan"]
    assert sampler.skipping(0, 40).fingerprint(80) == fp  # skips change no block
    data = steps_spec(stores).to_dict()
    data["seed"] = 4
    reseeded = MixSampler(MixSpec.from_dict(data))
    with pytest.raises(MixerError) as info:
        reseeded.check_fingerprint(fp, 80, "step 20")
    assert str(info.value).startswith("fingerprint: the spec's plan")
    assert "change the mix only from step 20 on" in str(info.value)
    sampler.check_fingerprint(fp, 80, "step 20")


def test_a_changed_store_is_refused_by_the_fingerprint(stores, tmp_path):
    sampler = MixSampler(steps_spec(stores))
    fp = sampler.fingerprint(40)
    other = dict(stores, math=make_store(tmp_path / "math", 120, seed=99))
    with pytest.raises(MixerError, match="fingerprint: the stores' contents before step 10"):
        MixSampler(steps_spec(other)).check_fingerprint(fp, 40, "step 10")


def test_loaders_leave_out_the_spec_s_skipped_steps(stores):
    from mixer.mix.loader import BatchIterator
    from mixer.mix.torch import MixedDataLoader, MixedIterableDataset

    sampler = MixSampler(steps_spec(stores, skip_steps=[[3, 7], [48, 50]]))
    expected = [s for s in range(50) if not (3 <= s < 7 or s >= 48)]
    it = BatchIterator(sampler, batch_size=2, world_size=2, rank=1)
    assert len(it) == len(expected)
    assert [b["step"] for b in it] == expected
    assert len(it) == 0 and it.step == 48
    for workers in (0, 2):
        loader = MixedDataLoader(MixedIterableDataset(sampler, batch_size=4), num_workers=workers)
        assert [int(b["step"]) for b in loader] == expected


# ---------------------------------------------------------------------------- live loaders


def steered_run(sampler: MixSampler, batch_size: int = 4, save_at: int = 15):
    """A run that sets weights at step 10 (after step 7) and skips 20-24 (after step 12)."""
    from mixer.mix.loader import BatchIterator

    it = BatchIterator(sampler, batch_size=batch_size)
    out, saved = {}, None
    for batch in it:
        out[batch["step"]] = batch["tokens"]
        if batch["step"] == 7:
            it.set_weights({"code": 0.25, "math": 0.75}, at_step=10)
        if batch["step"] == 12:
            it.skip_steps(20, 25)
        if batch["step"] == save_at - 1:
            saved = json.loads(json.dumps(it.state_dict()))
    return out, saved, it


def test_set_weights_changes_the_mix_from_its_step_and_a_fresh_loader_resumes_identically(stores):
    from mixer.mix.loader import BatchIterator

    spec = steps_spec(stores)
    plain = {b["step"]: b for b in BatchIterator(MixSampler(spec), batch_size=4)}
    out, saved, it = steered_run(MixSampler(spec))
    assert sorted(out) == [s for s in range(50) if not 20 <= s < 25]
    for step in range(10):
        assert np.array_equal(out[step], plain[step]["tokens"])
    assert not any(np.array_equal(out[s], plain[s]["tokens"]) for s in range(10, 14))
    web = it.sampler.source_names.index("web")
    refs = it.sampler.locate_many(np.arange(40, 200))
    assert web not in refs.source.tolist()
    assert [t.name for t in it.sampler.phases] == ["main", "main@40"]
    assert saved["steering"] == {
        "amendments": [{"at_block": 40, "weights": {"code": 0.25, "math": 0.75}}],
        "skip_blocks": [[80, 100]],
    }
    fresh = BatchIterator(MixSampler(spec), batch_size=4)  # from the original spec
    fresh.load_state_dict(saved)
    resumed = {b["step"]: b["tokens"] for b in fresh}
    assert sorted(resumed) == [s for s in sorted(out) if s >= 15]
    assert all(np.array_equal(resumed[s], out[s]) for s in resumed)


def test_steering_the_past_is_refused_in_one_line(stores):
    from mixer.mix.loader import BatchIterator

    it = BatchIterator(MixSampler(steps_spec(stores)), batch_size=4)
    for _ in zip(range(6), it, strict=False):
        pass
    for call in (lambda: it.set_weights({"web": 1.0}, at_step=5), lambda: it.skip_steps(3, 9)):
        with pytest.raises(MixerError) as info:
            call()
        assert "is not in [6, 50): steps before 6 were already handed out" in str(info.value)
    it.set_weights({"web": 1.0}, at_step=6)  # the next step is still open


def test_resuming_with_a_spec_edited_in_the_past_is_refused_and_in_the_future_accepted(stores):
    from mixer.mix.loader import BatchIterator

    out, saved, _ = steered_run(MixSampler(steps_spec(stores)))
    edited = steps_spec(stores).to_dict()
    edited["source"][0]["weight"], edited["source"][1]["weight"] = 0.4, 0.4
    fresh = BatchIterator(MixSampler(MixSpec.from_dict(edited)), batch_size=4)
    with pytest.raises(MixerError, match="fingerprint: the spec's plan .* before step 15 differs"):
        fresh.load_state_dict(saved)
    later = {"name": "late", "start_step": 45, "weights": {"web": 1.0}}
    future = BatchIterator(MixSampler(steps_spec(stores, [later])), batch_size=4)
    future.load_state_dict(saved)
    resumed = {b["step"]: b["tokens"] for b in future}
    assert all(np.array_equal(resumed[s], out[s]) for s in resumed if s < 45)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_torch_loader_applies_weights_at_the_same_step_on_every_worker(stores, workers):
    from mixer.mix.torch import MixedDataLoader, MixedIterableDataset

    spec = steps_spec(stores)
    expected, saved, _ = steered_run(MixSampler(spec))
    loader = MixedDataLoader(
        MixedIterableDataset(MixSampler(spec), batch_size=4), num_workers=workers
    )
    got = {}
    for batch in loader:  # workers prefetch ahead; steering restarts them from the next step
        step = int(batch["step"])
        got[step] = batch["tokens"].numpy()
        if step == 7:
            loader.set_weights({"code": 0.25, "math": 0.75}, at_step=10)
        if step == 12:
            loader.skip_steps(20, 25)
        if step == 14:
            state = loader.state_dict()
    assert sorted(got) == sorted(expected)
    assert all(np.array_equal(got[s], expected[s].astype(np.int64)) for s in got)
    assert state == saved
    fresh = MixedDataLoader(
        MixedIterableDataset(MixSampler(spec), batch_size=4), num_workers=workers
    )
    fresh.load_state_dict(state)
    resumed = {int(b["step"]): b["tokens"].numpy() for b in fresh}
    assert all(np.array_equal(resumed[s], got[s]) for s in resumed) and min(resumed) == 15


def test_an_online_policy_through_the_loader_is_deterministic_and_resumes(stores):
    from mixer.mix.loader import BatchIterator
    from mixer.mix.policy import ExcessLossPolicy

    spec = steps_spec(stores)
    row_loss = np.array([1.0, 1.0, 4.0])  # math looks hardest: the policy moves weight to it

    def run(state=None, stop=None):
        it = BatchIterator(MixSampler(spec), batch_size=4)
        it.set_policy(
            ExcessLossPolicy(
                it.sampler.source_names,
                {"web": 0.5, "code": 0.3, "math": 0.2},
                every=5,
                max_change=0.2,
            )
        )
        if state is not None:
            it.load_state_dict(json.loads(json.dumps(state)))
        out, saved = {}, None
        for batch in it:
            ids = batch["source"]
            sums = np.bincount(ids, row_loss[ids], minlength=3)
            it.report_loss(batch["step"], sums, np.bincount(ids, minlength=3))
            out[batch["step"]] = batch["tokens"]
            if batch["step"] == stop:
                saved = it.state_dict()
        return out, saved, it

    first, saved, it = run(stop=22)
    again, _, _ = run()
    assert all(np.array_equal(first[s], again[s]) for s in first)
    assert len(it.sampler.amendments) == 9  # after steps 4, 9, ..., 44
    assert it.sampler.phases[-1].targets[2] > 0.9
    assert saved["policy"]["updates"] == 4
    resumed, _, _ = run(state=saved)
    assert sorted(resumed) == list(range(23, 50))
    assert all(np.array_equal(resumed[s], first[s]) for s in resumed)


def test_exports_record_amendments_and_refuse_skipped_blocks(stores, tmp_path):
    from mixer.mix.export import export_mix
    from mixer.store.reader import TokenStore

    sampler = MixSampler(steps_spec(stores, skip_steps=[[10, 12]])).amended({"web": 1.0}, 60)
    with pytest.raises(MixerError, match=r"^start=0, stop=100: blocks \[40, 48\) are skipped"):
        export_mix(sampler, tmp_path / "x", 0, 100, progress=False)
    out = export_mix(sampler, tmp_path / "y", 48, 100, progress=False)
    store = TokenStore.open(out)
    assert store.manifest["mix"]["steering"]["amendments"] == [
        {"at_block": 60, "weights": {"web": 1.0}}
    ]
    assert np.array_equal(store.document(20), sampler[68])


def test_a_policy_must_match_the_mix_and_be_attached_before_its_state_loads(stores):
    from mixer.mix.loader import BatchIterator
    from mixer.mix.policy import ExcessLossPolicy

    it = BatchIterator(MixSampler(steps_spec(stores)), batch_size=4)
    with pytest.raises(MixerError, match="report_loss: no policy attached"):
        it.report_loss(0, [0, 0, 0], [0, 0, 0])
    with pytest.raises(MixerError, match="are not the mix's"):
        it.set_policy(ExcessLossPolicy(("math", "code", "web"), {"web": 1.0}, every=2))
    it.set_policy(ExcessLossPolicy(it.sampler.source_names, {"web": 1.0}, every=2))
    state = it.state_dict()
    with pytest.raises(MixerError, match="attach the same policy"):
        BatchIterator(MixSampler(steps_spec(stores)), batch_size=4).load_state_dict(state)


@settings(max_examples=30, deadline=None)
@given(case=cases(), at=st.floats(0, 1, exclude_max=True), weights=st.data())
def test_an_amendment_keeps_the_past_continues_every_source_and_is_exact_on_every_prefix(
    case, at, weights
):
    with tempfile.TemporaryDirectory() as tmp:
        before = MixSampler(case.spec(Path(tmp)))
    start = int(at * len(before))
    k = len(case.names)
    ints = weights.draw(st.lists(st.integers(0, 9), min_size=k, max_size=k).filter(any))
    after = before.amended(normalized(case.names, ints), at_block=start)
    old, new = located(before), located(after)
    assert all(np.array_equal(a[:start], b[:start]) for a, b in zip(old[:3], new[:3], strict=True))
    assert after.fingerprint(start) == before.fingerprint(start)
    assert_draws_continue(after)
    table = next(t for t in after.phases if t.start == start and "@" in t.name)
    counts = after.source_counts(np.arange(start, start + table.blocks + 1))
    counts -= after.source_counts([start])
    n = np.arange(table.blocks + 1)[:, None]
    assert np.all(np.abs(counts - np.array(table.targets) * n) < 1 + 1e-9)


# ---------------------------------------------------------------------------- the spec's batch size


def test_a_loader_must_step_by_the_spec_s_global_batch_size(stores, tmp_path):
    """A spec with global_batch_size counts start_step phases and skip_steps in its steps: a
    loader with another batch_size x world_size is refused, one with the same is accepted."""
    from mixer.mix.explain import explain_step
    from mixer.mix.grain import BatchSource
    from mixer.mix.loader import BatchIterator
    from mixer.mix.torch import MixedDataset, MixedIterableDataset

    later = {"name": "late", "start_step": 30, "weights": {"math": 1.0}}
    sampler = MixSampler(steps_spec(stores, [later]))  # global_batch_size 4
    wrong = "= 2 blocks per step, but the spec's global_batch_size is 4: its start_step"
    for make in (
        lambda: BatchIterator(sampler, batch_size=2),
        lambda: BatchIterator(sampler, batch_size=1, rank=1, world_size=2),
        lambda: MixedIterableDataset(sampler, batch_size=2),
        lambda: MixedDataset(sampler, batch_size=2),
        lambda: BatchSource(sampler, batch_size=2),
        lambda: next(sampler.batches(2)),
        lambda: explain_step(sampler, 0, 2),
    ):
        with pytest.raises(MixerError, match=wrong) as info:
            make()
        assert "\n" not in str(info.value)
    it = BatchIterator(sampler, batch_size=2, rank=1, world_size=2)
    steps = {b["step"]: b["source"] for b in it}
    assert set(steps[30].tolist()) == {sampler.source_names.index("math")}  # the phase's step
    assert set(steps[29].tolist()) != {sampler.source_names.index("math")}
    MixedDataset(sampler, batch_size=4)
    assert len(explain_step(sampler, 30, 4)) == 4
    by_tokens = steps_spec(stores).to_dict()
    del by_tokens["steps"], by_tokens["global_batch_size"]
    by_tokens["total_tokens"] = 50 * 4 * 8
    free = MixSampler(MixSpec.from_dict(by_tokens))  # no global_batch_size: any size goes
    assert len(BatchIterator(free, batch_size=3)) == 200 // 3


def test_the_hf_trainer_must_step_by_the_spec_s_global_batch_size(stores, tmp_path):
    pytest.importorskip("transformers")
    from test_hf import args, model

    from mixer.mix.hf import MixedTrainDataset, MixedTrainer

    dataset = MixedTrainDataset(MixSampler(steps_spec(stores)))  # global_batch_size 4
    for kw, ok in (
        ({"per_device_train_batch_size": 4}, True),
        ({"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}, True),
        ({"per_device_train_batch_size": 2}, False),
        ({"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}, False),
    ):
        trainer = MixedTrainer(model=model(), args=args(tmp_path, **kw), train_dataset=dataset)
        if ok:
            trainer.get_train_dataloader()
            continue
        with pytest.raises(MixerError, match="blocks per step, but the spec's global_batch_size"):
            trainer.get_train_dataloader()
