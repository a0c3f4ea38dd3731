"""Tokenizer engines: HF `tokenizers` (the reference) and faster engines verified against it.

A faster engine (`fast`: fastokens, `giga`: gigatoken) is used only where it produced the
reference's ids on this input (`verify_backend`); what an engine is known to ignore in a
tokenizer.json (padding, truncation, `single_word` added tokens) is refused before that.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec
import numpy as np
from tokenizers import Tokenizer

from mixer.errors import MixerError

T = TypeVar("T")


# Tried in order when the user names no EOS token: GPT-2/NeoX/Llama-3/Llama-2/T5 spellings.
EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[EOS]")


@dataclass(frozen=True)
class TokenizerInfo:
    """What a store records about its tokenizer: enough to refuse mixing incompatible stores."""

    name: str
    sha256: str
    vocab_size: int
    eos_id: int | None
    eos_token: str | None
    json: str

    def manifest_entry(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "vocab_size": self.vocab_size}


_LOADED: dict[tuple[str, str], Any] = {}


def load_once(what: str, info: TokenizerInfo, load: Callable[[str], T]) -> T:
    """`load(info.json)` once per process, `what` (an engine's name) and tokenizer.

    Parsing a tokenizer.json costs more than the fast engine needs to encode a whole task
    (BENCHMARKS.md, "Tokenize pipeline vs the raw engine"), so a worker that runs many tasks
    must not pay it for each.
    """
    key = (what, info.sha256)
    if key not in _LOADED:
        _LOADED[key] = load(info.json)
    return _LOADED[key]


def load_tokenizer(path: str, eos_token: str | None = None, no_eos: bool = False) -> TokenizerInfo:
    """Read a tokenizer.json (or a directory holding one), local or any fsspec URL."""
    fs, fs_path = fsspec.core.url_to_fs(path)
    if fs.isdir(fs_path):
        fs_path = fs_path.rstrip("/") + "/tokenizer.json"
    try:
        with fs.open(fs_path, "rb") as f:
            raw = f.read()
    except (FileNotFoundError, IsADirectoryError):
        raise MixerError(f"tokenizer not found: {path} (expected a tokenizer.json)") from None
    try:
        text = raw.decode("utf-8")
        tokenizer = Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise MixerError(f"{path}: not a HF tokenizers tokenizer.json ({e})") from None
    eos_id = None
    if not no_eos:
        candidates = (eos_token,) if eos_token is not None else EOS_CANDIDATES
        for candidate in candidates:
            eos_id = tokenizer.token_to_id(candidate)
            if eos_id is not None:
                eos_token = candidate
                break
        if eos_id is None:
            wanted = f"eos_token={eos_token!r} is not" if eos_token else "no EOS token is"
            raise MixerError(
                f"{path}: {wanted} in the vocabulary (looked for {', '.join(candidates)}); "
                "pass eos_token= one it has, or no_eos=True",
                params=("eos_token", "no_eos"),
            )
    sha256 = hashlib.sha256(raw).hexdigest()
    _LOADED[("hf", sha256)] = tokenizer  # HFEncoder in this process reuses it
    return TokenizerInfo(
        name=os.path.basename(fs_path.rstrip("/")),
        sha256=sha256,
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        eos_id=eos_id,
        eos_token=eos_token if not no_eos else None,
        json=text,
    )


class HFEncoder:
    """The reference backend: HF `tokenizers`, one thread per worker (Ray provides parallelism)."""

    name = "hf"

    def __init__(self, info: TokenizerInfo, threads: int = 1):
        if threads == 1:
            # Each Ray worker gets one core; rayon's own pool would oversubscribe them.
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        self.tokenizer = load_once("hf", info, Tokenizer.from_str)
        self.eos_id = info.eos_id

    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token lengths (EOS included) and the concatenated ids of a batch of documents."""
        encodings = self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        ids = [e.ids for e in encodings]
        return join_documents(ids, self.eos_id)


def join_documents(ids: list[list[int]], eos_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-document ids, appending EOS to each, as (lengths, tokens) arrays."""
    extra = 0 if eos_id is None else 1
    lengths = np.fromiter((len(d) + extra for d in ids), dtype=np.int64, count=len(ids))
    tokens = np.empty(int(lengths.sum()), dtype=np.int64)
    ends = np.cumsum(lengths)
    start = 0
    for doc, end in zip(ids, ends, strict=True):
        tokens[start : start + len(doc)] = doc
        start = int(end)
    if eos_id is not None and len(ids):
        tokens[ends - 1] = eos_id
    return lengths, tokens


FAST_ENGINE = "fastokens"


FAST_REQUIREMENT = "fastokens>=0.3.5,<0.4"


# Inputs that exercise what a re-implementation most easily gets wrong: digit grouping,
# whitespace runs, Unicode normalization and classes, added tokens in text, very long pieces.
ADVERSARIAL: list[str] = [
    "",
    " ",
    "a",
    "\n",
    "1234567890" * 8,
    "3.14159 -2,718.28 1e-10 0x1F 007 ١٢٣ ⅷ ²³",
    " " * 64 + "indented" + " " * 33 + "\n" + "\t" * 9 + "x",
    "trailing spaces   \n\n\n   \n",
    "line one\r\nline two\r\n\r\n\rlone CR",
    "\u00a0\u2009\u3000\u200b\u2028\u2029\x85\x0b\x0c",
    "nul\x00inside\x00\x00",
    "👩‍👩‍👧‍👦 🏳️‍🌈 👍🏽 🇺🇳 \U0001f600" * 3,
    "e\u0301 a\u0308\u0323 n\u0303 ñ \u0915\u094d\u0937 \u1100\u1161\u11a8 Å Å",
    "ﬁ ﬀ Ｆｕｌｌｗｉｄｔｈ ℌ ① ẞ ß İ ı ǅ",
    "漢字かなカナ한국어 العربية עברית ไทย",
    "don't I'M you're we'VE they'll she'd it's 's 're",
    "<|endoftext|></s><s>[CLS][SEP]<unk><pad> special tokens as plain text",
    "def f(x):\n\treturn {'a': [1, 2]}  # ✓\n",
    "lone \ud800 surrogate \udfff",
    "word " * 20_000,
    "x" * 100_000,
]


def fast_available() -> str | None:
    """The fast engine's name if it is installed here, else None (it is optional at runtime)."""
    return FAST_ENGINE if importlib.util.find_spec(FAST_ENGINE) else None


class FastEncoder:
    """`HFEncoder`'s contract on `fastokens`; single-threaded by default (Ray provides parallelism).

    fastokens sizes its thread pool once per process from FASTOKENS_BPE_THREADS, so `threads`
    only takes effect if this is the first fastokens encoder of the process (a Ray worker is).
    Raises `MixerError` saying why when the engine is missing or cannot encode like `info`.
    """

    name = FAST_ENGINE

    def __init__(self, info: TokenizerInfo, threads: int = 1):
        if fast_available() is None:
            raise MixerError(f"{FAST_ENGINE} is not installed (pip install '{FAST_REQUIREMENT}')")
        if load_once("padding", info, lambda text: json.loads(text).get("padding")):
            raise MixerError(f"{info.name} enables padding, which {FAST_ENGINE} bulk encodes skip")
        os.environ["FASTOKENS_BPE_THREADS"] = str(threads)
        import fastokens

        try:
            self.tokenizer = load_once(FAST_ENGINE, info, fastokens.Tokenizer.from_json_str)
        except Exception as e:  # a ValueError naming the unsupported component, usually
            reason = " ".join(str(e).split())  # one line, for the fallback warning
            raise MixerError(f"{FAST_ENGINE} cannot load {info.name}: {reason}") from None
        self.eos_id = info.eos_id

    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token lengths (EOS included, int64) and the concatenated uint32 ids of a batch."""
        ids, offsets = self.tokenizer.encode_batch_flat(texts, add_special_tokens=False)
        ids = np.frombuffer(ids, dtype="<u4")
        offsets = np.frombuffer(offsets, dtype="<u8").astype(np.intp)
        lengths = np.diff(offsets).astype(np.int64)
        if self.eos_id is None:
            return lengths, ids
        # An EOS inserted before each document's end offset lands right after its last token.
        return lengths + 1, np.insert(ids, offsets[1:], np.uint32(self.eos_id))


GIGA_ENGINE = "gigatoken"


GIGA_REQUIREMENT = "gigatoken>=0.10,<0.11"


def giga_available() -> str | None:
    """gigatoken's name if it is installed here, else None (it is optional at runtime)."""
    return GIGA_ENGINE if importlib.util.find_spec(GIGA_ENGINE) else None


def _giga_ignores(text: str) -> str | None:
    """What of this tokenizer.json gigatoken 0.10 silently ignores (probed against hf), if any.

    It pads and truncates nothing and treats `single_word` added tokens as plain added tokens
    (hf matches those only at word boundaries); the first document that shows it may come late.
    """
    config = json.loads(text)
    if config.get("padding"):
        return "enables padding"
    if config.get("truncation"):
        return "enables truncation"
    single = [t.get("content") for t in config.get("added_tokens") or [] if t.get("single_word")]
    if single:
        return f"has single_word added tokens ({', '.join(map(repr, single[:3]))})"
    return None


class GigaEncoder:
    """`HFEncoder`'s contract on `gigatoken`, on the calling thread (Ray provides parallelism).

    threads > 1 encodes on gigatoken's process-wide pool. Raises `MixerError` saying why when
    the engine is missing or cannot encode like `info`.
    """

    name = GIGA_ENGINE

    def __init__(self, info: TokenizerInfo, threads: int = 1):
        if giga_available() is None:
            raise MixerError(f"{GIGA_ENGINE} is not installed (pip install '{GIGA_REQUIREMENT}')")
        ignored = load_once("giga-ignores", info, _giga_ignores)
        if ignored:
            raise MixerError(f"{info.name} {ignored}, which {GIGA_ENGINE} ignores")
        import gigatoken

        try:
            self.tokenizer = load_once(GIGA_ENGINE, info, gigatoken.Tokenizer.from_json)
        except Exception as e:  # a RuntimeError naming the unsupported component, usually
            reason = str(e).strip().splitlines()[0]  # one line, for the fallback warning
            raise MixerError(f"{GIGA_ENGINE} cannot load {info.name}: {reason}") from None
        self.parallel = threads > 1
        self.eos_id = info.eos_id

    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token lengths (EOS included, int64) and the concatenated uint32 ids of a batch."""
        # An awkward ListOffsetArray: offsets into one flat uint32 buffer, read without copies.
        layout = self.tokenizer.encode_batch(texts, parallel=self.parallel).layout
        offsets = np.asarray(layout.offsets.data, dtype=np.intp)
        ids = np.asarray(layout.content.data)[offsets[0] : offsets[-1]]
        offsets = offsets - offsets[0]
        lengths = np.diff(offsets).astype(np.int64)
        if self.eos_id is None:
            return lengths, ids
        return lengths + 1, np.insert(ids, offsets[1:], np.uint32(self.eos_id))


Encoder = HFEncoder | FastEncoder | GigaEncoder


# The verified engines by backend name, and the order `auto` tries them in. fastokens first:
# the two were within noise of each other per CPU second, in memory and end to end, and
# gigatoken's awkward results cost an import (BENCHMARKS.md, "Ingest vs Megatron's fast path").
ENGINES: dict[str, type[FastEncoder] | type[GigaEncoder]] = {
    "giga": GigaEncoder,
    "fast": FastEncoder,
}
AUTO_ORDER = ("fast", "giga")


def engine_available(backend: str) -> bool:
    """Whether the engine behind a verified backend ('fast', 'giga') is installed here."""
    return (fast_available() if backend == "fast" else giga_available()) is not None


def make_encoder(info: TokenizerInfo, backend: str) -> Encoder:
    """The encoder for backend 'hf', 'fast' or 'giga'; 'auto' is resolved by the caller with
    verify_backend."""
    if backend == "hf":
        return HFEncoder(info)
    if backend in ENGINES:
        try:
            return ENGINES[backend](info)
        except MixerError as e:
            raise MixerError(
                f"backend={backend!r}: {e}; use backend='hf' or 'auto'",
                params=("backend", *e.params),
            ) from None
    raise MixerError(f"unknown backend {backend!r}; expected 'hf', 'fast' or 'giga'")


def verify_backend(
    info: TokenizerInfo, sample_texts: list[tuple[str, str]], backend: str = "fast"
) -> str | None:
    """None if `backend`'s engine matches `HFEncoder` id for id on the sample and `ADVERSARIAL`.

    Otherwise one line saying why it may not be used for this tokenizer: a refusal, or the
    label of the first differing document and the first differing token position. Each
    document is encoded alone and then all of them as one batch, so a bug in either path shows.
    """
    try:
        fast = ENGINES[backend](info)
    except MixerError as e:
        return str(e)
    hf = HFEncoder(info)
    samples = sample_texts + [
        (f"adversarial[{i}] {text[:24]!r}", text) for i, text in enumerate(ADVERSARIAL)
    ]
    encodable = []
    for label, text in samples:
        want, got = _encode_one(hf, text), _encode_one(fast, text)
        if isinstance(want, str) or isinstance(got, str):
            if isinstance(want, str) != isinstance(got, str):
                outcomes = f"hf {_show(want)}, {fast.name} {_show(got)}"
                return f"{fast.name} differs from hf on {label}: {outcomes}"
            continue
        position = _first_difference(want, got)
        if position is not None:
            return _describe(fast.name, label, position, want, got)
        encodable.append((label, text, want))
    lengths, tokens = fast.encode_batch([text for _, text, _ in encodable])
    if len(lengths) != len(encodable):
        return f"{fast.name} returned {len(lengths)} documents for a batch of {len(encodable)}"
    for (label, _, want), end, length in zip(encodable, np.cumsum(lengths), lengths, strict=True):
        got = tokens[end - length : end]
        position = _first_difference(want, got)
        if position is not None:
            return _describe(fast.name, f"{label} (in a batch)", position, want, got)
    return None


def _encode_one(encoder: Encoder, text: str) -> np.ndarray | str:
    """The ids of one document, or the exception it raised, as text."""
    try:
        return encoder.encode_batch([text])[1]
    except Exception as e:  # either engine may refuse a text: compare the refusals
        return f"raised {type(e).__name__}"


def _first_difference(want: np.ndarray, got: np.ndarray) -> int | None:
    """The first position where two id sequences differ (a length difference counts)."""
    n = min(len(want), len(got))
    unequal = np.flatnonzero(want[:n] != got[:n])
    if len(unequal):
        return int(unequal[0])
    return None if len(want) == len(got) else n


def _describe(engine: str, label: str, position: int, want: np.ndarray, got: np.ndarray) -> str:
    return (
        f"{engine} differs from hf on {label} at token {position}: "
        f"hf {_at(want, position)}, {engine} {_at(got, position)}"
    )


def _at(ids: np.ndarray, position: int) -> str:
    return f"id {int(ids[position])}" if position < len(ids) else f"ends ({len(ids)} tokens)"


def _show(outcome: np.ndarray | str) -> str:
    return outcome if isinstance(outcome, str) else f"{len(outcome)} tokens"
