from __future__ import annotations

import dataclasses
import json
import pickle
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixer.errors import SpecError
from mixer.mix.sampler import MAX_PERIOD, MixSampler, _verify_period, build_period, rationalize
from mixer.mix.spec import MixSpec
from mixer.store.reader import TokenStore
from mixer.store.writer import write_store

GOLDEN = Path(__file__).parent / "golden" / "locate_first_1000.json"


def make_store(root: Path, num_tokens: int, *, seed: int = 0, sha: str = "0" * 64, **kw) -> str:
    """A store of exactly `num_tokens` tokens: random documents ending in EOS (id 0)."""
    rng = np.random.default_rng(seed)
    docs, left = [], num_tokens
    while left:
        n = min(left, int(rng.integers(1, 40)))
        docs.append(np.append(rng.integers(1, 1000, n - 1), 0))
        left -= n
    write_store(root, docs, vocab_size=1000, tokenizer_sha256=sha, eos_id=0, **kw)
    return str(root)


def spec_for(
    stores: dict[str, str],
    weights: dict[str, float],
    *,
    seq_len: int,
    blocks: int,
    phases=(),
    seed: int = 0,
    **source_extra,
) -> MixSpec:
    sources = [
        {"name": name, "store": store, "weight": weights[name], **source_extra.get(name, {})}
        for name, store in stores.items()
    ]
    return MixSpec.from_dict(
        {
            "seq_len": seq_len,
            "seed": seed,
            "total_tokens": blocks * seq_len,
            "source": sources,
            "phase": list(phases),
        }
    )


# ---------------------------------------------------------------------------- random mixes


@dataclass
class Case:
    seq_len: int
    store_blocks: list[int]
    base: list[int]  # integer weights, normalized below
    phases: list[tuple[int, list[int]]]  # (blocks, integer weights)
    base_blocks: int
    seed: int

    @property
    def names(self) -> list[str]:
        return [f"s{k}" for k in range(len(self.store_blocks))]

    def spec(self, root: Path) -> MixSpec:
        stores = {
            name: make_store(root / name, n * self.seq_len + 1, seed=k, docs_per_shard=3)
            for k, (name, n) in enumerate(zip(self.names, self.store_blocks, strict=True))
        }
        phases = [
            {"name": f"p{q}", "blocks": blocks, "weights": normalized(self.names, w)}
            for q, (blocks, w) in enumerate(self.phases)
        ]
        total = self.base_blocks + sum(b for b, _ in self.phases)
        return spec_for(
            stores,
            normalized(self.names, self.base),
            seq_len=self.seq_len,
            blocks=total,
            phases=phases,
            seed=self.seed,
        )


def normalized(names: list[str], ints: list[int]) -> dict[str, float]:
    return {name: i / sum(ints) for name, i in zip(names, ints, strict=True)}


@st.composite
def cases(draw) -> Case:
    k = draw(st.integers(1, 5))
    int_weights = st.lists(st.integers(0, 12), min_size=k, max_size=k).filter(any)
    return Case(
        seq_len=draw(st.integers(1, 9)),
        store_blocks=draw(st.lists(st.integers(1, 40), min_size=k, max_size=k)),
        base=draw(int_weights),
        phases=draw(st.lists(st.tuples(st.integers(1, 300), int_weights), max_size=2)),
        base_blocks=draw(st.integers(1, 900)),
        seed=draw(st.integers(0, 2**32)),
    )


def open_case(case: Case, root: Path) -> MixSampler:
    return MixSampler(case.spec(root))


def located(sampler: MixSampler):
    return sampler.locate_many(np.arange(len(sampler)))


@settings(max_examples=60, deadline=None)
@given(case=cases())
def test_every_prefix_of_every_phase_is_within_one_block_of_its_weight(case):
    with tempfile.TemporaryDirectory() as tmp:
        sampler = open_case(case, Path(tmp))
    refs = located(sampler)
    for table in sampler.phases:
        sources = refs.source[table.start : table.start + table.blocks]
        counts = np.cumsum(sources[:, None] == np.arange(len(sampler.source_names)), axis=0)
        n = np.arange(1, table.blocks + 1)[:, None]
        targets = np.array(table.targets)
        assert np.all(np.abs(counts - targets * n) < 1 + 1e-9)
        assert table.used_weights == pytest.approx(table.targets, abs=1e-15)


@settings(max_examples=60, deadline=None)
@given(case=cases())
def test_each_epoch_uses_every_block_once_in_a_fresh_order(case):
    with tempfile.TemporaryDirectory() as tmp:
        sampler = open_case(case, Path(tmp))
    refs = located(sampler)
    for s, n in enumerate(sampler.source_blocks):
        mine = refs.source == s
        blocks, epochs = refs.block[mine], refs.epoch[mine]
        assert len(blocks) == sampler.draws[s]
        assert np.array_equal(epochs, np.arange(len(blocks)) // n)  # j-th draw is in epoch j // n
        orders = [blocks[e * n : (e + 1) * n] for e in range(-(-len(blocks) // n))]
        for order in orders[:-1]:
            assert np.array_equal(np.sort(order), np.arange(n))
        if orders:
            assert len(np.unique(orders[-1])) == len(orders[-1])  # a partial epoch never repeats
        if n >= 16:
            complete = [tuple(o) for o in orders if len(o) == n]
            assert len(set(complete)) == len(complete)


@settings(max_examples=40, deadline=None)
@given(case=cases())
def test_locate_is_deterministic_and_matches_its_vectorized_and_inverse_forms(case):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sampler = open_case(case, root)
        again = MixSampler(case.spec(root))  # stores rebuilt from the same manifests
    refs = located(sampler)
    assert all(np.array_equal(a, b) for a, b in zip(refs, located(again), strict=True))
    for i in range(0, len(sampler), 7):
        ref = sampler.locate(i)
        assert ref.source == sampler.source_names[refs.source[i]]
        assert (ref.block, ref.epoch) == (refs.block[i], refs.epoch[i])
        assert ref.phase == sampler.phase_names[refs.phase[i]]
    for s, name in enumerate(sampler.source_names):
        where = np.flatnonzero(refs.source == s)
        assert [sampler.index_of_draw(name, j) for j in range(len(where))] == where.tolist()
    stops = np.arange(len(sampler) + 1)
    onehot = refs.source[:, None] == np.arange(len(sampler.source_names))
    expected = np.vstack([np.zeros((1, onehot.shape[1]), int), np.cumsum(onehot, axis=0)])
    assert np.array_equal(sampler.source_counts(stops), expected)


@settings(max_examples=40, deadline=None)
@given(case=cases(), limit=st.integers(1, 30))
def test_max_repeats_rejects_exactly_the_plans_that_need_more_epochs(case, limit):
    with tempfile.TemporaryDirectory() as tmp:
        spec = case.spec(Path(tmp))
        unlimited = MixSampler(spec)
        needed = -(-unlimited.draws[0] // unlimited.source_blocks[0])
        first = dataclasses.replace(spec.sources[0], max_repeats=limit)
        limited = dataclasses.replace(spec, sources=(first, *spec.sources[1:]))
        if needed > limit:
            with pytest.raises(SpecError, match=f"so it needs {needed};"):
                MixSampler(limited)
        else:
            assert MixSampler(limited).draws == unlimited.draws


# ---------------------------------------------------------------------------- the period


@settings(max_examples=100, deadline=None)
@given(counts=st.lists(st.integers(0, 3000), min_size=1, max_size=8).filter(any))
def test_period_holds_each_source_its_count_and_every_prefix_within_one(counts):
    source_of = build_period(tuple(counts))
    period = sum(counts)
    assert np.array_equal(np.bincount(source_of, minlength=len(counts)), counts)
    onehot = source_of[:, None] == np.arange(len(counts))
    prefix = np.cumsum(onehot, axis=0) * period - np.outer(np.arange(1, period + 1), counts)
    assert np.abs(prefix).max() < period


def test_period_check_rejects_a_schedule_that_breaks_the_bound():
    with pytest.raises(AssertionError):
        _verify_period(np.array([0, 0, 1, 1]), (2, 2))
    _verify_period(np.array([0, 1, 0, 1]), (2, 2))


def megatron_greedy(weights: np.ndarray, n: int) -> np.ndarray:
    """Megatron-LM's build_blending_indices: pick the largest `w * max(i, 1) - count`."""
    count, out = np.zeros(len(weights)), []
    for i in range(n):
        s = int(np.argmax(weights * max(i, 1) - count))
        count[s] += 1
        out.append(s)
    return np.array(out)


def max_lag(sources: np.ndarray, weights: np.ndarray) -> float:
    counts = np.cumsum(sources[:, None] == np.arange(len(weights)), axis=0)
    return float(np.abs(counts - np.outer(np.arange(1, len(sources) + 1), weights)).max())


def test_four_sources_stay_within_one_where_megatron_greedy_does_not():
    counts = (1, 2, 30, 2)
    weights = np.array(counts) / sum(counts)
    assert max_lag(np.tile(build_period(counts), 3), weights) < 1
    assert max_lag(megatron_greedy(weights, 3 * sum(counts)), weights) > 1.4


@pytest.mark.parametrize(
    ("weights", "counts"),
    [
        ([0.98, 0.02], (49, 1)),
        ([0.001, 0.999], (1, 999)),
        ([1 / 1024, 1 - 1 / 1024], (1, 1023)),
        ([1 / 3, 1 / 3, 1 / 3], (1, 1, 1)),
        ([0.3333333333, 0.3333333333, 0.3333333334], (1, 1, 1)),
        ([1e-6, 1 - 1e-6], (1, 999_999)),
        ([0.5, 0.0, 0.5], (1, 0, 1)),
    ],
)
def test_user_weights_are_recovered_as_exact_fractions(weights, counts):
    assert rationalize(weights) == counts


def test_weights_without_a_small_common_denominator_round_by_largest_remainder():
    weights = [0.2731942, 0.1268058, 0.6]  # lcm of the exact fractions is 5e6 > MAX_PERIOD
    counts = rationalize(weights)
    assert sum(counts) == MAX_PERIOD
    assert all(
        abs(Fraction(c, MAX_PERIOD) - Fraction(w)) < Fraction(1, MAX_PERIOD)
        for c, w in zip(counts, weights, strict=True)
    )


def test_a_weight_below_the_period_resolution_is_an_error():
    with pytest.raises(SpecError, match=r"phase 'x'.weights: weight 1e-08 of source #0 is below"):
        rationalize([1e-8, 0.2731942, 1 - 1e-8 - 0.2731942], "phase 'x'.weights")


# ---------------------------------------------------------------------------- tokens


@pytest.fixture(scope="module")
def mix(tmp_path_factory) -> MixSampler:
    root = tmp_path_factory.mktemp("mix")
    stores = {
        "web": make_store(root / "web", 2000, seed=1, docs_per_shard=5),
        "code": make_store(root / "code", 700, seed=2, docs_per_shard=4),
        "math": make_store(root / "math", 150, seed=3),
    }
    anneal = {"name": "anneal", "blocks": 60, "weights": {"math": 0.5, "code": 0.5}}
    spec = spec_for(
        stores, {"web": 0.6, "code": 0.3, "math": 0.1}, seq_len=16, blocks=300, phases=[anneal]
    )
    return MixSampler(spec)


def test_block_k_is_the_stream_slice_with_one_token_overlap(mix):
    crossed = 0
    for i in range(len(mix)):
        ref = mix.locate(i)
        store = mix.stores[mix.source_names.index(ref.source)]
        start = ref.block * 16
        expected = store.tokens(start, start + 17)
        assert mix[i].dtype == store.dtype
        assert np.array_equal(mix[i], expected)
        shard = np.searchsorted(store.token_offsets, start, side="right")
        crossed += start + 17 > store.token_offsets[shard]
    assert crossed > 0  # some blocks span two shards


def test_read_many_matches_single_reads_and_reports_sources(mix):
    idx = np.array([5, 0, 299, 17, 17])
    blocks = mix.read_many(idx)
    for row, i in enumerate(idx):
        assert np.array_equal(blocks.tokens[row], mix[i])
        assert mix.source_names[blocks.sources[row]] == mix.locate(i).source
    assert blocks.positions is None


def test_positions_restart_at_each_document_start_inside_the_block(mix):
    for i in range(0, len(mix), 3):
        tokens, positions = mix.get(i, positions=True)
        expected, p = [], 0
        for t, token in enumerate(tokens):
            expected.append(p)
            p = 0 if token == 0 else p + 1  # EOS (0) ends a document; the next starts at 0
            del t
        assert positions.tolist() == expected
        assert np.array_equal(mix.read_many([i], positions=True).positions[0], positions)


def test_batches_are_contiguous_global_index_ranges(mix):
    batches = list(mix.batches(4))
    assert len(batches) == len(mix) // 4
    for g, batch in enumerate(batches):
        assert batch.shape == (4, 17)
        assert np.array_equal(batch, np.stack([mix[i] for i in range(g * 4, g * 4 + 4)]))


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 6), world=st.integers(1, 4), start=st.integers(0, 12))
def test_rank_slices_union_to_the_global_batch_and_resume_matches(mix, batch, world, start):
    width = batch * world
    global_batches = list(mix.batches(width))
    per_rank = [list(mix.batches(batch, r, world, start_step=start)) for r in range(world)]
    assert all(len(p) == max(0, len(global_batches) - start) for p in per_rank)
    for step, parts in enumerate(zip(*per_rank, strict=True), start=start):
        assert np.array_equal(np.concatenate(parts), global_batches[step])


@settings(max_examples=20, deadline=None)
@given(split=st.sampled_from([(12, 1), (6, 2), (4, 3), (3, 4), (1, 12)]), start=st.integers(0, 24))
def test_any_world_size_with_the_same_global_batch_gives_the_same_stream(mix, split, start):
    batch, world = split
    reference = list(mix.batches(12, start_step=start))
    resumed = zip(
        *(mix.batches(batch, r, world, start_step=start) for r in range(world)), strict=True
    )
    assert all(
        np.array_equal(np.concatenate(parts), ref)
        for parts, ref in zip(resumed, reference, strict=True)
    )


def test_pickling_reopens_the_stores_instead_of_copying_them(mix):
    data = pickle.dumps(mix)
    assert len(data) < 10_000  # spec and paths, not tokens
    clone = pickle.loads(data)
    assert all(clone.locate(i) == mix.locate(i) for i in range(len(mix)))
    assert np.array_equal(next(clone.batches(8)), next(mix.batches(8)))


def test_negative_and_out_of_range_indices(mix):
    assert mix.locate(-1) == mix.locate(len(mix) - 1)
    for bad in (len(mix), -len(mix) - 1):
        with pytest.raises(IndexError):
            mix.locate(bad)
    with pytest.raises(IndexError):
        mix.locate_many([0, len(mix)])


@pytest.mark.parametrize("tables_max", [16, 1])
@pytest.mark.parametrize("order", ["forward", "backward", "shuffled"])
def test_single_lookups_match_the_vectorized_reference_before_and_after_round_tables(
    tmp_path, monkeypatch, tables_max, order
):
    """`_locate` runs the round tables' rounds itself once built: every lookup equals
    `locate_many` (vectorized `permute`) and `sampler[i]` the store's slice, in the stores'
    common dtype, across epochs and phases, for sources with tables (n >= 256 blocks), without
    (n < 256: eight rounds) and spanning shards, in any order, and when the tables are evicted
    as they are used (tables_max 1): evicted tables are let go, so at most `tables_max` are in
    use."""
    from mixer.mix import permutation

    monkeypatch.setattr(permutation, "_TABLES_MAX", tables_max)
    monkeypatch.setattr(permutation, "_TABLES", [])
    monkeypatch.setattr(permutation, "_SEEN", {})
    rng = np.random.default_rng(5)
    docs = [np.append(rng.integers(1, 70_000, 9), 0) for _ in range(400)]
    stores = {
        "big": make_store(tmp_path / "big", 3001, seed=1),  # 750 blocks
        "wide": str(write_store(tmp_path / "wide", docs, vocab_size=70_000)),  # int32, 999
        "sharded": make_store(tmp_path / "sharded", 1301, seed=2, docs_per_shard=9),  # 325
        "tiny": make_store(tmp_path / "tiny", 401, seed=3),  # 100 blocks: eight rounds
    }
    weights = {"big": 0.4, "wide": 0.3, "sharded": 0.2, "tiny": 0.1}
    anneal = {"name": "anneal", "blocks": 2000, "weights": {"big": 0.5, "tiny": 0.5}}
    mix = MixSampler(spec_for(stores, weights, seq_len=4, blocks=9000, phases=[anneal], seed=3))
    assert mix.stores[0].dtype == np.uint16 != mix.dtype  # "big" is cast, "wide" copied
    refs = mix.locate_many(np.arange(len(mix)))
    assert refs.epoch.max() >= 3
    indices = np.arange(len(mix))
    if order == "backward":
        indices = indices[::-1]
    elif order == "shuffled":
        indices = rng.permutation(indices)
    for i in indices.tolist():
        ref = mix.locate(i)
        assert ref.source == mix.source_names[refs.source[i]]
        assert (ref.block, ref.epoch) == (refs.block[i], refs.epoch[i])
        assert ref.phase == mix.phase_names[refs.phase[i]]
        if i % 5 == 0:
            store = mix.stores[refs.source[i]]
            block = mix[i]
            assert block.dtype == mix.dtype and block.flags.writeable
            assert np.array_equal(block, store.tokens(ref.block * 4, ref.block * 4 + 5))
    in_use = [c[2] for c in mix._perms if c[2] is not None and c[2].rounds is not None]
    assert len(in_use) <= tables_max and (in_use or tables_max == 1)
    assert len(permutation._TABLES) <= tables_max


# ---------------------------------------------------------------------------- store checks


def test_stores_with_different_tokenizers_are_rejected(tmp_path):
    stores = {
        "a": make_store(tmp_path / "a", 100, sha="a" * 64),
        "b": make_store(tmp_path / "b", 100, sha="b" * 64),
    }
    spec = spec_for(stores, {"a": 0.5, "b": 0.5}, seq_len=4, blocks=10)
    with pytest.raises(SpecError, match=r"source 'b'.store: tokenizer sha256 bbbbbbbbbbbb…"):
        MixSampler(spec)


def test_a_store_too_small_for_one_block_is_rejected(tmp_path):
    stores = {"a": make_store(tmp_path / "a", 100), "b": make_store(tmp_path / "b", 8)}
    spec = spec_for(stores, {"a": 0.5, "b": 0.5}, seq_len=8, blocks=10)
    with pytest.raises(SpecError) as info:
        MixSampler(spec)
    assert str(info.value) == (
        "source 'b'.store: 8 tokens is too small for one block of seq_len 8 (needs 9)"
    )


def test_max_repeats_error_says_the_epochs_needed_and_the_largest_fraction_that_fits(tmp_path):
    # b has 10 blocks and gets 0.25 of 1000 blocks = 250 draws = 25 epochs
    stores = {"a": make_store(tmp_path / "a", 4001), "b": make_store(tmp_path / "b", 41)}
    weights = {"a": 0.75, "b": 0.25}
    spec = spec_for(stores, weights, seq_len=4, blocks=1000, b={"max_repeats": 20})
    with pytest.raises(SpecError) as info:
        MixSampler(spec)
    assert str(info.value) == (
        "source 'b'.max_repeats: 20, but the plan draws 250 blocks of its 10, 25.0 epochs, "
        "so it needs 25; the largest fraction of the stream that fits is 0.2"
    )
    MixSampler(spec_for(stores, weights, seq_len=4, blocks=1000, b={"max_repeats": 25}))


def test_injected_stores_replace_opening_by_path(tmp_path):
    store = TokenStore.open(make_store(tmp_path / "real", 400))
    spec = spec_for({"a": "/does/not/exist"}, {"a": 1.0}, seq_len=4, blocks=50)
    sampler = MixSampler(spec, stores={"a": store})
    assert sampler.source_blocks == (99,)


def test_a_trillion_token_plan_opens_without_per_block_state(tmp_path):
    stores = {"web": make_store(tmp_path / "web", 4097), "pp": make_store(tmp_path / "pp", 513)}
    spec = spec_for(stores, {"web": 0.98, "pp": 0.02}, seq_len=4, blocks=250_000_000_000)
    sampler = MixSampler(spec)
    table_bytes = sum(
        t.source_of.nbytes + t.rank_of.nbytes + t.slots.nbytes for t in sampler.phases
    )
    assert table_bytes < 10_000  # one period of 50 slots, not 250e9 entries
    last = len(sampler) - 1
    ref = sampler.locate(last)
    assert (
        ref.epoch
        == (sampler.draws[sampler.source_names.index(ref.source)] - 1)
        // (sampler.source_blocks[sampler.source_names.index(ref.source)])
    )
    assert sampler.draws == (245_000_000_000, 5_000_000_000)
    assert sampler.index_of_draw("pp", sampler.draws[1] - 1) <= last


# ---------------------------------------------------------------------------- golden


def golden_sampler(root: Path) -> MixSampler:
    sizes = {"web": 97 * 16 + 1, "code": 40 * 16 + 5, "math": 13 * 16 + 1, "pp": 5 * 16 + 3}
    stores = {name: make_store(root / name, n, seed=k) for k, (name, n) in enumerate(sizes.items())}
    weights = {"web": 0.5, "code": 0.3, "math": 0.15, "pp": 0.05}
    anneal = {"name": "anneal", "blocks": 500, "weights": {"math": 0.6, "pp": 0.4}}
    spec = spec_for(stores, weights, seq_len=16, blocks=1200, phases=[anneal], seed=1234)
    return MixSampler(spec)


def test_first_1000_locations_match_the_golden_file(tmp_path):
    """A change to this stream is a breaking change: regenerate only on purpose (see below)."""
    sampler = golden_sampler(tmp_path)
    actual = [list(sampler.locate(i)) for i in range(1000)]
    assert actual == json.loads(GOLDEN.read_text())


if __name__ == "__main__":  # python tests/test_sampler.py regenerates the golden file
    with tempfile.TemporaryDirectory() as tmp:
        sampler = golden_sampler(Path(tmp))
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps([list(sampler.locate(i)) for i in range(1000)]) + "\n")


def test_a_store_that_fails_cheap_checks_is_refused_at_open_and_checksums_on_request(tmp_path):
    from mixer.errors import StoreError

    stores = {"a": make_store(tmp_path / "a", 5000), "b": make_store(tmp_path / "b", 3000, seed=1)}
    spec = spec_for(stores, {"a": 0.5, "b": 0.5}, seq_len=16, blocks=100)
    MixSampler(spec, verify=True)  # intact

    data = bytearray((tmp_path / "b" / "shard-00000.bin").read_bytes())
    data[10] ^= 0xFF  # same size: only a checksum can tell
    (tmp_path / "b" / "shard-00000.bin").write_bytes(bytes(data))
    MixSampler(spec)  # the cheap checks cannot see a flipped byte
    with pytest.raises(StoreError, match="shard-00000.bin: sha256"):
        MixSampler(spec, verify=True)

    (tmp_path / "b" / "shard-00000.bin").write_bytes(bytes(data[:-2]))  # truncated
    with pytest.raises(StoreError, match="shard-00000"):
        MixSampler(spec)
