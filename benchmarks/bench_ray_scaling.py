"""Ray worker scaling of `mixer tokenize`: 1, 2, 4, ... workers on one machine, same corpus.

Question (issue #17): does the per-task path keep its per-core rate when it runs as Ray tasks,
and where does adding workers stop paying? Goal: >= 0.8x linear at 16 workers on a 16-core host.

Method:
- Corpus (under benchmarks/data/): bench_tokenize_peers' mixed corpus of --base-mb MB in
  --base-files .jsonl.zst files, replicated --copies times under new names (copy k of file i is
  `c{k}-part-{i}.jsonl.zst`), so --base-mb x --copies MB of text in --base-files x --copies
  tasks (a compressed file is one task). Copies repeat text: engines keep no cache across
  processes, and within one worker a copy is no easier than the first pass was.
- Tokenizer: bench_tokenize_peers' 32k byte-level BPE (trained once, cached).
- Each cell: `python -m mixer.cli tokenize DATA -t TOK -o OUT --workers N --no-progress` with
  the default backend (auto), a fresh local Ray each time (RAY_ADDRESS=local), --runs times.
  --workers 1 runs in the CLI's own process (no Ray): the per-core rate the Ray cells are
  measured against.
  Reported: wall clock of the whole process, the CLI's own "in X.Ys" (dispatch to manifest,
  ray.init included), and that time less the fixed overhead measured on a tiny corpus of the
  same file count with the same N, median of runs. Efficiency = rate(N) / (N x rate(1)) on
  the CLI time less overhead, so Ray's start-up does not count against scaling.
- Check: the .bin/.idx files of every cell's store are byte-identical to the 1-worker store.

Run (16-core host): .venv/bin/python benchmarks/bench_ray_scaling.py --workers 1,2,4,8,16
Smoke run here:     .venv/bin/python benchmarks/bench_ray_scaling.py --workers 1,2 \
                        --base-mb 4 --base-files 2 --copies 2 --runs 1
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench_tokenize import fixed_overhead, run_pipeline  # noqa: E402
from bench_tokenize_peers import DATA, prepare_corpus, prepare_tokenizer  # noqa: E402


def replicated_corpus(base_mb: float, base_files: int, copies: int, seed: int) -> Path:
    base = prepare_corpus(base_mb, base_files, seed)
    path = DATA / f"{base.name}-x{copies}"
    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for k in range(copies):
            for f in sorted(base.glob("*.jsonl.zst")):
                os.link(f, partial / f"c{k:03d}-{f.name}")  # hard links: no extra disk
        partial.rename(path)
    return path


def text_mb(data: Path) -> float:
    from bench_tokenize import read_corpus

    return sum(len(t.encode("utf-8")) for t in read_corpus(data)) / 1e6


def store_digest(store: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(store.iterdir()):
        if p.suffix in (".bin", ".idx"):
            digest.update(p.name.encode() + p.read_bytes())
    return digest.hexdigest()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", default="1,2,4,8,16")
    p.add_argument("--base-mb", type=float, default=250.0)
    p.add_argument("--base-files", type=int, default=8)
    p.add_argument("--copies", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=int, default=2)
    a = p.parse_args()
    workers = [int(w) for w in a.workers.split(",")]

    data = replicated_corpus(a.base_mb, a.base_files, a.copies, a.seed)
    tokenizer = str(prepare_tokenizer(a.vocab, a.seed))
    mb = text_mb(data)
    files = len(list(data.glob("*.jsonl.zst")))
    print(
        f"corpus {data}: {files} files, {mb:.0f} MB text; tokenizer {tokenizer}; "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}; median of {a.runs} run(s)",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_scaling-"))
    rows = []
    reference = None
    try:
        for n in workers:
            overhead = statistics.median(fixed_overhead(data, tokenizer, tmp, n, a.runs))
            walls, clis = [], []
            for r in range(a.runs):
                out = tmp / f"store-{n}-{r}"
                t0 = time.perf_counter()
                wall, cli = run_pipeline(data, tokenizer, out, n, "auto")
                walls.append(wall)
                clis.append(cli)
                digest = store_digest(out)
                reference = reference or digest
                if digest != reference:
                    raise SystemExit(f"{n} workers wrote different bytes than the first cell")
                shutil.rmtree(out)
                print(f"{n} workers run {r + 1}: {time.perf_counter() - t0:.1f}s", flush=True)
            work = statistics.median(clis) - overhead
            rows.append((n, statistics.median(walls), statistics.median(clis), overhead, work))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = rows[0]
    print("\n| workers | wall s | CLI s | fixed overhead s | CLI less overhead s | MB/s |", end="")
    print(f" MB/s per worker | efficiency vs {base[0]} worker(s) x N |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, wall, cli, overhead, work in rows:
        rate = mb / work if work > 0 else float("nan")
        base_rate = mb / base[4] / base[0] if base[4] > 0 else float("nan")
        print(
            f"| {n} | {wall:.2f} | {cli:.2f} | {overhead:.2f} | {work:.2f} | {rate:.1f} "
            f"| {rate / n:.1f} | {rate / (n * base_rate):.2f} |"
        )
    print("\nstores byte-identical across worker counts: True")


if __name__ == "__main__":
    main()
