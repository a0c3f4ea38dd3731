"""Ray worker scaling of `mixer tokenize`: 1, 2, 4, ... workers on one machine, same corpus.

Question (issue #17): does the per-task path keep its per-core rate when it runs as Ray tasks,
and where does adding workers stop paying? Goal: >= 0.8x linear at 16 workers on a 16-core host.

One command, no network (the corpus and tokenizer are generated from the bundled samples):

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_ray_scaling.py            # 16-core host
    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_ray_scaling.py --tiny     # a smoke run

Method:
- Corpus (under --data-dir, benchmarks/data/ by default, cached): bench_tokenize_peers' mixed
  corpus of --base-mb MB in --base-files .jsonl.zst files, replicated under new names (copy k
  of file i is `c{k}-part-{i}.jsonl.zst`, hard links) until it holds --mb MB of text, so
  --base-files x copies tasks (a compressed file is one task). Copies repeat text: engines keep
  no cache across processes, and within one worker a copy is no easier than the first pass was.
- Tokenizer: bench_tokenize_peers' byte-level BPE of --vocab ids trained on --train-mb MB of
  the same kind of text from another seed (cached).
- Each cell: `python -m mixer.cli tokenize DATA -t TOK -o OUT --workers N --no-progress` with
  the default backend (auto), a fresh local Ray each time (RAY_ADDRESS=local), --runs times.
  --workers 1 runs in the CLI's own process (no Ray): the per-core rate the Ray cells are
  measured against.
  Reported: wall clock of the whole process, the CLI's own "in X.Ys" (dispatch to manifest,
  ray.init included), and that time less the fixed overhead measured on a tiny corpus of the
  same file count with the same N (--overhead-runs times), medians. Efficiency = rate(N) /
  (N x rate(1)) on the CLI time less overhead, so Ray's start-up does not count against
  scaling; "stops scaling" names the first N whose efficiency is below 0.8.
- Check: the .bin/.idx files of every cell's store are byte-identical to the 1-worker store.
- Output: the markdown table on stdout, progress on stderr, and the table's rows as JSON in
  --json (default $OUT/ray_scaling.json when $OUT is set), rewritten after every cell so that
  a run cut short keeps the cells it finished.

Time, 16 cores (estimate from BENCHMARKS.md: ~75 MB/s per core in-process with the fast
engine, ~7 s of Ray start-up per invocation, generation ~3 MB/s single-threaded here): corpus
125 MB ~60 s, tokenizer ~15 s, 1 worker ~30 s, each Ray cell 2 x (7-10 s) + 2000 / (N x 75) s,
about 4 minutes in all with --runs 1 (the default), ~6 with --runs 2. --mb sets the size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench_tokenize import fixed_overhead, read_corpus, run_pipeline  # noqa: E402
from bench_tokenize_peers import DATA, prepare_corpus, prepare_tokenizer  # noqa: E402

TINY = {
    "mb": 4,
    "base_mb": 2,
    "base_files": 2,
    "workers": "1,2",
    "vocab": 2000,
    "train_mb": 2,
    "overhead_runs": 1,
}
GOAL = 0.8  # efficiency vs linear


def replicated_corpus(
    data: Path, mb: float, base_mb: float, base_files: int, seed: int
) -> tuple[Path, Path, int]:
    """(corpus, base, copies): at least `mb` MB of text, hard-linked copies of the base's files."""
    base = prepare_corpus(base_mb, base_files, seed, data)
    copies = max(1, math.ceil(mb / base_mb))
    path = data / f"{base.name}-x{copies}"
    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for k in range(copies):
            for f in sorted(base.glob("*.jsonl.zst")):
                os.link(f, partial / f"c{k:03d}-{f.name}")  # hard links: no extra disk
        partial.rename(path)
    return path, base, copies


def text_mb(data: Path) -> float:
    return sum(len(t.encode("utf-8")) for t in read_corpus(data)) / 1e6


def store_digest(store: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(store.iterdir()):
        if p.suffix in (".bin", ".idx"):
            digest.update(p.name.encode())
            with open(p, "rb") as f:
                while chunk := f.read(1 << 24):
                    digest.update(chunk)
    return digest.hexdigest()


def table(rows: list[dict]) -> str:
    lines = [
        "| workers | wall s | CLI s | fixed overhead s | CLI less overhead s | MB/s "
        "| MB/s per worker | efficiency vs linear |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def num(x: float | None, digits: int) -> str:
        return "n/a" if x is None else f"{x:.{digits}f}"

    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['wall_s']:.2f} | {r['cli_s']:.2f} | {r['overhead_s']:.2f} "
            f"| {r['work_s']:.2f} | {num(r['mb_per_s'], 1)} | {num(r['mb_per_s_per_worker'], 1)} "
            f"| {num(r['efficiency'], 2)} |"
        )
    return "\n".join(lines)


def row(n: int, walls: list[float], clis: list[float], overheads: list[float], mb: float, base):
    """One cell's medians; rates are None when the work is within the overhead's noise."""
    work = statistics.median(clis) - statistics.median(overheads)
    rate = mb / work if work > 0 else None
    base_rate = base["mb_per_s_per_worker"] if base else rate and rate / n
    return {
        "workers": n,
        "wall_s": statistics.median(walls),
        "cli_s": statistics.median(clis),
        "overhead_s": statistics.median(overheads),
        "work_s": work,
        "mb_per_s": rate,
        "mb_per_s_per_worker": rate and rate / n,
        "efficiency": rate / (n * base_rate) if rate and base_rate else None,
        "runs": {"wall_s": walls, "cli_s": clis, "overhead_s": overheads},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mb", type=float, default=2000.0, help="MB of text to tokenize per cell")
    p.add_argument("--workers", default="1,2,4,8,16")
    p.add_argument("--base-mb", type=float, default=125.0, help="generated MB, then copied")
    p.add_argument("--base-files", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32_000)
    p.add_argument("--train-mb", type=float, default=20.0, help="tokenizer training text")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--overhead-runs", type=int, default=2)
    p.add_argument("--data-dir", type=Path, default=None, help=f"cache (default {DATA})")
    p.add_argument("--json", type=Path, default=None, help="default $OUT/ray_scaling.json")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="smoke run: " + ", ".join(f"{k}={v}" for k, v in TINY.items()) + ", a temp data dir",
    )
    a = p.parse_args()
    if a.tiny:
        for k, v in TINY.items():
            setattr(a, k, v)
    out_json = a.json or (
        Path(os.environ["OUT"]) / "ray_scaling.json" if "OUT" in os.environ else None
    )
    workers = [int(w) for w in a.workers.split(",")]
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_scaling-"))
    data_dir = a.data_dir or (tmp / "data" if a.tiny else DATA)
    try:
        data, base, copies = replicated_corpus(
            data_dir, a.mb, min(a.base_mb, a.mb), a.base_files, a.seed
        )
        log(f"corpus {data}")
        tokenizer = str(prepare_tokenizer(a.vocab, a.seed, a.train_mb, data_dir))
        log(f"tokenizer {tokenizer}")
        mb = text_mb(base) * copies
        files = len(list(data.glob("*.jsonl.zst")))
        header = (
            f"corpus {data.name}: {files} files, {mb:.0f} MB text; vocab {a.vocab}; "
            f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at start; "
            f"median of {a.runs} run(s), overhead median of {a.overhead_runs}"
        )
        log(header)
        rows: list[dict] = []
        reference = None
        for n in workers:
            overheads = fixed_overhead(data, tokenizer, tmp, n, a.overhead_runs)
            walls, clis = [], []
            for r in range(a.runs):
                out = tmp / f"store-{n}-{r}"
                wall, cli = run_pipeline(data, tokenizer, out, n, "auto")
                walls.append(wall)
                clis.append(cli)
                digest = store_digest(out)
                reference = reference or digest
                if digest != reference:
                    raise SystemExit(f"{n} workers wrote different bytes than the first cell")
                shutil.rmtree(out)
                log(f"{n} workers run {r + 1}: wall {wall:.1f}s, CLI {cli:.1f}s")
            rows.append(row(n, walls, clis, overheads, mb, rows[0] if rows else None))
            if out_json:
                report = {"header": header, "rows": rows, "identical_stores": True}
                out_json.parent.mkdir(parents=True, exist_ok=True)
                out_json.write_text(json.dumps(report, indent=1) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(header + "\n")
    print(table(rows))
    below = [r["workers"] for r in rows if r["efficiency"] is not None and r["efficiency"] < GOAL]
    print(
        f"\nstores byte-identical across worker counts: True; efficiency below {GOAL} from "
        + (f"{below[0]} workers" if below else f"none of {workers}")
        + f"; {time.perf_counter() - started:.0f} s in all"
    )


if __name__ == "__main__":
    main()
