from __future__ import annotations

import numpy as np
import pytest
from test_sampler import make_store, spec_for

from mixer.errors import MixerError
from mixer.mix.sampler import MixSampler

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader  # noqa: E402

from mixer.mix.torch import MixedDataLoader, MixedDataset, MixedIterableDataset  # noqa: E402


@pytest.fixture(scope="module")
def sampler(tmp_path_factory) -> MixSampler:
    root = tmp_path_factory.mktemp("torch")
    stores = {"a": make_store(root / "a", 700, seed=1), "b": make_store(root / "b", 200, seed=2)}
    return MixSampler(spec_for(stores, {"a": 0.75, "b": 0.25}, seq_len=8, blocks=130))


def global_batches(sampler, batch_size):
    return [torch.from_numpy(b.astype(np.int64)) for b in sampler.batches(batch_size)]


def test_iterable_dataset_with_two_workers_yields_steps_in_order(sampler):
    expected = global_batches(sampler, 4)
    dataset = MixedIterableDataset(sampler, batch_size=4)
    batches = list(MixedDataLoader(dataset, num_workers=2))
    assert [b["step"] for b in batches] == list(range(len(expected)))
    for batch, ref in zip(batches, expected, strict=True):
        assert batch["tokens"].dtype == torch.int64
        assert torch.equal(batch["tokens"], ref)
        assert batch["source"].shape == (4,)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_stopped_at_step_k_resumes_at_step_k(sampler, num_workers):
    expected = global_batches(sampler, 4)
    loader = MixedDataLoader(MixedIterableDataset(sampler, batch_size=4), num_workers=num_workers)
    seen = []
    for batch in loader:
        seen.append(batch["tokens"])
        if len(seen) == 13:
            state = loader.state_dict()
            break
    assert state["step"] == 13
    fresh = MixedDataLoader(MixedIterableDataset(sampler, batch_size=4), num_workers=num_workers)
    fresh.load_state_dict(state)
    seen += [batch["tokens"] for batch in fresh]
    assert len(seen) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(seen, expected, strict=True))
    assert fresh.state_dict()["step"] == len(expected)


def test_rank_datasets_split_each_global_batch(sampler):
    expected = global_batches(sampler, 6)
    parts = [
        list(MixedDataLoader(MixedIterableDataset(sampler, 3, rank=r, world_size=2), num_workers=0))
        for r in range(2)
    ]
    for ref, (first, second) in zip(expected, zip(*parts, strict=True), strict=True):
        assert torch.equal(torch.cat([first["tokens"], second["tokens"]]), ref)


def test_map_style_dataset_batches_are_the_rank_slices(sampler):
    expected = global_batches(sampler, 6)
    for rank in range(3):
        dataset = MixedDataset(sampler, batch_size=2, rank=rank, world_size=3, positions=True)
        assert len(dataset) == len(expected) * 2
        loader = DataLoader(dataset, batch_size=2, shuffle=False, num_workers=2)
        for batch, ref in zip(loader, expected, strict=True):
            assert torch.equal(batch["tokens"], ref[2 * rank : 2 * rank + 2])
            assert batch["positions"].shape == batch["tokens"].shape
        single = dataset[0]
        assert torch.equal(single["tokens"], expected[0][2 * rank])
        assert single["source"].dim() == 0


def test_persistent_workers_are_refused(sampler):
    with pytest.raises(MixerError, match="persistent_workers"):
        MixedDataLoader(
            MixedIterableDataset(sampler, batch_size=4), num_workers=2, persistent_workers=True
        )


def test_a_plain_dataloader_with_workers_is_refused_and_without_them_tracks_its_state(sampler):
    dataset = MixedIterableDataset(sampler, batch_size=4)
    with pytest.raises(MixerError, match="a plain DataLoader with num_workers > 0 never sees"):
        next(iter(DataLoader(dataset, batch_size=None, num_workers=2)))
    plain = DataLoader(dataset, batch_size=None, num_workers=0)
    for _ in zip(range(3), plain, strict=False):
        pass
    assert dataset.state_dict()["step"] == 3


def test_in_order_false_is_refused(sampler):
    with pytest.raises(MixerError, match="in_order: False hands out batches out of step order"):
        MixedDataLoader(MixedIterableDataset(sampler, batch_size=4), num_workers=2, in_order=False)
