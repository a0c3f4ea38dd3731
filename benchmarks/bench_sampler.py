"""Throughput of the mixing sampler against the practical limit, and the cost of opening a plan.

    .venv/bin/python benchmarks/bench_sampler.py [--tokens 100_000_000] [--blocks 20000]

1. Two stores (web 98%, proofpile 2%) of --tokens tokens in all are written to a temp dir and
   read once so they sit in the page cache.
2. The same blocks are copied four ways, --runs times each, alternated (medians reported):
   - limit: plain numpy slice copies from `np.memmap`s of the stores' .bin files into a
     preallocated array, for the very (source, block) pairs the sampler picks, located
     beforehand (no lookup cost); the same from the stores' own maps, plain ndarray views
     (`np.frombuffer`, no np.memmap `__getitem__` overhead: what the sampler itself slices),
     the stricter bar;
   - `sampler[i]` for consecutive i (lookup + copy, one block per call);
   - `sampler.batches(batch_size)` (vectorized lookup per chunk + copies).
3. Opening a 1T-token plan over a 500B-token source, in a fresh process: wall time of
   `MixSampler(spec)` and peak RSS (VmHWM, Linux) before/after. The big stores are real stores
   whose .bin files are sparse (1 TB apparent, nothing on disk): opening reads only manifests,
   indexes and file sizes, so nothing is faked in the code path measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mixer.mix.sampler import MixSampler
from mixer.mix.spec import MixSpec
from mixer.store.format import MANIFEST, dtype_for_vocab, encode_index, write_json_atomic
from mixer.store.writer import ShardWriter, build_manifest

VOCAB = 50_257


def write_random_store(root: Path, num_tokens: int, seed: int) -> None:
    """One shard of random documents (~1000 tokens each) written with the store's own writer."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    dtype = dtype_for_vocab(VOCAB)
    writer = ShardWriter(root, "shard-00000", dtype)
    written, chunk = 0, 10_000_000
    while written < num_tokens:
        n = min(chunk, num_tokens - written)
        lengths = np.diff(np.unique(np.r_[0, rng.integers(1, n, max(1, n // 1000)), n]))
        writer.add_documents(lengths, rng.integers(0, VOCAB, n, dtype=np.int64))
        written += n
    tokenizer = {"sha256": "0" * 64, "vocab_size": VOCAB}
    manifest = build_manifest([writer.close()], tokenizer=tokenizer, eos_id=0, dtype=dtype)
    write_json_atomic(root / MANIFEST, manifest)


def write_sparse_store(root: Path, num_tokens: int) -> None:
    """A store of `num_tokens` tokens whose .bin is a sparse file: valid to open, free to make."""
    root.mkdir(parents=True)
    dtype = dtype_for_vocab(VOCAB)
    docs = -(-num_tokens // 2_000_000_000)  # Megatron lengths are int32
    lengths = np.full(docs, num_tokens // docs, dtype=np.int64)
    lengths[: num_tokens - int(lengths.sum())] += 1
    idx = encode_index(lengths, dtype)
    (root / "shard-00000.idx").write_bytes(idx)
    with open(root / "shard-00000.bin", "wb") as f:
        f.truncate(num_tokens * dtype.itemsize)
    entry = {
        "name": "shard-00000",
        "bin": "shard-00000.bin",
        "idx": "shard-00000.idx",
        "documents": docs,
        "tokens": num_tokens,
        "bin_bytes": num_tokens * dtype.itemsize,
        "idx_bytes": len(idx),
    }
    tokenizer = {"sha256": "0" * 64, "vocab_size": VOCAB}
    write_json_atomic(
        root / MANIFEST, build_manifest([entry], tokenizer=tokenizer, eos_id=0, dtype=dtype)
    )


def mix_spec(root: Path, seq_len: int, total_tokens: int, weights: tuple[float, float]) -> MixSpec:
    return MixSpec.from_dict(
        {
            "seq_len": seq_len,
            "seed": 1234,
            "total_tokens": total_tokens,
            "source": [
                {"name": "web", "store": str(root / "web"), "weight": weights[0]},
                {"name": "proofpile", "store": str(root / "proofpile"), "weight": weights[1]},
            ],
        }
    )


def copy_blocks(arrays: list[np.ndarray], sources: list, starts: list, out: np.ndarray) -> None:
    """The limit: row i of `out` is a plain slice copy of `arrays[sources[i]]` from `starts[i]`
    (blocks located beforehand, as plain ints)."""
    width = out.shape[1]
    for row, (s, start) in enumerate(zip(sources, starts, strict=True)):
        out[row] = arrays[s][start : start + width]


def median_rates(fns: dict, blocks: int, runs: int) -> list[tuple[str, float]]:
    """Blocks/s of each function, median of `runs`, the functions alternated within each run so
    that the machine's load drifts over all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return [(name, blocks / statistics.median(t)) for name, t in times.items()]


def throughput(root: Path, args: argparse.Namespace) -> list[tuple[str, float]]:
    write_random_store(root / "web", int(args.tokens * 0.9), seed=1)
    write_random_store(root / "proofpile", int(args.tokens * 0.1), seed=2)
    sampler = MixSampler(mix_spec(root, args.seq_len, 4 * args.tokens, (0.98, 0.02)))
    for store in sampler.stores:  # into the page cache
        for shard in store.shards:
            with open(shard.bin_path, "rb") as f:
                while f.read(1 << 24):
                    pass
    n = min(args.blocks, len(sampler)) // args.batch_size * args.batch_size
    refs = sampler.locate_many(np.arange(n))
    stores = sampler.stores
    views = [store.shards[0].tokens for store in stores]
    memmaps = [np.memmap(st.shards[0].bin_path, st.dtype.newbyteorder("<"), "r") for st in stores]
    starts = (refs.block * args.seq_len).tolist()
    sources = refs.source.tolist()
    out = np.empty((n, args.seq_len + 1), dtype=sampler.dtype)

    def copies(arrays: list[np.ndarray]) -> None:
        copy_blocks(arrays, sources, starts, out)

    def getitem() -> None:
        for i in range(n):
            sampler[i]

    def batches() -> None:
        for _ in zip(range(n // args.batch_size), sampler.batches(args.batch_size), strict=False):
            pass

    fns = {
        "np.memmap slice copy (limit)": lambda: copies(memmaps),
        "store's ndarray view slice copy": lambda: copies(views),
        "sampler[i]": getitem,
        f"sampler.batches({args.batch_size})": batches,
    }
    return median_rates(fns, n, args.runs)


OPEN_PROBE = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {bench_dir!r})
from bench_sampler import mix_spec
from mixer.mix.sampler import MixSampler
def peak_rss_mb():  # VmHWM: this process's peak, unlike ru_maxrss which fork inherits
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
before = peak_rss_mb()
start = time.perf_counter()
sampler = MixSampler(mix_spec(Path({root!r}), 2048, 10**12, ({w0!r}, {w1!r})))
opened = time.perf_counter() - start
sampler.locate(len(sampler) - 1)
after = peak_rss_mb()
period = max(t.period for t in sampler.phases)
print(json.dumps([opened, before, after, len(sampler), period]))
"""


def open_cost(root: Path, weights: tuple[float, float]) -> list:
    code = OPEN_PROBE.format(
        bench_dir=str(Path(__file__).parent), root=str(root), w0=weights[0], w1=weights[1]
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=100_000_000, help="tokens in both stores")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--blocks", type=int, default=20_000, help="blocks copied per run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        rates = throughput(Path(tmp) / "small", args)
        big = Path(tmp) / "big"
        write_sparse_store(big / "web", 500_000_000_000)
        write_sparse_store(big / "proofpile", 5_000_000_000)
        opens = {w: open_cost(big, w) for w in ((0.98, 0.02), (0.2731942, 0.7268058))}

    limit, view = rates[0][1], rates[1][1]
    print(
        f"seq_len {args.seq_len}, {args.tokens:,} tokens in 2 page-cached stores, "
        f"{args.blocks:,} blocks per run, median of {args.runs} runs\n"
    )
    print("| path | blocks/s | x np.memmap | x ndarray view |")
    print("|---|---:|---:|---:|")
    for name, rate in rates:
        print(f"| {name} | {rate:,.0f} | {rate / limit:.2f} | {rate / view:.2f} |")
    print("\n1T-token plan (seq_len 2048) over a 500B-token and a 5B-token store, fresh process:\n")
    print("| weights | period P | blocks | open time | peak RSS before -> after open |")
    print("|---|---:|---:|---:|---:|")
    for weights, (opened, before, after, blocks, period) in opens.items():
        print(
            f"| {weights[0]} / {weights[1]} | {period:,} | {blocks:,} | {opened * 1000:.0f} ms "
            f"| {before:.0f} MB -> {after:.0f} MB |"
        )


if __name__ == "__main__":
    main()
