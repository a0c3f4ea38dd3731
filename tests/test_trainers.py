"""Exact resume through the loaders trainers use (torchdata StatefulDataLoader, MixedDataLoader),
and the GPU-step extras (cu_seqlens, max_seqlen, loss_mask, int32, pinned memory)."""

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

from mixer.mix.torch import (  # noqa: E402
    MixedDataLoader,
    MixedDataset,
    MixedIterableDataset,
    stream_state,
)


@pytest.fixture(scope="module")
def sampler(tmp_path_factory) -> MixSampler:
    root = tmp_path_factory.mktemp("trainers")
    stores = {"a": make_store(root / "a", 700, seed=1), "b": make_store(root / "b", 200, seed=2)}
    return MixSampler(spec_for(stores, {"a": 0.75, "b": 0.25}, seq_len=8, blocks=100))


def reference(sampler, batch_size=4):
    return [b["index"].tolist() for b in BatchIterator(sampler, batch_size)]


def ids(batch) -> list[int]:
    return batch["index"].tolist()


@pytest.mark.parametrize("num_workers", [0, 2, 3])
@pytest.mark.parametrize("stop", [1, 4, 7])
def test_stateful_dataloader_over_the_iterable_dataset_resumes_exactly(sampler, num_workers, stop):
    expected = reference(sampler)
    loader = stateful.StatefulDataLoader(
        MixedIterableDataset(sampler, batch_size=4), batch_size=None, num_workers=num_workers
    )
    seen = [ids(b) for _, b in zip(range(stop), loader, strict=False)]
    state = loader.state_dict()
    del loader
    fresh = stateful.StatefulDataLoader(
        MixedIterableDataset(sampler, batch_size=4), batch_size=None, num_workers=num_workers
    )
    fresh.load_state_dict(state)
    seen += [ids(b) for b in fresh]
    assert seen == expected
    # the whole stream's state, for any other loader or world size
    assert stream_state(state)["step"] == stop
    again = MixedDataLoader(MixedIterableDataset(sampler, batch_size=2, world_size=2), 1)
    again.load_state_dict(stream_state(state))
    assert ids(next(iter(again))) == expected[stop][:2]


def test_a_worker_state_loaded_under_other_num_workers_is_refused(sampler):
    loader = stateful.StatefulDataLoader(
        MixedIterableDataset(sampler, batch_size=4), batch_size=None, num_workers=2
    )
    for _ in zip(range(3), loader, strict=False):
        pass
    state = loader.state_dict()
    fresh = stateful.StatefulDataLoader(
        MixedIterableDataset(sampler, batch_size=4), batch_size=None, num_workers=3
    )
    fresh.load_state_dict(state)
    with pytest.raises(AssertionError):  # torchdata refuses it itself
        list(fresh)
    # our refusal when a worker copy gets another worker's state
    dataset = MixedIterableDataset(sampler, batch_size=4)
    dataset.load_state_dict({**stream_state(state), "worker": [1, 3]})
    with pytest.raises(MixerError, match="resume with num_workers=3, or load stream_state"):
        list(MixedDataLoader(dataset, num_workers=2))


@pytest.mark.parametrize("num_workers", [0, 2, 3])
def test_stateful_dataloader_over_the_map_style_dataset_resumes_exactly(sampler, num_workers):
    def make():
        return stateful.StatefulDataLoader(
            MixedDataset(sampler, batch_size=4), batch_size=4, num_workers=num_workers
        )

    expected = reference(sampler)
    loader = make()
    seen = [ids(b) for _, b in zip(range(5), loader, strict=False)]
    state = loader.state_dict()
    fresh = make()
    fresh.load_state_dict(state)
    seen += [ids(b) for b in fresh]
    assert seen == expected


@pytest.mark.parametrize("num_workers", [0, 1, 2, 3])
@pytest.mark.parametrize("prefetch_factor", [None, 1, 4])
def test_mixed_dataloader_resumes_exactly_with_any_workers_and_prefetch(
    sampler, num_workers, prefetch_factor
):
    if num_workers == 0 and prefetch_factor is not None:
        pytest.skip("prefetch needs workers")
    kw = {} if prefetch_factor is None else {"prefetch_factor": prefetch_factor}
    expected = reference(sampler)
    loader = MixedDataLoader(MixedIterableDataset(sampler, 4), num_workers=num_workers, **kw)
    seen = [ids(b) for _, b in zip(range(6), loader, strict=False)]
    state = json.loads(json.dumps(loader.state_dict()))
    fresh = MixedDataLoader(MixedIterableDataset(sampler, 4), num_workers=num_workers, **kw)
    fresh.load_state_dict(state)
    seen += [ids(b) for b in fresh]
    assert seen == expected


# ---------------------------------------------------------------------------- GPU-step extras


def brute_cu_seqlens(tokens: np.ndarray, eos: int) -> list[int]:
    """Document starts of x = tokens[:, :-1] flattened: each row start and after each EOS."""
    rows, width = tokens.shape
    seq_len = width - 1
    starts = []
    for r in range(rows):
        for j in range(seq_len):
            if j == 0 or tokens[r, j - 1] == eos:
                starts.append(r * seq_len + j)
    return starts + [rows * seq_len]


def test_cu_seqlens_max_seqlen_and_loss_mask_match_a_brute_force_reference(sampler):
    it = BatchIterator(sampler, batch_size=5, documents=True, loss_mask=True, int32=True)
    for batch in it:
        tokens = batch["tokens"]
        assert tokens.dtype == np.int32
        cu = batch["cu_seqlens"]
        assert cu.dtype == np.int32 and cu.ndim == 1
        assert cu.tolist() == brute_cu_seqlens(tokens, eos=0)
        assert batch["max_seqlen"] == int(np.diff(cu).max())
        # a target crosses a boundary exactly when its input is an EOS (the next one starts)
        assert np.array_equal(batch["loss_mask"], tokens[:, :-1] != 0)
        assert "positions" not in batch


def test_extras_agree_across_loaders(sampler):
    flags = {"documents": True, "loss_mask": True, "int32": True}
    plain = list(BatchIterator(sampler, 4, **flags))
    loader = MixedDataLoader(MixedIterableDataset(sampler, 4, **flags), num_workers=2)
    dataset = MixedDataset(sampler, 4, **flags)
    mapped = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=dataset.collate)
    for ref, a, b in zip(plain, loader, mapped, strict=True):
        for batch in (a, b):
            assert batch["tokens"].dtype == torch.int32
            assert batch["cu_seqlens"].dtype == torch.int32
            assert torch.equal(batch["tokens"], torch.from_numpy(ref["tokens"]))
            assert torch.equal(batch["cu_seqlens"], torch.from_numpy(ref["cu_seqlens"]))
            assert torch.equal(batch["loss_mask"], torch.from_numpy(ref["loss_mask"]))
            assert int(batch["max_seqlen"]) == ref["max_seqlen"]


def test_pin_memory_runs_with_the_extras(sampler):
    flags = {"documents": True, "loss_mask": True, "int32": True, "positions": True}
    loader = MixedDataLoader(MixedIterableDataset(sampler, 4, **flags), 2, pin_memory=True)
    batches = list(loader)
    assert len(batches) == 25
    assert batches[0]["tokens"].dtype == torch.int32
    assert batches[3]["cu_seqlens"][-1] == 4 * 8


def test_int32_is_refused_when_the_vocabulary_does_not_fit(tmp_path):
    from mixer.store.writer import write_store

    store = str(
        write_store(tmp_path / "big", [list(range(1, 300)) + [0]], vocab_size=2**32, eos_id=0)
    )
    s = MixSampler(spec_for({"big": store}, {"big": 1.0}, seq_len=8, blocks=20))
    with pytest.raises(MixerError, match="int32: vocabulary of 4294967296 ids does not fit"):
        BatchIterator(s, 2, int32=True)


# ---------------------------------------------------------------------------- BOS


def brute_bos(tokens: np.ndarray, eos: int, bos: int) -> tuple[list, list, list]:
    """inputs (EOS before a document -> BOS), their positions and cu_seqlens, row by row."""
    rows, width = tokens.shape
    seq_len = width - 1
    inputs, positions, cu = [], [], []
    for r in range(rows):
        row = [bos if t == eos else int(t) for t in tokens[r, :seq_len]]
        pos = []
        for j in range(seq_len):
            if j == 0 or tokens[r, j] == eos:
                cu.append(r * seq_len + j)
                pos.append(0)
            else:
                pos.append(pos[-1] + 1)
        inputs.append(row)
        positions.append(pos)
    return inputs, positions, cu + [rows * seq_len]


def test_bos_starts_every_document_inside_a_row_and_the_extras_follow_it(sampler):
    flags = {"documents": True, "positions": True, "int32": True, "bos_id": 999}
    plain = list(BatchIterator(sampler, 4, **flags))
    assert len(plain) == 25
    for batch in plain:
        tokens = batch["tokens"]
        inputs, positions, cu = brute_bos(tokens, eos=0, bos=999)
        assert batch["inputs"].tolist() == inputs and batch["inputs"].dtype == np.int32
        assert batch["positions"][:, :-1].tolist() == positions
        assert batch["cu_seqlens"].tolist() == cu
        assert batch["max_seqlen"] == int(np.diff(cu).max())
        # the targets keep EOS: a document's last token predicts EOS, its BOS its first token
        assert tokens.tolist() == [sampler[i].tolist() for i in batch["index"]]
    loader = MixedDataLoader(MixedIterableDataset(sampler, 4, **flags), num_workers=2)
    dataset = MixedDataset(sampler, 4, **flags)
    mapped = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=dataset.collate)
    for ref, a, b in zip(plain, loader, mapped, strict=True):
        for batch in (a, b):
            for key in ("tokens", "inputs", "positions", "cu_seqlens"):
                assert torch.equal(batch[key], torch.from_numpy(ref[key])), key
            assert batch["inputs"].dtype == torch.int32


def test_bos_refusals(sampler, tmp_path):
    from mixer.store.writer import write_store

    with pytest.raises(MixerError, match="the mask would be all True; leave loss_mask off"):
        BatchIterator(sampler, 4, loss_mask=True, bos_id=999)
    with pytest.raises(MixerError, match="bos_id: 0 is the stores' EOS id"):
        MixedIterableDataset(sampler, 4, bos_id=0)
    with pytest.raises(MixerError, match=r"bos_id: 1000 is outside the vocabulary \[0, 1000\)"):
        MixedDataset(sampler, 4, bos_id=1000)
    docs = [list(range(1, 30)) + [0]] * 5
    no_eos = str(write_store(tmp_path / "no_eos", docs, vocab_size=1000))
    s = MixSampler(spec_for({"x": no_eos}, {"x": 1.0}, seq_len=8, blocks=10))
    with pytest.raises(MixerError, match=r"bos_id: the stores' EOS ids are \['None'\]"):
        BatchIterator(s, 2, bos_id=999)
    # a store that says eos_id 0 but whose documents do not all end with it: refused on read
    bad = [list(range(1, 30)) + [0], list(range(1, 30))] * 3
    lying = str(write_store(tmp_path / "lying", bad, vocab_size=1000, eos_id=0))
    s = MixSampler(spec_for({"x": lying}, {"x": 1.0}, seq_len=8, blocks=20))
    with pytest.raises(MixerError, match="does not end with EOS 0, so its BOS would overwrite"):
        list(BatchIterator(s, 2, bos_id=999))


# ---------------------------------------------------------------------------- the worker path


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> MixSampler:
    """Stores of many small shards: most blocks of 33 tokens span two or more shards."""
    root = tmp_path_factory.mktemp("sharded")
    stores = {
        "a": make_store(root / "a", 3000, seed=3, docs_per_shard=7),
        "b": make_store(root / "b", 900, seed=4),
    }
    return MixSampler(spec_for(stores, {"a": 0.7, "b": 0.3}, seq_len=33, blocks=240))


def test_document_starts_match_a_brute_force_reference_inside_and_across_shards(sharded):
    blocks = sharded.read_many(np.arange(len(sharded)), positions=True)
    tokens = blocks.tokens
    starts = np.zeros(tokens.shape, dtype=bool)
    starts[:, 0] = True
    starts[:, 1:] = tokens[:, :-1] == 0  # a document starts after each EOS
    assert np.array_equal(blocks.starts, starts)
    for r in range(len(tokens)):
        pos = [0]
        for j in range(1, tokens.shape[1]):
            pos.append(0 if starts[r, j] else pos[-1] + 1)
        assert blocks.positions[r].tolist() == pos
    for i in range(0, len(sharded), 17):
        assert np.array_equal(sharded.get(i, positions=True)[1], blocks.positions[i])


FLAGS = [
    {},
    {"int32": True},
    {"positions": True},
    {"documents": True},
    {"documents": True, "loss_mask": True, "int32": True, "positions": True},
    {"bos_id": 999, "documents": True, "positions": True, "int32": True},
]


@pytest.fixture(scope="module")
def long_blocks(tmp_path_factory) -> MixSampler:
    """Blocks of 8192 tokens: a batch of 17 int64 rows is over a MiB, sent as shared memory."""
    root = tmp_path_factory.mktemp("long")
    stores = {"a": make_store(root / "a", 300_000, seed=5, docs_per_shard=4000)}
    return MixSampler(spec_for(stores, {"a": 1.0}, seq_len=8192, blocks=17 * 2 * 2))


def same_batches(expected: list[dict], got: list[dict]) -> None:
    assert len(got) == len(expected)
    for ref, batch in zip(expected, got, strict=True):
        assert list(batch) == list(ref)
        for key, value in ref.items():
            if not isinstance(value, np.ndarray):
                assert batch[key] == value and type(batch[key]) is type(value), key
                continue
            tensor = batch[key]
            want = torch.from_numpy(value).dtype
            if key in ("tokens", "inputs") and value.dtype != np.int32 or key == "source":
                want = torch.int64
            assert tensor.dtype == want and tensor.is_contiguous(), key
            assert np.array_equal(tensor.numpy(), value), key


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: "+".join(f) or "plain")
@pytest.mark.parametrize("pin", [False, True])
def test_mixed_dataloader_workers_hand_out_batchiterators_batches_exactly(sharded, flags, pin):
    """Workers send each batch packed in one buffer; what comes out must be BatchIterator's
    batch value for value: same keys in the same order, dtypes, shapes and bytes."""
    expected = list(BatchIterator(sharded, 4, rank=1, world_size=2, **flags))
    dataset = MixedIterableDataset(sharded, 4, rank=1, world_size=2, **flags)
    got = list(MixedDataLoader(dataset, num_workers=2, pin_memory=pin))
    assert len(got) == 30 and not got[0]["tokens"].is_shared()  # small: bytes through the pipe
    same_batches(expected, got)


@pytest.mark.parametrize("flags", [{}, {"documents": True, "loss_mask": True, "positions": True}])
def test_batches_over_a_mib_go_through_shared_memory_exactly(long_blocks, flags):
    expected = list(BatchIterator(long_blocks, 17, rank=1, world_size=2, **flags))
    dataset = MixedIterableDataset(long_blocks, 17, rank=1, world_size=2, **flags)
    got = list(MixedDataLoader(dataset, num_workers=2, pin_memory=True))
    assert len(got) == 2 and got[0]["tokens"].nbytes > 2**20
    assert got[0]["tokens"].is_shared()  # the shared-memory path, not bytes through the pipe
    same_batches(expected, got)


def test_mixed_dataloader_len_is_the_runs_batches_before_and_after_a_resume(sampler):
    """Lightning counts an epoch's batches with len(loader) and the batches fetched before the
    checkpoint; a length that shrank on resume would end the resumed epoch early."""
    loader = MixedDataLoader(MixedIterableDataset(sampler, 4), num_workers=2)
    assert len(loader) == 25
    for _ in zip(range(7), loader, strict=False):
        pass
    fresh = MixedDataLoader(MixedIterableDataset(sampler, 4), num_workers=2)
    fresh.load_state_dict(loader.state_dict())
    assert len(fresh) == 25 and len(fresh.dataset) == 18
    assert len(list(fresh)) == 18 and len(fresh) == 25
    skipping = MixedDataLoader(MixedIterableDataset(sampler, 4))
    skipping.skip_steps(2, 5)  # never handed out, so not counted
    assert len(skipping) == 22 == len(list(skipping))
    resumed = MixedDataLoader(MixedIterableDataset(sampler, 4))
    resumed.load_state_dict(skipping.state_dict())
    assert len(resumed) == 22
