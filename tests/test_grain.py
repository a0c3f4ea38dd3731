"""grain over whole rank batches: the same batches for any worker count, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
from test_sampler import make_store, spec_for

from mixer.mix.grain import BatchSource
from mixer.mix.loader import BatchIterator
from mixer.mix.sampler import MixSampler

grain = pytest.importorskip("grain.python")


@pytest.fixture(scope="module")
def sampler(tmp_path_factory) -> MixSampler:
    root = tmp_path_factory.mktemp("grain")
    stores = {"a": make_store(root / "a", 700, seed=1), "b": make_store(root / "b", 200, seed=2)}
    return MixSampler(spec_for(stores, {"a": 0.75, "b": 0.25}, seq_len=8, blocks=100))


def grain_loader(source: BatchSource, workers: int) -> grain.DataLoader:
    sampler = grain.IndexSampler(
        num_records=len(source),
        shard_options=grain.NoSharding(),
        shuffle=False,
        num_epochs=1,
        seed=0,
    )
    return grain.DataLoader(data_source=source, sampler=sampler, worker_count=workers)


@pytest.mark.parametrize("workers", [0, 2])
def test_grain_yields_the_rank_batches_in_order_and_resumes_exactly(sampler, workers):
    expected = [b["index"].tolist() for b in BatchIterator(sampler, 2, rank=1, world_size=2)]
    source = BatchSource(sampler, 2, rank=1, world_size=2, documents=True)
    it = iter(grain_loader(source, workers))
    seen = [next(it)["index"].tolist() for _ in range(7)]
    state = it.get_state()
    del it
    resumed = iter(grain_loader(source, workers))
    resumed.set_state(state)
    rest = list(resumed)
    seen += [b["index"].tolist() for b in rest]
    assert seen == expected
    assert rest[0]["cu_seqlens"][-1] == 2 * 8 and rest[0]["step"] == 7


def test_a_source_from_a_saved_step_continues_there(sampler):
    state = {"step": 5, "samples": 20, "global_batch_size": 4}
    ref = BatchIterator(sampler, 4)
    ref.load_state_dict(state)
    source = BatchSource(sampler, 4, start_step=5)
    assert len(source) == len(ref)
    assert np.array_equal(source[0]["tokens"], next(iter(ref))["tokens"])


def test_a_source_from_a_state_of_another_world_size_continues_at_the_next_sample(sampler):
    state = {"step": 3, "samples": 18, "global_batch_size": 6}
    source = BatchSource(sampler, 2, state=state, rank=0, world_size=2)
    assert source[0]["index"].tolist() == [18, 19] and source[0]["step"] == 3
