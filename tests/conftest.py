"""Shared fixtures: a tokenizer trained here (nothing is downloaded) and one local Ray."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Local Ray on 127.0.0.1 only, not the machine's network address (read when ray is imported).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Theorem 1. For every prime p > 2, p is odd. Proof: trivial. ∎",
    "X:1\nT:Reel\nM:4/4\nK:D\n|:dAFA dAFA|B2 AF E2 FE:|",
    "CC(=O)Oc1ccccc1C(=O)O is aspirin; C1=CC=CC=C1 is benzene.",
    "Ünïcödé, emoji 🎉🚀, CJK 漢字, combining e\u0301, tabs\tand\r\nCRLF lines.",
    "def f(x):\n    return x ** 2  # 12345 67890\n",
]


def train_tokenizer(path, vocab_size: int = 600) -> str:
    """A small byte-level BPE (GPT-2 style) with <|endoftext|>, trained deterministically."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer=trainer)
    tokenizer.save(str(path))
    return str(path)


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory) -> str:
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray with 2 CPUs for the whole session (starting Ray costs seconds)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        # "local": a fresh instance, never a cluster that `ray start` left running here (a
        # bare init would join it, and refuses num_cpus when it does).
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()
