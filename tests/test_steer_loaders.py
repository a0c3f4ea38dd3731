"""set_weights through torchdata's StatefulDataLoader (both datasets, 0/2/3 workers): exact
while no worker holds a copy, carried in the state torchdata collects from the workers, refused
once workers run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_sampler import make_store, spec_for

from mixer.errors import MixerError
from mixer.mix.loader import BatchIterator
from mixer.mix.sampler import MixSampler

torch = pytest.importorskip("torch")
stateful = pytest.importorskip("torchdata.stateful_dataloader")

from mixer.mix.torch import MixedDataset, MixedIterableDataset, stream_state  # noqa: E402

FIRST = {"a": 0.25, "b": 0.75}  # from step 5
SECOND = {"a": 1.0}  # from step 12, set on the resumed loader


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    root = tmp_path_factory.mktemp("steer_loaders")
    stores = {"a": make_store(root / "a", 700, seed=1), "b": make_store(root / "b", 200, seed=2)}
    return spec_for(stores, {"a": 0.75, "b": 0.25}, seq_len=8, blocks=100)


def reference(spec, *changes) -> list[bytes]:
    """Each global step's tokens (G = 4) of the uninterrupted run with the changes applied."""
    sampler = MixSampler(spec)
    for weights, step in changes:
        sampler = sampler.amended(weights, step * 4)
    return [b["tokens"].astype(np.int64).tobytes() for b in BatchIterator(sampler, 4)]


def tokens(batch) -> bytes:
    return batch["tokens"].numpy().astype(np.int64).tobytes()


_LOADERS: list = []


@pytest.fixture(autouse=True)
def shut_down_workers():
    """Stop each test's DataLoader workers when it ends: left to the garbage collector, their
    shutdown ran inside later tests and waited out torch's 5 s join timeout per worker."""
    yield
    for loader in _LOADERS:
        stop(loader)
    _LOADERS.clear()


def stop(loader) -> None:
    """Shut down `loader`'s workers now (torchdata keeps its iterator as `_iterator`)."""
    if (iterator := getattr(loader, "_iterator", None)) is not None and hasattr(
        iterator, "_shutdown_workers"
    ):
        iterator._shutdown_workers()


def make(spec, kind: str, workers: int):
    if kind == "iterable":
        dataset = MixedIterableDataset(MixSampler(spec), batch_size=4)
        loader = stateful.StatefulDataLoader(dataset, batch_size=None, num_workers=workers)
    else:
        dataset = MixedDataset(MixSampler(spec), batch_size=4)
        loader = stateful.StatefulDataLoader(dataset, batch_size=4, num_workers=workers)
    _LOADERS.append(loader)
    return dataset, loader


@pytest.mark.parametrize("workers", [0, 2, 3])
@pytest.mark.parametrize("kind", ["iterable", "map"])
def test_set_weights_before_the_workers_start_is_exact_and_resumes_from_the_state(
    spec, kind, workers
):
    expected = reference(spec, (FIRST, 5))
    dataset, loader = make(spec, kind, workers)
    dataset.set_weights(FIRST, at_step=5)
    seen = [tokens(b) for _, b in zip(range(7), loader, strict=False)]
    state = json.loads(json.dumps(loader.state_dict()))
    stop(loader)
    fresh_dataset, fresh = make(spec, kind, workers)  # the original spec, unsteered
    fresh.load_state_dict(state)
    seen += [tokens(b) for b in fresh]
    assert seen == expected
    if kind == "iterable":
        steering = stream_state(state)["steering"]
        assert steering["amendments"] == [{"at_block": 20, "weights": FIRST}]


@pytest.mark.parametrize("workers", [0, 2, 3])
@pytest.mark.parametrize("kind", ["iterable", "map"])
def test_set_weights_on_a_resumed_loader_before_it_starts_joins_the_saved_steering(
    spec, kind, workers
):
    dataset, loader = make(spec, kind, workers)
    dataset.set_weights(FIRST, at_step=5)
    seen = [tokens(b) for _, b in zip(range(7), loader, strict=False)]
    state = loader.state_dict()
    stop(loader)
    resumed_dataset, resumed = make(spec, kind, workers)
    resumed.load_state_dict(state)
    resumed_dataset.set_weights(SECOND, at_step=12)  # loaded into each worker's copy after it
    seen += [tokens(b) for _, b in zip(range(8), resumed, strict=False)]
    again = resumed.state_dict()
    stop(resumed)
    last_dataset, last = make(spec, kind, workers)
    last.load_state_dict(again)
    seen += [tokens(b) for b in last]
    assert seen == reference(spec, (FIRST, 5), (SECOND, 12))
    # a change before the resume point is refused when the state is loaded into the copy
    _, late = make(spec, kind, workers)
    late.load_state_dict(state)
    late.dataset.set_weights(SECOND, at_step=6)
    with pytest.raises(MixerError, match="lies before the loaded state's step 7"):
        next(iter(late))


@pytest.mark.parametrize("kind", ["iterable", "map"])
def test_set_weights_once_workers_hold_copies_is_refused_in_one_line(spec, kind):
    dataset, loader = make(spec, kind, 2)
    it = iter(loader)
    next(it)
    with pytest.raises(MixerError) as info:
        dataset.set_weights(FIRST, at_step=20)
    message = str(info.value)
    assert message.startswith("set_weights: DataLoader workers may hold copies of this dataset")
    assert "use MixedDataLoader" in message and "\n" not in message
    # asking for the state starts the workers too
    dataset, loader = make(spec, kind, 3)
    loader.state_dict()
    with pytest.raises(MixerError, match="may hold copies"):
        dataset.set_weights(FIRST, at_step=20)


@pytest.mark.parametrize("kind", ["iterable", "map"])
def test_without_workers_set_weights_is_live_from_the_next_step(spec, kind):
    expected = reference(spec, (FIRST, 6))
    dataset, loader = make(spec, kind, 0)
    seen = []
    for batch in loader:
        seen.append(tokens(batch))
        if len(seen) == 6:  # steps 0-5 handed out (and fetched): 6 is the next
            with pytest.raises(MixerError, match="is not in \\[6, 25\\)"):
                dataset.set_weights(FIRST, at_step=5)
            dataset.set_weights(FIRST, at_step=6)
        if len(seen) == 9:
            state = loader.state_dict()
            break
    _, fresh = make(spec, kind, 0)
    fresh.load_state_dict(state)
    seen += [tokens(b) for b in fresh]
    assert seen == expected


def test_a_map_style_dataset_refuses_an_online_policy(spec):
    from mixer.mix.policy import ExcessLossPolicy

    dataset = MixedDataset(MixSampler(spec), batch_size=4)
    with pytest.raises(MixerError, match="an online policy needs a loader that hands out"):
        dataset.set_policy(ExcessLossPolicy(("a", "b"), {"a": 1.0}, every=2))


def test_grain_s_batch_source_refuses_set_weights_and_a_policy(spec):
    from mixer.mix.grain import BatchSource

    source = BatchSource(MixSampler(spec), batch_size=4)
    with pytest.raises(MixerError, match="build the source from an amended sampler"):
        source.set_weights({"a": 1.0}, at_step=3)
    with pytest.raises(MixerError, match="use BatchIterator with report_loss"):
        source.set_policy(None)
