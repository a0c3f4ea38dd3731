import json
import struct

import numpy as np
import pytest

from mixer.errors import StoreError
from mixer.store.format import MANIFEST
from mixer.store.reader import TokenStore
from mixer.store.writer import write_store


def independent_idx_reader(path):
    """Parse a .idx from the published Megatron layout, sharing no code with mixer.store."""
    data = open(path, "rb").read()
    assert data[:9] == b"MMIDIDX\x00\x00"
    (version,) = struct.unpack("<Q", data[9:17])
    (code,) = struct.unpack("<B", data[17:18])
    (n_seq,) = struct.unpack("<Q", data[18:26])
    (n_doc,) = struct.unpack("<Q", data[26:34])
    pos = 34
    lengths = struct.unpack(f"<{n_seq}i", data[pos : pos + 4 * n_seq])
    pos += 4 * n_seq
    pointers = struct.unpack(f"<{n_seq}q", data[pos : pos + 8 * n_seq])
    pos += 8 * n_seq
    doc_idx = struct.unpack(f"<{n_doc}q", data[pos : pos + 8 * n_doc])
    pos += 8 * n_doc
    assert pos == len(data)
    return version, code, lengths, pointers, doc_idx


@pytest.fixture
def docs():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 1000, size=rng.integers(1, 40)) for _ in range(57)]


def test_idx_matches_published_megatron_layout(tmp_path, docs):
    write_store(tmp_path, docs, vocab_size=1000, docs_per_shard=20)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    first = manifest["shards"][0]
    version, code, lengths, pointers, doc_idx = independent_idx_reader(tmp_path / first["idx"])
    assert version == 1 and code == 8  # uint16
    assert list(lengths) == [len(d) for d in docs[:20]]
    assert list(pointers) == list(np.cumsum([0] + [2 * len(d) for d in docs[:19]]))
    assert list(doc_idx) == list(range(21))
    raw = np.fromfile(tmp_path / first["bin"], dtype="<u2")
    assert raw[pointers[3] // 2 : pointers[3] // 2 + lengths[3]].tolist() == docs[3].tolist()


def test_large_vocab_uses_megatron_int32_code(tmp_path):
    write_store(tmp_path, [[70000, 1, 2]], vocab_size=100_000)
    store = TokenStore.open(tmp_path)
    assert store.dtype == np.int32
    _, code, *_ = independent_idx_reader(tmp_path / store.shards[0].entry["idx"])
    assert code == 4
    assert store.document(0).tolist() == [70000, 1, 2]


def test_documents_are_views_and_tokens_slice_across_shards(tmp_path, docs):
    write_store(tmp_path, docs, vocab_size=1000, docs_per_shard=7)
    store = TokenStore.open(tmp_path)
    stream = np.concatenate(docs)
    assert store.num_documents == len(docs) and store.num_tokens == len(stream)
    for i in (0, 6, 7, 56, -1):
        doc = store.document(i)
        assert doc.tolist() == docs[i].tolist()
        assert not doc.flags.owndata
    rng = np.random.default_rng(1)
    for _ in range(300):
        a, b = sorted(rng.integers(0, len(stream) + 1, size=2))
        assert store.tokens(a, b).tolist() == stream[a:b].tolist()
    assert store.tokens(0, len(stream)).tolist() == stream.tolist()
    with pytest.raises(IndexError):
        store.tokens(0, len(stream) + 1)


def test_document_starts_cross_shards(tmp_path, docs):
    write_store(tmp_path, docs, vocab_size=1000, docs_per_shard=5)
    store = TokenStore.open(tmp_path)
    starts = np.cumsum([0] + [len(d) for d in docs[:-1]])
    for a, b in [(0, 10), (3, 200), (100, 900), (0, store.num_tokens)]:
        expected = [s for s in starts if a <= s < b]
        assert store.document_starts(a, b).tolist() == expected


def test_verify_detects_flipped_byte(tmp_path, docs):
    write_store(tmp_path, docs, vocab_size=1000, docs_per_shard=20)
    store = TokenStore.open(tmp_path)
    store.verify()
    path = store.shards[1].bin_path
    data = bytearray(path.read_bytes())
    data[5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="sha256"):
        TokenStore.open(tmp_path).verify()


def test_open_rejects_truncated_and_missing_shards(tmp_path, docs):
    write_store(tmp_path, docs, vocab_size=1000, docs_per_shard=20)
    store = TokenStore.open(tmp_path)
    bin_path = store.shards[0].bin_path
    bin_path.write_bytes(bin_path.read_bytes()[:-2])
    with pytest.raises(StoreError, match="bytes on disk"):
        TokenStore.open(tmp_path)
    bin_path.unlink()
    with pytest.raises(StoreError, match="missing"):
        TokenStore.open(tmp_path)


@pytest.mark.parametrize("name", ["../evil.bin", "/etc/passwd", "..", "a/b.bin", ""])
def test_manifest_names_outside_store_are_rejected(tmp_path, docs, name):
    write_store(tmp_path, docs, vocab_size=1000)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["shards"][0]["bin"] = name
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="not a plain name"):
        TokenStore.open(tmp_path)


def test_missing_or_garbled_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="not a token store"):
        TokenStore.open(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        TokenStore.open(tmp_path)


def test_idx_with_bad_header_is_rejected(tmp_path, docs):
    from mixer.store.format import read_index

    write_store(tmp_path, docs, vocab_size=1000)
    idx = TokenStore.open(tmp_path).shards[0].idx_path
    data = bytearray(idx.read_bytes())
    data[0:1] = b"X"
    idx.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="magic"):
        read_index(idx)


def test_empty_store(tmp_path):
    write_store(tmp_path, [], vocab_size=10)
    store = TokenStore.open(tmp_path)
    assert store.num_documents == 0 and store.num_tokens == 0
    store.verify()


def test_ids_that_do_not_fit_the_dtype_are_refused_not_wrapped(tmp_path):
    with pytest.raises(StoreError, match="does not fit uint16"):
        write_store(tmp_path, [[1, 70000]], vocab_size=1000)


def test_a_store_of_no_shards_gives_empty_results_not_index_errors(tmp_path):
    from mixer.store.format import MANIFEST
    from mixer.store.writer import build_manifest

    (tmp_path / MANIFEST).write_text(
        json.dumps(
            build_manifest(
                [], tokenizer={"sha256": "0" * 64, "vocab_size": 10}, eos_id=None, dtype=np.uint16
            )
        )
    )
    store = TokenStore.open(tmp_path)
    store.verify()
    assert store.num_documents == store.num_tokens == 0
    assert store.tokens(0, 0).tolist() == [] and store.document_starts(0, 0).tolist() == []
    with pytest.raises(IndexError, match="out of range for 0 documents"):
        store.document(0)
    with pytest.raises(IndexError, match="outside"):
        store.tokens(0, 1)
