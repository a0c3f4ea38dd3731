"""Helpers shared by the mixing benchmark's child scripts (each runs in its own virtualenv).

Only numpy and the standard library: the children must not import mixer, so they read a store's
raw .bin files themselves. A child gets its settings as one JSON argument from
`benchmarks/bench_mix_peers.py` and prints one JSON line of results.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable

import numpy as np

FIRST_SAMPLES = 4  # digests printed for the sanity check


def read_config() -> dict:
    return json.loads(sys.argv[-1])


def convert_or_bench(convert: Callable, bench: Callable) -> None:
    """`script.py convert CONFIG` converts the stores; `script.py CONFIG` benchmarks."""
    (convert if sys.argv[1] == "convert" else bench)(read_config())


def convert_sources(tool: str, config: dict, key: str, write: Callable) -> None:
    """Write each source's blocks in a tool's own format at `source[key]`, unless there already:
    `write(blocks, directory)` into a temp directory renamed when complete. Prints the seconds."""
    seconds = {}
    for source in config["sources"]:
        if os.path.exists(source[key]):
            continue
        partial = source[key] + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        blocks = source_blocks(source, config["seq_len"])
        seconds[source["name"]] = timed(functools.partial(write, blocks, partial))[1]
        os.rename(partial, source[key])
    emit({"tool": tool, "convert_s": seconds})


def emit(result: dict) -> None:
    print(json.dumps(result), flush=True)


def emit_run(
    tool: str,
    config: dict,
    build_s: float,
    plan_samples: int,
    rss_mb: tuple,
    rates: dict,
    source_ids,
    **extra,
) -> None:
    """Print a benchmark run: `rss_mb` is the peak RSS before the build and after it, then
    `memory_after_read_mb()`; `source_ids` the source of every sample of the plan, in order."""
    before, built, read, anon = rss_mb
    weights = [s["weight"] for s in config["sources"]]
    emit(
        {
            "tool": tool,
            "build_s": build_s,
            "plan_samples": plan_samples,
            "rss_before_build_mb": before,
            "rss_after_build_mb": built,
            "rss_after_read_mb": read,
            "anon_rss_after_read_mb": anon,
            "rates": rates,
            "mix": mix_stats(source_ids, weights),
            **extra,
        }
    )


def peak_rss_mb() -> float:
    """VmHWM: this process's own peak, unlike ru_maxrss, which a forked child inherits. It counts
    the page-cache pages of memory-mapped files the process has touched."""
    return proc_status_mb("VmHWM")


def memory_after_read_mb() -> tuple[float, float]:
    """Peak RSS, and the private (anonymous) RSS now, without mapped file pages."""
    return peak_rss_mb(), proc_status_mb("RssAnon")


def proc_status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def digest(tokens) -> str:
    """Same digest for the same token ids whatever the array type or dtype."""
    return hashlib.sha1(np.asarray(tokens, dtype=np.int64).tobytes()).hexdigest()[:16]


def timed(fn: Callable):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def sample_rate(samples: Iterable, count: int, tokens_of: Callable = lambda s: s) -> dict:
    """Samples/s over the first `count` samples, plus digests of the first few to sanity check."""
    first, n = [], 0
    start = time.perf_counter()
    for sample in samples:
        if n < FIRST_SAMPLES:
            tokens = np.asarray(tokens_of(sample))
            first.append({"len": int(tokens.size), "sha1": digest(tokens)})
        n += 1
        if n == count:
            break
    seconds = time.perf_counter() - start
    return {"samples": n, "samples_per_s": n / seconds, "first": first}


def source_tokens(source: dict) -> np.ndarray:
    """A source's concatenated token stream, read from its shards' .bin files.

    One shard is memory-mapped; several are concatenated into memory (fine for benchmark stores).
    """
    parts = [np.memmap(p + ".bin", dtype=source["dtype"], mode="r") for p in source["prefixes"]]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def source_blocks(source: dict, seq_len: int) -> np.ndarray:
    """(n, seq_len + 1) read-only view: row k is tokens [k seq_len, k seq_len + seq_len + 1),
    mixer's block k (consecutive blocks share one token), with n = (num_tokens - 1) // seq_len."""
    tokens = source_tokens(source)
    n = (len(tokens) - 1) // seq_len
    step = tokens.strides[0]
    return np.lib.stride_tricks.as_strided(
        tokens, shape=(n, seq_len + 1), strides=(seq_len * step, step), writeable=False
    )


def mix_stats(source_ids: np.ndarray, weights: list[float]) -> dict:
    """How a plan's samples split over sources: each source's fraction of the plan, and the
    worst gap |count_s(n) - w_s n| over every prefix n (in samples: how bursty the mix is)."""
    source_ids = np.asarray(source_ids, dtype=np.int64)
    n = np.arange(1, len(source_ids) + 1)
    worst = 0.0
    for s, weight in enumerate(weights):
        gap = np.abs(np.cumsum(source_ids == s) - weight * n)
        worst = max(worst, float(gap.max(initial=0)))
    counts = np.bincount(source_ids, minlength=len(weights))
    return {"fractions": (counts / max(1, len(source_ids))).tolist(), "max_prefix_gap": worst}
