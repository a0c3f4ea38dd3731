"""A/B of the in-process tokenize core (read + encode) against another commit's readers.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/ab_read_core.py [--base main] [--runs 9]

The machine is shared and its load drifts, so separate invocations cannot compare two
versions. Here `mixer/ingest/readers.py` of `--base` (read with `git show`) is loaded as a
second module next to the checkout's, and each run times, in turn, both through what
`mixer.ingest.task.run_task` does per task short of writing: `read_numbered` -> `batches` ->
`read_ahead` (the reading thread) -> the fast engine's `encode_batch`, over
bench_tokenize_peers' mixed corpus (--mb MB in --files .jsonl.zst files, cached under
benchmarks/data/) and a 32k byte-level BPE trained on 20 MB of the same kind of text.
Reading alone (`read_numbered` drained) is timed the same way. Both sides' documents, record
numbers and token counts are checked equal first. Reported: medians of wall clock and of
process CPU time (both threads), and the median over runs of checkout / base.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ab_base import module_at  # noqa: E402
from bench_tokenize_peers import prepare_corpus, prepare_tokenizer  # noqa: E402

from mixer.ingest import readers  # noqa: E402
from mixer.ingest.encoders import FastEncoder, load_tokenizer  # noqa: E402
from mixer.ingest.inputs import Task  # noqa: E402
from mixer.ingest.task import READ_AHEAD, batches, read_ahead  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="main", help="commit whose readers are the A side")
    parser.add_argument("--mb", type=float, default=100)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()

    base = module_at(args.base, "mixer/ingest/readers.py", "base_readers")
    data = prepare_corpus(args.mb, args.files, 0)
    encoder = FastEncoder(load_tokenizer(str(prepare_tokenizer(32_000, 0, train_mb=20))))
    tasks = [Task(str(p), "jsonl.zst", p.stat().st_size) for p in sorted(data.glob("*.jsonl.zst"))]

    def read(module) -> list:
        return [
            list(module.read_numbered(task, module.ReadOptions(), module.ReadStats()))
            for task in tasks
        ]

    def core(module) -> int:
        tokens = 0
        for task in tasks:
            numbered = module.read_numbered(task, module.ReadOptions(), module.ReadStats())
            with contextlib.closing(read_ahead(batches(numbered), READ_AHEAD)) as ahead:
                for texts, _ in ahead:
                    tokens += len(encoder.encode_batch(texts)[1])
        return tokens

    if read(base) != read(readers) or core(base) != core(readers):
        raise SystemExit(f"{args.base} and the checkout read different documents")
    sides = {args.base: base, "checkout": readers}
    results = {}
    for what, fn in (("read + encode", core), ("read only", read)):
        wall: dict[str, list[float]] = {name: [] for name in sides}
        cpu: dict[str, list[float]] = {name: [] for name in sides}
        for r in range(args.runs):
            for name in sides if r % 2 == 0 else reversed(list(sides)):
                t, c = time.perf_counter(), time.process_time()
                fn(sides[name])
                wall[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
        results[what] = (wall, cpu)

    print(f"{args.mb:g} MB in {len(tasks)} files, {args.runs} alternated runs\n")
    print(f"| path | {args.base} wall s | checkout wall s | ratio | {args.base} CPU s ", end="")
    print("| checkout CPU s | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for what, (wall, cpu) in results.items():
        cells = []
        for times in (wall, cpu):
            a, b = times[args.base], times["checkout"]
            ratio = statistics.median(y / x for x, y in zip(a, b, strict=True))
            cells += [f"{statistics.median(a):.3f}", f"{statistics.median(b):.3f}", f"{ratio:.2f}"]
        print(f"| {what} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
