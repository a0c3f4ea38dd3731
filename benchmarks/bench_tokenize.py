"""End-to-end throughput of `mixer tokenize` against the raw in-process engines it wraps.

Question: how much of the engine's speed does the pipeline (Ray start-up, reading and
decompressing .jsonl.zst, JSON parsing, writing the store) keep, and does a second worker pay?

Method:
- Corpus: built deterministically from --seed out of the bundled samples (fineweb parquet and
  dclm jsonl.zstd texts): each document splices a random subset of one sample's sentences with
  a few sentences of another and shuffles them, so no two documents are exact copies. About
  --mb MB of uncompressed text is written as --files .jsonl.zst files (or pass --data DIR).
- Raw engines, each cell a fresh subprocess: all documents are decompressed and parsed first
  (not timed), then `Tokenizer.encode_batch_fast(batch, add_special_tokens=False)` (hf) or
  `FastEncoder.encode_batch` (fast) is timed over batches of --batch documents. hf runs with
  TOKENIZERS_PARALLELISM=false (1 thread) or RAYON_NUM_THREADS=T; fast with threads=T.
- Pipeline: `python -m mixer.cli tokenize DATA -t TOK -o OUT --workers W --backend B
  --no-progress`, wall clock of the whole subprocess (interpreter, imports, Ray start-up,
  auto's verification, writing). The CLI's own "in X.Ys" (printed on stderr) is also parsed:
  it starts just before the tasks are dispatched and so still includes ray.init and Ray worker
  start-up; the same command on a tiny corpus (same file count, one short document per file)
  measures that fixed overhead, and the table shows the CLI time minus its median as an
  estimate of the pipeline's time without Ray start-up.
- MB/s counts uncompressed input bytes (the UTF-8 text of the documents, not JSON framing);
  Mtok/s counts hf tokens plus one EOS per document, the same count for every row.
- Checks: the .bin files of the hf and auto stores must be byte-identical, and a sample of
  store documents must equal the raw hf ids plus EOS.

Run: .venv/bin/python benchmarks/bench_tokenize.py [--runs 3] [--mb 30] [--data DIR]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TOKENIZER = ROOT / "pipelines" / "tokenizer.json"
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
SUMMARY = re.compile(r"mixer tokenize: wrote .* in ([0-9.]+)s")


# ---------------------------------------------------------------------------- corpus


# Globs under pipelines/samples. WEB is this benchmark's corpus; ALL_DOMAINS adds chemistry,
# music notation and math (LaTeX, Lean, web math) for benchmarks that want several domains.
WEB_SAMPLES = ("fineweb/**/*.parquet", "dclm/**/*.jsonl.zstd")
ALL_DOMAINS = (
    *WEB_SAMPLES,
    "chempile/**/*.parquet",
    "musicpile/**/*.parquet",
    "proof-pile-2/**/*.jsonl.zst",
    "proofpile/**/*.jsonl.gz",
)


def read_sample(path: str) -> list[str]:
    import gzip

    import pyarrow.parquet as pq
    import zstandard

    if path.endswith(".parquet"):
        return [t for t in pq.read_table(path, columns=["text"])["text"].to_pylist() if t]
    if path.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            raw = f.read()
    else:
        with open(path, "rb") as f:
            raw = zstandard.ZstdDecompressor().stream_reader(f).read()
    rows = (json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip())
    return [text for row in rows if (text := row.get("text"))]


def sample_texts(patterns: tuple[str, ...] = WEB_SAMPLES) -> list[str]:
    texts: list[str] = []
    samples = ROOT / "pipelines" / "samples"
    for pattern in patterns:
        for path in sorted(glob.glob(str(samples / pattern), recursive=True)):
            texts.extend(read_sample(path))
    if not texts:
        raise SystemExit("no sample texts found under pipelines/samples")
    return texts


def build_corpus(
    out: Path, mb: float, files: int, seed: int, patterns: tuple[str, ...] = WEB_SAMPLES
) -> None:
    write_corpus(out, corpus_documents(mb, seed, patterns), files)


def corpus_documents(mb: float, seed: int, patterns: tuple[str, ...] = WEB_SAMPLES) -> list[str]:
    """At least `mb` MB of documents spliced from the samples' sentences (see the docstring)."""
    rng = random.Random(seed)
    docs = [s for s in (SENTENCE_END.split(t) for t in sample_texts(patterns)) if s]
    target = int(mb * 1e6)
    written = 0
    texts: list[str] = []
    while written < target:
        main, other = rng.choice(docs), rng.choice(docs)
        keep = [s for s in main if rng.random() < 0.7] or [rng.choice(main)]
        keep += rng.sample(other, min(len(other), rng.randint(1, 5)))
        rng.shuffle(keep)
        texts.append(" ".join(keep))
        written += len(texts[-1].encode("utf-8"))
    return texts


def write_corpus(out: Path, texts: list[str], files: int) -> None:
    """Document n goes to file n % files, as {"id": n, "text": ...} lines, zstd level 3."""
    import zstandard

    lines: list[list[str]] = [[] for _ in range(files)]
    for n, text in enumerate(texts):
        lines[n % files].append(json.dumps({"id": n, "text": text}, ensure_ascii=False))
    out.mkdir(parents=True, exist_ok=True)
    for i, chunk in enumerate(lines):
        data = ("\n".join(chunk) + "\n").encode("utf-8")
        (out / f"part-{i:03d}.jsonl.zst").write_bytes(
            zstandard.ZstdCompressor(level=3).compress(data)
        )


def read_corpus(data: Path) -> list[str]:
    """Documents in the order `mixer tokenize` stores them (files sorted, lines in order)."""
    return [text for path in sorted(data.glob("*.jsonl.zst")) for text in read_corpus_file(path)]


def read_corpus_file(path: Path) -> list[str]:
    import zstandard

    with open(path, "rb") as f:
        raw = zstandard.ZstdDecompressor().stream_reader(f).read()
    return [json.loads(line)["text"] for line in raw.decode("utf-8").splitlines() if line]


# ---------------------------------------------------------------------------- children


def child_raw(engine: str, threads: int, data: str, tokenizer: str, batch: int) -> None:
    texts = read_corpus(Path(data))
    batches = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    if engine == "hf":
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(tokenizer)
        tok.encode_batch_fast(batches[0][:8], add_special_tokens=False)  # warm, not timed
        started = time.perf_counter()
        ntok = 0
        for b in batches:
            ntok += sum(len(e.ids) for e in tok.encode_batch_fast(b, add_special_tokens=False))
        seconds = time.perf_counter() - started
        ntok += len(texts)  # one EOS per document, as the store counts
    else:
        from mixer.ingest.encoders import FastEncoder, load_tokenizer

        enc = FastEncoder(load_tokenizer(tokenizer), threads=threads)
        enc.encode_batch(batches[0][:8])
        started = time.perf_counter()
        ntok = 0
        for b in batches:
            lengths, _ = enc.encode_batch(b)
            ntok += int(lengths.sum())
        seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "tokens": ntok}))


def run_child(args: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def zstandard_compress(text: str) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=3).compress(text.encode("utf-8"))


def run_pipeline(data: Path, tokenizer: str, out: Path, workers: int, backend: str):
    """(wall seconds of the CLI process, the CLI's own "in X.Ys")."""
    cmd = [sys.executable, "-m", "mixer.cli", "tokenize", str(data), "-t", tokenizer]
    cmd += ["-o", str(out), "--workers", str(workers), "--backend", backend, "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    m = SUMMARY.search(proc.stderr)
    return wall, float(m.group(1)) if m else float("nan")


RAW_CELLS = (("hf", 1), ("hf", 2), ("fast", 1), ("fast", 2))


def raw_env(engine: str, threads: int) -> dict[str, str]:
    """hf reads its thread count from the environment; fast takes `threads` as an argument."""
    if engine == "hf" and threads == 1:
        return clean_env(TOKENIZERS_PARALLELISM="false")
    if engine == "hf":
        return clean_env(TOKENIZERS_PARALLELISM="true", RAYON_NUM_THREADS=str(threads))
    return clean_env()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    for k in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS", "FASTOKENS_BPE_THREADS"):
        env.pop(k, None)
    env["RAY_ADDRESS"] = "local"  # always a fresh private cluster, never a running one
    env.update(extra)
    return env


# ---------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, help="directory of .jsonl.zst files (default: build one)")
    p.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER))
    p.add_argument("--mb", type=float, default=30.0, help="uncompressed MB of text to build")
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.child:
        engine, threads, data, tok, batch = a.child[1:]
        child_raw(engine, int(threads), data, tok, int(batch))
        return

    tmp = Path(tempfile.mkdtemp(prefix="bench_tokenize-"))
    try:
        data = a.data
        if data is None:
            data = tmp / "data"
            t0 = time.perf_counter()
            build_corpus(data, a.mb, a.files, a.seed)
            print(f"built corpus in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        texts = read_corpus(data)
        nbytes = sum(len(t.encode("utf-8")) for t in texts)
        zbytes = sum(f.stat().st_size for f in data.glob("*.jsonl.zst"))
        print(
            f"corpus: {data} {len(list(data.glob('*.jsonl.zst')))} files, {len(texts):,} docs, "
            f"{nbytes / 1e6:.1f} MB text, {zbytes / 1e6:.1f} MB compressed; tokenizer {a.tokenizer}"
        )
        results = bench(a, data, tmp, texts, nbytes)
        print_table(results, nbytes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fixed_overhead(data: Path, tokenizer: str, tmp: Path, workers: int, runs: int) -> list[float]:
    """CLI-reported seconds on a tiny corpus (`data`'s file count, one short document per
    file): start-up and ray.init, next to no work."""
    tiny = tmp / "tiny"
    if not tiny.exists():
        tiny.mkdir()
        for i in range(max(1, len(list(data.glob("*.jsonl.zst"))))):
            (tiny / f"part-{i:03d}.jsonl.zst").write_bytes(
                zstandard_compress(json.dumps({"text": "Hello world."}) + "\n")
            )
    seconds = []
    for r in range(runs):
        out = tmp / f"tiny-{workers}-{r}"
        seconds.append(run_pipeline(tiny, tokenizer, out, workers, "hf")[1])
        shutil.rmtree(out)
    return seconds


def bench(a, data: Path, tmp: Path, texts: list[str], nbytes: int) -> dict:
    res: dict[str, dict] = {}
    raw_args = lambda e, t: ["raw", e, str(t), str(data), a.tokenizer, str(a.batch)]  # noqa: E731
    for engine, threads in RAW_CELLS:
        runs = [
            run_child(raw_args(engine, threads), raw_env(engine, threads)) for _ in range(a.runs)
        ]
        res[f"raw {engine} {threads}t"] = {
            "seconds": statistics.median(r["seconds"] for r in runs),
            "tokens": runs[0]["tokens"],
            "all": [r["seconds"] for r in runs],
        }
        print(f"raw {engine} {threads}t: {res[f'raw {engine} {threads}t']['all']}", file=sys.stderr)
    for w in (1, 2):
        runs = fixed_overhead(data, a.tokenizer, tmp, w, a.runs)
        res[f"ray start {w}w"] = {"seconds": statistics.median(runs), "all": runs}
        print(f"fixed overhead (tiny corpus) {w}w: CLI-reported {runs}", file=sys.stderr)
    stores: dict[tuple[int, str], Path] = {}
    for w in (1, 2):
        for backend in ("hf", "auto"):
            walls, cli = [], []
            for r in range(a.runs):
                out = tmp / f"store-{backend}-{w}-{r}"
                wall, cli_s = run_pipeline(data, a.tokenizer, out, w, backend)
                walls.append(wall)
                cli.append(cli_s)
                if r < a.runs - 1:
                    shutil.rmtree(out)
                else:
                    stores[(w, backend)] = out
            key = f"pipeline {backend} {w}w"
            res[key] = {
                "seconds": statistics.median(walls),
                "cli": statistics.median(cli),
                "all": walls,
                "cli_all": cli,
            }
            print(f"{key}: wall {walls} cli {cli}", file=sys.stderr)
    check(stores, texts, a.tokenizer)
    return res


def check(stores: dict[tuple[int, str], Path], texts: list[str], tokenizer: str) -> None:
    from tokenizers import Tokenizer

    from mixer.store.reader import TokenStore

    for w in (1, 2):
        hf_bins = sorted(stores[(w, "hf")].rglob("*.bin"))
        auto_bins = sorted(stores[(w, "auto")].rglob("*.bin"))
        same = [x.relative_to(stores[(w, "hf")]) for x in hf_bins] == [
            x.relative_to(stores[(w, "auto")]) for x in auto_bins
        ] and all(a.read_bytes() == b.read_bytes() for a, b in zip(hf_bins, auto_bins, strict=True))
        print(
            f"check: {w} worker(s): hf and auto .bin files byte-identical: {same}"
            f" ({len(hf_bins)} files)"
        )
        if not same:
            raise SystemExit("hf and auto stores differ")
    tok = Tokenizer.from_file(tokenizer)
    store = TokenStore.open(str(stores[(2, "auto")]))
    if store.num_documents != len(texts):
        raise SystemExit(f"store has {store.num_documents} docs, corpus {len(texts)}")
    rng = random.Random(1)
    idx = sorted(rng.sample(range(len(texts)), min(300, len(texts))))
    eos = store.eos_id
    bad = 0
    for i in idx:
        want = tok.encode(texts[i], add_special_tokens=False).ids + (
            [eos] if eos is not None else []
        )
        bad += store.document(i).tolist() != want
    print(
        f"check: {len(idx)} sampled documents of the 2-worker auto store equal raw hf ids + EOS:"
        f" {len(idx) - bad}/{len(idx)}"
    )
    if bad:
        raise SystemExit("store documents differ from raw hf ids")


def print_table(res: dict, nbytes: int) -> None:
    ntok = res["raw hf 1t"]["tokens"]
    if res["raw fast 1t"]["tokens"] != ntok:
        print(f"note: fast counted {res['raw fast 1t']['tokens']:,} tokens, hf {ntok:,}")
    print(f"\n{ntok:,} tokens (hf, incl. one EOS/doc); medians of runs; MB = 1e6 bytes of text\n")
    print(
        "| configuration | s | MB/s | Mtok/s | ratio vs raw engine (same threads) "
        "| 2-worker / 1-worker speedup |"
    )
    print("|---|---|---|---|---|---|")

    def row(name: str, seconds: float, ratio: str, speedup: str) -> None:
        print(
            f"| {name} | {seconds:.2f} | {nbytes / 1e6 / seconds:.2f} | "
            f"{ntok / 1e6 / seconds:.2f} | {ratio} | {speedup} |"
        )

    for engine in ("hf", "fast"):
        for t in (1, 2):
            s = res[f"raw {engine} {t}t"]["seconds"]
            sp = f"{res[f'raw {engine} 1t']['seconds'] / s:.2f}x" if t == 2 else ""
            row(f"raw {engine} engine, {t} thread(s)", s, "1.00", sp)
    for backend, engine in (("hf", "hf"), ("auto", "fast")):
        for kind in ("wall", "cli", "cli-ray"):
            for w in (1, 2):
                r = res[f"pipeline {backend} {w}w"]
                s = {
                    "wall": r["seconds"],
                    "cli": r["cli"],
                    "cli-ray": r["cli"] - res[f"ray start {w}w"]["seconds"],
                }[kind]
                r1 = res[f"pipeline {backend} 1w"]
                s1 = {
                    "wall": r1["seconds"],
                    "cli": r1["cli"],
                    "cli-ray": r1["cli"] - res["ray start 1w"]["seconds"],
                }[kind]
                label = {
                    "wall": "wall clock (whole CLI process)",
                    "cli": "CLI-reported time (incl. ray.init)",
                    "cli-ray": "CLI time minus fixed overhead (estimate)",
                }[kind]
                if s <= 0.5 or s1 <= 0.5:  # overhead noise swamps the difference
                    print(
                        f"| pipeline --backend {backend}, {w} worker(s), {label} | n/a "
                        f"(CLI time - overhead = {s:.2f}s, within noise) | | | | |"
                    )
                    continue
                ratio = res[f"raw {engine} {w}t"]["seconds"] / s
                row(
                    f"pipeline --backend {backend}, {w} worker(s), {label}",
                    s,
                    f"{ratio:.2f} (vs raw {engine} {w}t)",
                    f"{s1 / s:.2f}x" if w == 2 else "",
                )
    for w in (1, 2):
        print(
            f"\nfixed overhead (CLI time, tiny corpus), {w} worker(s): "
            f"median {res[f'ray start {w}w']['seconds']:.2f}s"
            f" (runs {', '.join(f'{x:.2f}' for x in res[f'ray start {w}w']['all'])})",
            end="",
        )
    print()


if __name__ == "__main__":
    main()
