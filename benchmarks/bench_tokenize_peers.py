"""Tokenization throughput of `mixer tokenize` against peer tools: same corpus, tokenizer, cores.

Question: how fast is mixer next to what people use today to turn .jsonl.zst into token files
(HF `datasets` by hand, datatrove's DocumentTokenizer, Megatron-LM's fast path), and how close
does it come to the raw engine it wraps? Issue #6 targets: mixer `hf` >= 0.8x the raw hf engine
(same thread count), mixer `auto` >= 10x HF datasets. Issue #17: mixer's defaults (`auto`, in
one process) >= 1.5x the Megatron fast path's wall clock with at most half its peak RSS.

Method:
- Corpus (cached under benchmarks/data/): --mb MB of uncompressed text as --files .jsonl.zst
  files, deterministic from --seed. Half is spliced from the bundled samples of every domain
  (web, chemistry, music notation, LaTeX/Lean/web math: bench_tokenize.corpus_documents), half
  is bench_engines.generate_corpus (prose, Python code, tables, logs, chat with emoji and URLs).
  Both are synthetic, so their vocabulary is smaller than real web text's; engines with a word
  cache gain a little more here than they would on real data.
- Tokenizer (cached under benchmarks/data/): a Llama-3-style byte-level BPE of --vocab ids
  (50,000) trained (bench_engines.train_tokenizer) on 100 MB of the same kind of corpus from
  another seed. Every tool loads this one tokenizer.json file; each row's notes name the tool's
  and its `tokenizers` versions.
- Rows, each run in a fresh subprocess, --runs times, median shown:
  raw engine: bench_tokenize's child (documents decoded first, only encoding timed: the
  ceiling); mixer: `python -m mixer.cli tokenize --workers W --backend B` (1 worker runs
  in-process, 2 on a fresh local Ray); HF datasets: benchmarks/peers/tok_datasets.py in
  benchmarks/.venvs/datasets (load_dataset("json") + .map(batched=True, num_proc=2) + a flat
  numpy token file); datatrove: benchmarks/peers/tok_datatrove.py in benchmarks/.venvs/datatrove
  (JsonlReader -> DocumentTokenizer, LocalPipelineExecutor with 2 tasks on 2 workers, and 1 on
  1); Megatron fast path: benchmarks/peers/tok_megatron_fast.py in benchmarks/.venvs/megatron
  (gigatoken `encode_files` over all files on its thread pool, then megatron-core's
  IndexedDatasetBuilder writing one .bin/.idx). Peers run with their defaults, so their
  engines may use their own thread pools on top.
- Peak RSS: the ru_maxrss of each row's process (os.wait4 in a small wrapper process), median
  over runs; for Ray rows and datatrove's/datasets' worker processes only the top process is
  counted.
- Seconds: the raw rows time encoding only; every other row is the wall clock of its whole
  process (interpreter, imports, start-up, reading, tokenizing, writing). MB/s counts the UTF-8
  bytes of the documents' text.
- Ids: each tool's output of its last run is decoded to (document lengths, token stream) in
  corpus order (files sorted, lines in order; datatrove's per-task files are put back in that
  order) and compared document by document with `Tokenizer.encode_batch_fast(texts,
  add_special_tokens=False)` ids plus one EOS id, computed here.

Run: make peer-venvs && .venv/bin/python benchmarks/bench_tokenize_peers.py [--mb 100] [--runs 3]
     [--tools raw,mixer,datasets,datatrove]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tokenizers import __version__ as TOKENIZERS_VERSION

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench_engines import EOS, first_mismatch, generate_corpus, train_tokenizer  # noqa: E402
from bench_tokenize import (  # noqa: E402
    ALL_DOMAINS,
    RAW_CELLS,
    SUMMARY,
    clean_env,
    corpus_documents,
    fixed_overhead,
    raw_env,
    read_corpus,
    read_corpus_file,
    run_child,
    write_corpus,
)

DATA = BENCH / "data"
VENVS = BENCH / ".venvs"
PEERS = BENCH / "peers"
PYTHON = "py{}{}".format(*sys.version_info[:2])  # the generated corpus depends on the stdlib
TOOLS = ("raw", "mixer", "megatron", "datasets", "datatrove")
NOISE_S = 0.5  # Ray start-up varies by about this much from run to run
Arrays = tuple[np.ndarray, np.ndarray]  # (tokens per document, EOS included; token stream)


@dataclass
class Row:
    tool: str
    procs: str
    runs: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)  # peak RSS of the row's process, MB
    cli: list[float] = field(default_factory=list)  # mixer's own "in X.Ys"
    overhead: float = 0.0  # mixer's CLI-reported time on a tiny corpus: start-up, not work
    ids: str = ""
    note: str = ""

    @property
    def seconds(self) -> float | None:
        return statistics.median(self.runs) if self.runs else None

    @property
    def peak_mb(self) -> float | None:
        return statistics.median(self.rss) if self.rss else None

    @property
    def work_seconds(self) -> float | None:
        """mixer's CLI-reported time less its start-up: an estimate of the pipeline's work, or
        None where what is left is within the start-up's own run-to-run noise."""
        left = statistics.median(self.cli) - self.overhead
        return left if left > NOISE_S else None


# Runs argv[2:] and writes its peak RSS (KB) to argv[1]. A child forked straight from this
# benchmark would start with the benchmark's own peak (Linux carries ru_maxrss across fork and
# exec, and this process holds the reference ids); forked from this small process it does not.
_RSS_WRAPPER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measured(cmd: list[str], env: dict[str, str], cwd: Path | None = None):
    """(wall seconds, peak RSS in MB, return code, stdout, stderr) of one child process."""
    with tempfile.TemporaryDirectory() as tmp:
        rss = Path(tmp) / "maxrss"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", _RSS_WRAPPER, str(rss), *cmd],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - t0
        peak = int(rss.read_text()) / 1024 if rss.exists() else float("nan")
        return wall, peak, proc.returncode, proc.stdout, proc.stderr


class PeerFailed(Exception):
    """A peer tool's run failed; its row says why instead of ending the benchmark."""


# ---------------------------------------------------------------------------- inputs


def mixed_documents(mb: float, seed: int) -> list[str]:
    """Half sample-spliced documents of every domain, half bench_engines' generator, shuffled."""
    docs = corpus_documents(mb / 2, seed, ALL_DOMAINS) + generate_corpus(int(mb / 2 * 1e6), seed)
    random.Random(seed).shuffle(docs)
    return docs


def prepare_corpus(mb: float, files: int, seed: int, data: Path = DATA) -> Path:
    path = data / f"corpus-mixed-mb{mb:g}-files{files}-seed{seed}-{PYTHON}"
    if not path.exists():
        t0 = time.perf_counter()
        partial = path.with_name(path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        write_corpus(partial, mixed_documents(mb, seed), files)
        partial.rename(path)
        print(f"built corpus {path} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return path


def prepare_tokenizer(vocab: int, seed: int, train_mb: float = 100, data: Path = DATA) -> Path:
    """Trained on a corpus like the benchmark's but from another seed, as a real one would be.
    (The synthetic text needs about 100 MB before a 50k vocabulary fills up: ~35 s.)"""
    path = data / f"tokenizer-bytebpe-{vocab}-train{train_mb:g}mb-seed{seed}-{PYTHON}.json"
    if not path.exists():
        t0 = time.perf_counter()
        data.mkdir(parents=True, exist_ok=True)
        text = train_tokenizer(mixed_documents(train_mb, seed + 1000), vocab)
        path.with_suffix(".partial").write_text(text)
        path.with_suffix(".partial").rename(path)
        print(f"trained tokenizer {path} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return path


def docs_per_file(data: Path) -> dict[str, int]:
    return {p.name: len(read_corpus_file(p)) for p in sorted(data.glob("*.jsonl.zst"))}


# ---------------------------------------------------------------------------- ids


def reference_ids(texts: list[str], tokenizer: Path, eos_id: int, batch: int = 512) -> Arrays:
    """hf ids (add_special_tokens=False) plus EOS for every document, in corpus order."""
    tok = Tokenizer.from_file(str(tokenizer))
    lengths, tokens = [], []
    for i in range(0, len(texts), batch):
        for e in tok.encode_batch_fast(texts[i : i + batch], add_special_tokens=False):
            lengths.append(len(e.ids) + 1)
            tokens.append(np.asarray(e.ids + [eos_id], dtype=np.uint32))
    return np.asarray(lengths, np.int64), np.concatenate(tokens)


def store_arrays(path: Path) -> Arrays:
    from mixer.store.reader import TokenStore

    store = TokenStore.open(path)
    lengths = np.concatenate([s.index.lengths for s in store.shards])
    return lengths.astype(np.int64), store.tokens(0, store.num_tokens)


def datasets_arrays(out: Path, result: dict) -> Arrays:
    lengths = np.load(f"{out}.lengths.npy")
    return lengths, np.memmap(f"{out}.bin", dtype=result["dtype"], mode="r")


def datatrove_arrays(result: dict, counts: dict[str, int]) -> Arrays:
    """Cut each task's stream into its input files' documents, then join the files in order."""
    dtype = {2: "<u2", 4: "<u4"}[result["token_bytes"]]
    by_file: dict[str, Arrays] = {}
    for output in result["outputs"]:
        tokens = np.fromfile(output["ds"], dtype)
        ends = np.fromfile(output["index"], "<u8").astype(np.int64)
        lengths = np.diff(ends, prepend=0)
        doc = 0
        for name in output["files"]:
            n = counts[Path(name).name]
            start = int(ends[doc - 1]) if doc else 0
            stop = int(ends[doc + n - 1]) if n else start
            by_file[Path(name).name] = (lengths[doc : doc + n], tokens[start:stop])
            doc += n
        if doc != len(ends):
            raise PeerFailed(f"{output['ds']}: {len(ends)} documents, its files hold {doc}")
    missing = sorted(set(counts) - set(by_file))
    if missing:
        raise PeerFailed(f"datatrove wrote nothing for {missing}")
    names = sorted(counts)
    return (
        np.concatenate([by_file[n][0] for n in names]),
        np.concatenate([by_file[n][1] for n in names]),
    )


def compare(reference: Arrays, got: Arrays) -> str:
    where = first_mismatch(reference, got)
    if where is None:
        return f"equal ({len(got[0]):,} docs)"
    return f"DIFFERENT at {where}"


# ---------------------------------------------------------------------------- rows


def timed_runs(row: Row, runs: int, tmp: Path, once: Callable[[Path], Callable[[], Arrays]], ref):
    """Run `once(out_dir)` `runs` times (it appends its seconds to the row and returns a loader
    of its output), then check the last run's ids against `ref`; outputs are removed."""
    outs = []
    try:
        for r in range(runs):
            out = tmp / f"{row.tool}-{row.procs}-{r}".replace(" ", "_").replace("/", "_")
            out.mkdir()
            outs.append(out)
            load = once(out)
            print(f"{row.tool} [{row.procs}] run {r + 1}: {row.runs[-1]:.2f}s", file=sys.stderr)
        row.ids = compare(ref, load())
    except PeerFailed as e:
        row.runs, row.note = [], f"failed: {e}"
    finally:
        for out in outs:
            shutil.rmtree(out, ignore_errors=True)


def raw_rows(a, data: Path, tokenizer: Path) -> list[Row]:
    rows = []
    for engine, threads in RAW_CELLS:
        row = Row(f"raw {engine} engine", f"{threads} thread(s)")
        args = ["raw", engine, str(threads), str(data), str(tokenizer), str(a.batch)]
        for _ in range(a.runs):
            row.runs.append(run_child(args, raw_env(engine, threads))["seconds"])
        row.ids = "(timing only)"
        row.note = "encoding only, documents already in memory"
        rows.append(row)
        print(f"{row.tool} [{row.procs}]: {row.runs}", file=sys.stderr)
    return rows


def mixer_rows(a, data: Path, tokenizer: Path, tmp: Path, ref: Arrays) -> list[Row]:
    rows = []
    overhead = {
        w: statistics.median(fixed_overhead(data, str(tokenizer), tmp, w, a.runs)) for w in (1, 2)
    }
    print(f"mixer fixed overhead (tiny corpus, CLI-reported): {overhead}", file=sys.stderr)
    for backend in a.backends.split(","):
        for workers in (1, 2):
            procs = "1 worker (in-process)" if workers == 1 else f"{workers} Ray workers"
            row = Row(f"mixer --backend {backend}", procs, overhead=overhead[workers])

            def once(out: Path, row=row, backend=backend, workers=workers):
                store = out / "store"
                cmd = [sys.executable, "-m", "mixer.cli", "tokenize", str(data)]
                cmd += ["-t", str(tokenizer), "-o", str(store), "--workers", str(workers)]
                cmd += ["--backend", backend, "--no-progress"]
                wall, peak, rc, _, err = measured(cmd, clean_env())
                if rc:
                    raise PeerFailed(f"mixer exited {rc}: {err.strip()[-300:]}")
                m = SUMMARY.search(err)
                row.runs.append(wall)
                row.rss.append(peak)
                row.cli.append(float(m.group(1)) if m else float("nan"))
                if backend == "auto":
                    row.note = f"shards by {', '.join(sorted(shard_backends(store)))}"
                return lambda: store_arrays(store)

            timed_runs(row, a.runs, tmp, once, ref)
            rows.append(row)
    return rows


def run_peer(venv: str, script: str, cfg: dict, cwd: Path, row: Row | None = None):
    """(wall seconds of the peer's process, its JSON line); it runs in `cwd`, where anything
    it leaves behind is removed with that run's output. Its peak RSS goes to `row`."""
    cmd = [str(VENVS / venv / "bin" / "python"), str(PEERS / script), json.dumps(cfg)]
    env = clean_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    wall, peak, rc, out, err = measured(cmd, env, cwd)
    if rc:
        tail = (err.strip() or out.strip() or "no output").splitlines()[-1]
        print(err[-3000:], file=sys.stderr)
        raise PeerFailed(f"{script} exited {rc}: {tail[:200]}")
    if row is not None:
        row.rss.append(peak)
    return wall, json.loads(out.strip().splitlines()[-1])


def shard_backends(store: Path) -> set[str]:
    manifest = json.loads((store / "manifest.json").read_text())
    return {shard["backend"] for shard in manifest["shards"]}


def megatron_rows(a, data: Path, tokenizer: Path, eos_id: int, tmp: Path, ref) -> list[Row]:
    """Megatron-LM's fast path (gigatoken encode_files + IndexedDatasetBuilder), and its
    encode_files step alone as timed inside the same process."""
    row = Row("Megatron fast path: gigatoken encode_files + IndexedDatasetBuilder", "2 threads")
    alone = Row("  of which gigatoken encode_files alone (in-process timer)", "2 threads")
    if note := venv_missing("megatron"):
        row.note = note
        return [row]
    files = [str(p) for p in sorted(data.glob("*.jsonl.zst"))]

    def once(out: Path):
        from mixer.store.format import read_index

        cfg = {"files": files, "tokenizer": str(tokenizer), "eos_id": eos_id}
        cfg["out"] = str(out / "megatron")
        wall, result = run_peer("megatron", "tok_megatron_fast.py", cfg, cwd=out, row=row)
        row.runs.append(wall)
        alone.runs.append(result["encode_files_s"])
        row.note = (
            "gigatoken {gigatoken}, megatron-core {megatron_core}: imports {import_s:.1f}s, "
            "encode_files {encode_files_s:.2f}s, write {write_s:.2f}s".format(**result)
        )

        def load() -> Arrays:
            index = read_index(out / "megatron.idx")
            tokens = np.fromfile(out / "megatron.bin", dtype=result["dtype"])
            return np.asarray(index.lengths, np.int64), tokens

        return load

    timed_runs(row, a.runs, tmp, once, ref)
    alone.ids, alone.note = "(timing only)", "encoding only, files read by gigatoken"
    return [row, alone]


def venv_missing(name: str) -> str | None:
    if (VENVS / name / ".installed").exists():
        return None
    print(f"benchmarks/.venvs/{name} is missing: run `make peer-venvs` first", file=sys.stderr)
    return f"not run: benchmarks/.venvs/{name} missing (`make peer-venvs`)"


def datasets_rows(a, data: Path, tokenizer: Path, eos_id: int, tmp: Path, ref) -> list[Row]:
    row = Row("HF datasets load_dataset + map", "num_proc=2")
    if note := venv_missing("datasets"):
        row.note = note
        return [row]
    files = [str(p) for p in sorted(data.glob("*.jsonl.zst"))]

    def once(out: Path):
        cfg = {"files": files, "tokenizer": str(tokenizer), "eos_id": eos_id}
        cfg.update(out=str(out / "tokens"), num_proc=2, batch_size=1000)
        wall, result = run_peer("datasets", "tok_datasets.py", cfg, cwd=out, row=row)
        row.runs.append(wall)
        row.note = (
            "datasets {datasets}, tokenizers {tokenizers} (own thread pool on in each process): "
            "load {load_s:.1f}s, map {map_s:.1f}s, write {write_s:.1f}s".format(**result)
        )
        return lambda: datasets_arrays(out / "tokens", result)

    timed_runs(row, a.runs, tmp, once, ref)
    return [row]


def datatrove_rows(a, data: Path, tokenizer: Path, tmp: Path, ref) -> list[Row]:
    rows = [Row("datatrove DocumentTokenizer", f"{t} task(s) on {t} worker(s)") for t in (2, 1)]
    if note := venv_missing("datatrove"):
        for row in rows:
            row.note = note
        return rows
    counts = docs_per_file(data)
    for row, tasks in zip(rows, (2, 1), strict=True):

        def once(out: Path, row=row, tasks=tasks):
            cfg = {"data": str(data), "tokenizer": str(tokenizer), "eos_token": EOS}
            cfg.update(out=str(out / "tokens"), logs=str(out / "logs"))
            cfg.update(tasks=tasks, workers=tasks)
            wall, result = run_peer("datatrove", "tok_datatrove.py", cfg, cwd=out, row=row)
            row.runs.append(wall)
            row.note = (
                "datatrove {datatrove}, tokenizers {tokenizers} (own thread pool on in each "
                "process)".format(**result)
            )
            return lambda: datatrove_arrays(result, counts)

        timed_runs(row, a.runs, tmp, once, ref)
    return rows


# ---------------------------------------------------------------------------- tables


MEGATRON = ("Megatron fast path: gigatoken encode_files + IndexedDatasetBuilder", "2 threads")


def print_tables(rows: list[Row], nbytes: int) -> None:
    by_name = {(r.tool, r.procs): r for r in rows}
    raw_hf = by_name.get(("raw hf engine", "1 thread(s)"))
    hf_datasets = by_name.get(("HF datasets load_dataset + map", "num_proc=2"))
    megatron = by_name.get(MEGATRON)

    def ratio(base: Row | None, row: Row) -> str:
        if base is None or base.seconds is None or row.seconds is None:
            return ""
        return f"{base.seconds / row.seconds:.2f}x"

    print(
        "\n| tool | workers/procs | s | MB/s | peak RSS MB | vs raw hf 1 thread | vs HF datasets "
        "| vs Megatron fast path | ids | notes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.seconds is None:
            status = "failed" if r.note.startswith("failed") else "not run"
            print(f"| {r.tool} | {r.procs} | {status} | | | | | | | {r.note} |")
            continue
        rss = f"{r.peak_mb:.0f}" if r.peak_mb is not None else ""
        print(
            f"| {r.tool} | {r.procs} | {r.seconds:.2f} | {nbytes / 1e6 / r.seconds:.2f} | {rss} "
            f"| {ratio(raw_hf, r)} | {ratio(hf_datasets, r)} | {ratio(megatron, r)} | {r.ids} "
            f"| {r.note} |"
        )
    print_scaling(by_name)
    print_targets(by_name, hf_datasets)
    auto = by_name.get(("mixer --backend auto", "1 worker (in-process)"))
    if auto and auto.seconds and megatron and megatron.seconds and auto.rss and megatron.rss:
        print(
            "target mixer auto, 1 worker (in-process), >= 1.5x the Megatron fast path (wall "
            f"clock): {verdict(megatron.seconds, auto.seconds, 1.5)}; peak RSS <= 0.5x: "
            f"{auto.peak_mb:.0f} MB vs {megatron.peak_mb:.0f} MB = "
            f"{auto.peak_mb / megatron.peak_mb:.2f}x "
            f"({'met' if auto.peak_mb <= megatron.peak_mb / 2 else 'NOT met'})"
        )


def print_scaling(by_name: dict) -> None:
    lines = []
    for engine in ("hf", "fast"):
        one = by_name.get((f"raw {engine} engine", "1 thread(s)"))
        two = by_name.get((f"raw {engine} engine", "2 thread(s)"))
        if one and two:
            lines.append(
                f"| raw {engine} engine (threads) | {one.seconds:.2f} | {two.seconds:.2f} "
                f"| {one.seconds / two.seconds:.2f}x | | | |"
            )
    for backend in ("hf", "fast", "giga", "auto"):
        one = by_name.get((f"mixer --backend {backend}", "1 worker (in-process)"))
        two = by_name.get((f"mixer --backend {backend}", "2 Ray workers"))
        if one and two and one.seconds and two.seconds:
            cli = f"{statistics.median(one.cli):.2f} / {statistics.median(two.cli):.2f}"
            work = f"{seconds(one.work_seconds)} / {seconds(two.work_seconds)}"
            lines.append(
                f"| mixer --backend {backend} | {one.seconds:.2f} | {two.seconds:.2f} "
                f"| {one.seconds / two.seconds:.2f}x | {cli} | {work} "
                f"| {speedup(one.work_seconds, two.work_seconds)} |"
            )
    if lines:
        print("\n| configuration | 1 worker s | 2 workers s | 2w / 1w speedup", end=" ")
        print("| CLI-reported 1w / 2w s | less fixed overhead 1w / 2w s | speedup |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(lines))


def print_targets(by_name: dict, hf_datasets: Row | None) -> None:
    print()
    for workers, procs in ((1, "1 worker (in-process)"), (2, "2 Ray workers")):
        mixer = by_name.get(("mixer --backend hf", procs))
        raw = by_name.get(("raw hf engine", f"{workers} thread(s)"))
        if mixer and raw and mixer.seconds:
            print(
                f"target mixer hf, {procs}, >= 0.8x raw hf {workers} thread(s): "
                f"{verdict(raw.seconds, mixer.seconds, 0.8)} on wall clock, "
                f"{verdict(raw.seconds, mixer.work_seconds, 0.8)} less fixed overhead"
            )
        auto = by_name.get(("mixer --backend auto", procs))
        if auto and auto.seconds and hf_datasets and hf_datasets.seconds:
            print(
                f"target mixer auto, {procs}, >= 10x HF datasets (num_proc=2, wall clock): "
                f"{verdict(hf_datasets.seconds, auto.seconds, 10)}"
            )


def verdict(base: float, seconds: float | None, target: float) -> str:
    if seconds is None:
        return "n/a (within start-up noise)"
    ratio = base / seconds
    return f"{ratio:.2f}x ({'met' if ratio >= target else 'NOT met'})"


def seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def speedup(one: float | None, two: float | None) -> str:
    return "n/a" if one is None or two is None else f"{one / two:.2f}x"


# ---------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, help="directory of .jsonl.zst files (default: build one)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer.json (default: train one)")
    p.add_argument("--mb", type=float, default=100.0, help="uncompressed MB of text to build")
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab", type=int, default=50_000, help="BPE vocabulary to train")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--batch", type=int, default=512, help="documents per raw-engine call")
    p.add_argument("--tools", default=",".join(TOOLS), help="subset of " + ",".join(TOOLS))
    p.add_argument("--backends", default="hf,fast,giga,auto", help="mixer backends to run")
    a = p.parse_args()
    tools = set(a.tools.split(","))
    if tools - set(TOOLS):
        p.error(f"unknown tools {sorted(tools - set(TOOLS))}")
    if set(a.backends.split(",")) - {"hf", "fast", "giga", "auto"}:
        p.error(f"--backends takes a subset of hf,fast,giga,auto, got {a.backends!r}")

    data = a.data or prepare_corpus(a.mb, a.files, a.seed)
    tokenizer = a.tokenizer or prepare_tokenizer(a.vocab, a.seed)
    texts = read_corpus(data)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    hf = Tokenizer.from_file(str(tokenizer))
    eos_id = hf.token_to_id(EOS)
    if eos_id is None:
        raise SystemExit(f"{tokenizer} has no {EOS} token")
    ref = reference_ids(texts, tokenizer, eos_id)
    del texts
    sha = hashlib.sha256(tokenizer.read_bytes()).hexdigest()[:12]
    print(
        f"corpus: {data} ({len(ref[0]):,} docs, {nbytes / 1e6:.1f} MB text, "
        f"{sum(f.stat().st_size for f in data.glob('*.jsonl.zst')) / 1e6:.1f} MB compressed); "
        f"tokenizer: {tokenizer} (vocab {hf.get_vocab_size():,}, sha256 {sha}; mixer's venv has "
        f"tokenizers {TOKENIZERS_VERSION}); "
        f"{len(ref[1]):,} tokens incl. EOS; median of {a.runs} run(s)"
    )

    tmp = Path(tempfile.mkdtemp(prefix="bench_tokenize_peers-"))
    rows: list[Row] = []
    try:
        if "raw" in tools:
            rows += raw_rows(a, data, tokenizer)
        if "mixer" in tools:
            rows += mixer_rows(a, data, tokenizer, tmp, ref)
        if "megatron" in tools:
            rows += megatron_rows(a, data, tokenizer, eos_id, tmp, ref)
        if "datasets" in tools:
            rows += datasets_rows(a, data, tokenizer, eos_id, tmp, ref)
        if "datatrove" in tools:
            rows += datatrove_rows(a, data, tokenizer, tmp, ref)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        "\nraw rows: encoding only, documents already in memory (the ceiling); other rows: wall"
        " clock of the whole process. ids: document by document against hf ids + EOS."
    )
    print_tables(rows, nbytes)


if __name__ == "__main__":
    main()
