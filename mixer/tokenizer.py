"""Loading a HF `tokenizers` tokenizer.json and turning batches of documents into token arrays.

The reference encoding of a document is `Tokenizer.encode(text, add_special_tokens=False).ids`
followed by the EOS id; every backend must produce exactly that.
"""

from __future__ import annotations

import hashlib
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

    Parsing a 50k-vocab tokenizer.json takes 0.1-0.4 s: more than the fast engine needs for a
    whole 32 MB task, so a worker that runs many tasks must not pay it for each.
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
            wanted = f"--eos-token {eos_token!r} is" if eos_token else "no EOS token is"
            raise MixerError(
                f"{path}: {wanted} in the vocabulary (looked for {', '.join(candidates)}); "
                "pass --eos-token TOKEN or --no-eos"
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
