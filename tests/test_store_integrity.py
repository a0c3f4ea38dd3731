"""A store that could serve wrong tokens is refused: by open, on first use of a shard, or by
verify. Hand-picked damage from the audit (issue 14), then random self-consistent damage."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixer.cli import main
from mixer.errors import StoreError
from mixer.mix.sampler import MixSampler
from mixer.mix.spec import MixSpec, SourceSpec
from mixer.store.format import MANIFEST, encode_index
from mixer.store.reader import TokenStore
from mixer.store.writer import write_store

DOCS = [list(range(k, k + 3 + k % 5)) for k in range(40)]
STREAM = [t for d in DOCS for t in d]


def make(tmp_path, docs=DOCS, per_shard=10):
    root = tmp_path / "store"
    write_store(root, docs, vocab_size=1000, docs_per_shard=per_shard)
    return root


def edit(root, change):
    manifest = json.loads((root / MANIFEST).read_text())
    change(manifest)
    (root / MANIFEST).write_text(json.dumps(manifest))


def rehash(root):
    """Rewrite sizes and checksums so that they match whatever the files now hold."""

    def change(manifest):
        for entry in manifest["shards"]:
            for kind in ("bin", "idx"):
                data = (root / entry[kind]).read_bytes()
                entry[f"{kind}_bytes"] = len(data)
                entry[f"{kind}_sha256"] = hashlib.sha256(data).hexdigest()

    edit(root, change)


def refused(root, capsys) -> str:
    """The one-line error of `mixer verify` (which opens, reads every shard and verifies)."""
    with pytest.raises(SystemExit) as exit_:
        main(["verify", str(root)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("mixer: error: ") and err.count("\n") == 1, err
    return err


def test_idx_dtype_byte_changed_is_refused_at_open(tmp_path, capsys):
    root = make(tmp_path)
    idx = root / "shard-00001.idx"
    data = bytearray(idx.read_bytes())
    data[17] = 4  # int32 instead of uint16
    idx.write_bytes(bytes(data))
    rehash(root)
    with pytest.raises(StoreError, match="dtype int32 but the manifest says uint16"):
        TokenStore.open(root)
    assert "dtype" in refused(root, capsys)


def lengths_changed(root, shard, change):
    idx = root / f"shard-{shard:05d}.idx"
    n = (idx.stat().st_size - 42) // 20
    data = bytearray(idx.read_bytes())
    lengths = np.frombuffer(bytes(data[34 : 34 + 4 * n]), "<i4").copy()
    change(lengths)
    data[34 : 34 + 4 * n] = lengths.astype("<i4").tobytes()
    idx.write_bytes(bytes(data))
    rehash(root)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda n: n.__setitem__(9, n[9] + 50), "add up to"),  # past the shard's end
        (lambda n: n.__setitem__(slice(0, 2), [n[0] + n[1] + 1, -1]), "negative length"),
        (lambda n: n.__setitem__(slice(0, 2), [n[1], n[0]]), "starts at byte"),
    ],
)
def test_document_lengths_that_disagree_with_the_shard_are_refused(
    tmp_path, capsys, change, message
):
    root = make(tmp_path)
    lengths_changed(root, 0, change)
    store = TokenStore.open(root)  # headers are fine: the index is checked on first use
    with pytest.raises(StoreError, match=message):
        store.document(3)
    with pytest.raises(StoreError, match=message):
        store.document_starts(0, 10)
    assert message in refused(root, capsys)


def test_swapped_idx_files_are_refused(tmp_path, capsys):
    docs = [[1, 2, 3]] * 10 + [[4, 5]] * 10 + [[6, 7, 8, 9]] * 10  # same counts per shard
    root = make(tmp_path, docs)
    a, b = root / "shard-00000.idx", root / "shard-00001.idx"
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    with pytest.raises(StoreError, match="sha256 does not match"):
        TokenStore.open(root).document(0)
    assert "sha256" in refused(root, capsys)
    rehash(root)  # and with checksums rewritten to match: the lengths no longer add up
    with pytest.raises(StoreError, match="add up to"):
        TokenStore.open(root).document(0)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m["shards"][0].update(tokens=float(m["shards"][0]["tokens"])), "tokens is"),
        (lambda m: m["shards"][0].update(tokens=str(m["shards"][0]["tokens"])), "tokens is"),
        (lambda m: m["shards"][0].update(documents=True), "documents is True"),
        (lambda m: m["shards"][0].update(tokens=float("inf")), "tokens is inf"),
        (lambda m: m["shards"][0].update(tokens=10**40), "tokens is"),
        (lambda m: m["shards"][0].update(tokens=-1), "tokens is -1"),
        (lambda m: m.pop("tokenizer"), "tokenizer is None"),
        (lambda m: m["tokenizer"].update(vocab_size="1000"), "vocab_size is '1000'"),
        (lambda m: m["tokenizer"].update(vocab_size=100_000), "does not go with dtype"),
        (lambda m: m.update(format_version=1.0), "format_version 1.0"),
        (lambda m: m.update(eos_id=5000), "eos_id 5000"),
        (lambda m: m["shards"].append(dict(m["shards"][0])), "listed twice"),
        (lambda m: m["shards"][1].update(idx=m["shards"][0]["idx"]), "listed twice"),
        (lambda m: m.update(num_tokens=m["num_tokens"] + 1), "num_tokens is"),
        (lambda m: m["shards"][0].update(bin_sha256=7), "bin_sha256 is 7"),
        (lambda m: m["tokenizer"].update(file="../t.json", file_bytes=1), "tokenizer.file '"),
        (lambda m: m["tokenizer"].update(file=m["shards"][0]["bin"], file_bytes=1), "twice"),
        (lambda m: m["tokenizer"].update(file="t.json", file_bytes=1.5), "file_bytes is 1.5"),
        (lambda m: m["tokenizer"].update(file="t.json"), "file_bytes is None"),
        (lambda m: m["tokenizer"].update(file="t.json", file_bytes=1), "t.json: file listed"),
    ],
)
def test_manifest_fields_are_validated_strictly(tmp_path, capsys, change, message):
    root = make(tmp_path)
    edit(root, change)
    with pytest.raises(StoreError, match=message):
        TokenStore.open(root)
    assert message.split()[0] in refused(root, capsys)


def test_manifest_tokens_written_as_1e999_is_one_line(tmp_path, capsys):
    root = make(tmp_path)
    text = (root / MANIFEST).read_text()
    entry = json.loads(text)["shards"][0]
    (root / MANIFEST).write_text(text.replace(f'"tokens": {entry["tokens"]}', '"tokens": 1e999', 1))
    assert "tokens is inf" in refused(root, capsys)
    with pytest.raises(SystemExit):
        main(["inspect", str(root)])
    assert capsys.readouterr().err.startswith("mixer: error: ")


def test_symlinked_shards_outside_the_store_or_aliasing_another_are_refused(tmp_path, capsys):
    root = make(tmp_path)
    outside = tmp_path / "elsewhere.bin"
    os.replace(root / "shard-00001.bin", outside)
    os.symlink(outside, root / "shard-00001.bin")
    with pytest.raises(StoreError, match="outside the store"):
        TokenStore.open(root)
    assert "outside the store" in refused(root, capsys)
    os.unlink(root / "shard-00001.bin")
    os.replace(outside, root / "shard-00001.bin")
    TokenStore.open(root).verify()
    os.rename(root / "shard-00001.bin", root / "inside.bin")  # a link inside the store is fine
    os.symlink("inside.bin", root / "shard-00001.bin")
    TokenStore.open(root).verify()
    os.unlink(root / "shard-00002.bin")
    os.symlink("shard-00000.bin", root / "shard-00002.bin")
    with pytest.raises(StoreError, match="same file as"):
        TokenStore.open(root)


# ------------------------------------------------------------------ random consistent damage


def damage(root, draw):
    """One random change to an .idx file or the manifest, then sizes and checksums rewritten
    to match, so only the structural checks can tell."""
    manifest = json.loads((root / MANIFEST).read_text())
    entry = draw(st.sampled_from(manifest["shards"]))
    kind = draw(st.sampled_from(["idx-byte", "idx-relength", "count", "truncate-bin", "dtype"]))
    idx, bin_ = root / entry["idx"], root / entry["bin"]
    if kind == "idx-byte":
        data = bytearray(idx.read_bytes())
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255).filter(lambda b: b != data[at]))
        idx.write_bytes(bytes(data))
    elif kind == "idx-relength":  # a different split of the same tokens: a valid store
        n = entry["documents"]
        cuts = sorted(
            draw(st.lists(st.integers(0, entry["tokens"]), min_size=n - 1, max_size=n - 1))
        )
        lengths = np.diff([0, *cuts, entry["tokens"]])
        idx.write_bytes(encode_index(lengths, np.dtype(np.uint16)))
    elif kind == "count":
        field = draw(st.sampled_from(["documents", "tokens"]))
        entry[field] = max(0, entry[field] + draw(st.integers(-3, 3).filter(bool)))
        manifest["num_" + field] = sum(e[field] for e in manifest["shards"])
    elif kind == "truncate-bin":
        cut = draw(st.integers(1, 3)) * 2
        bin_.write_bytes(bin_.read_bytes()[:-cut])
        entry["tokens"] -= cut // 2
        manifest["num_tokens"] -= cut // 2
    else:
        manifest["dtype"] = "int32"
    (root / MANIFEST).write_text(json.dumps(manifest))
    rehash(root)
    return kind


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_consistent_damage_is_refused_or_serves_the_original_tokens(tmp_path_factory, data):
    """Whatever open, the sampler and verify accept serves exactly the original token stream,
    and its documents tile that stream. Damage to the .bin bytes themselves is left out: with
    its checksum rewritten it is a different valid store, which no reader can tell apart."""
    root = make(tmp_path_factory.mktemp("damage"))
    damage(root, data.draw)
    try:
        store = TokenStore.open(root)
        served = store.tokens(0, store.num_tokens).tolist()
        documents = [store.document(i).tolist() for i in range(store.num_documents)]
        spec = MixSpec(
            seq_len=4, seed=0, total_tokens=400, sources=(SourceSpec("a", str(root), 1.0),)
        )
        sampler = MixSampler(spec, {"a": store})
        blocks = [sampler.get(i, positions=True) for i in range(len(sampler))]
        store.verify()
    except StoreError:
        return
    assert served == STREAM
    assert [t for d in documents for t in d] == STREAM
    for i, (tokens, _) in enumerate(blocks):
        block = sampler.locate(i).block
        assert tokens.tolist() == STREAM[block * 4 : block * 4 + 5]
