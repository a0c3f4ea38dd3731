"""Cost of steering: one `set_weights` on a run that already has N amendments, the resume of a
state with N amendments, and the provenance file's share of a store.

    .venv/bin/python benchmarks/bench_steering.py [--amendments 1000] [--runs 3]
        [--resume 250 1000 4000]

1. Three small stores; a 110k-step plan (global batch 8, seq_len 8). An online policy proposes
   weights (multiples of 1/1000) every 100 steps: amendment k is at block 800 k. Reported:
   median wall time of the k-th `MixSampler.amended` call at k = 10, 100, 1000, against
   rebuilding every phase table from scratch (what `amended` cost before it reused the tables
   of unchanged phases).
2. `BatchIterator.load_state_dict` of a state with N amendments (one every 200 blocks), on a
   fresh iterator built from the original spec, for each N of --resume (median of --runs): the
   cost per amendment stays flat when resume is linear in N.
3. `.rec` bytes against `.bin` + `.idx` bytes of a store tokenized from the bundled samples.
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

from mixer.mix.loader import BatchIterator
from mixer.mix.sampler import MixSampler
from mixer.mix.spec import Amendment, MixSpec
from mixer.store.writer import write_store

ROOT = Path(__file__).resolve().parent.parent


def spec_for(root: Path) -> MixSpec:
    rng = np.random.default_rng(0)
    stores = {}
    for name in ("web", "code", "math"):
        docs = [np.append(rng.integers(1, 1000, 30), 0) for _ in range(700)]
        stores[name] = str(write_store(root / name, docs, vocab_size=1000, eos_id=0))
    return MixSpec.from_dict(
        {
            "seq_len": 8,
            "seed": 0,
            "steps": 110_000,
            "global_batch_size": 8,
            "source": [
                {"name": n, "store": s, "weight": w}
                for (n, s), w in zip(stores.items(), (0.5, 0.3, 0.2), strict=True)
            ],
        }
    )


def proposals(n: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        counts = rng.multinomial(997, [1 / 3] * 3) + 1
        out.append({s: int(c) / 1000 for s, c in zip(("web", "code", "math"), counts, strict=True)})
    return out


def amend_costs(spec: MixSpec, n: int, marks: list[int], reuse: bool) -> dict[int, float]:
    """Wall time of the k-th amendment, for k in marks."""
    sampler, costs = MixSampler(spec), {}
    stores = dict(zip(sampler.source_names, sampler.stores, strict=True))
    for k, weights in enumerate(proposals(n), start=1):
        started = time.perf_counter()
        if reuse:
            sampler = sampler.amended(weights, at_block=800 * k)
        else:  # no tables handed over: every phase table is built again
            amendments = (*sampler.amendments, Amendment(800 * k, weights))
            sampler = MixSampler(spec, stores, amendments=amendments)
        if k in marks:
            costs[k] = time.perf_counter() - started
    return costs


def resume_cost(spec: MixSpec, n: int, runs: int) -> str:
    """Median wall time of `load_state_dict` of a state with n amendments (one every 200
    blocks, as a policy every 25 steps makes them) on a fresh iterator of the original spec."""
    amendments = [Amendment(200 * k, w) for k, w in enumerate(proposals(n), start=1)]
    plain = MixSampler(spec)
    stores = dict(zip(plain.source_names, plain.stores, strict=True))
    steered = BatchIterator(MixSampler(spec, stores, amendments=amendments), batch_size=8)
    steered.load_state_dict({"step": 100, "global_batch_size": 8}, origin=True)
    state = json.loads(json.dumps(steered.state_dict()))
    times = []
    for _ in range(runs):
        fresh = BatchIterator(MixSampler(spec, stores), batch_size=8)
        started = time.perf_counter()
        fresh.load_state_dict(state)
        times.append(time.perf_counter() - started)
    took = statistics.median(times)
    size = len(json.dumps(state))
    return f"{took * 1e3:.0f} ms ({took / n * 1e6:.0f} us per amendment, {size} B)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amendments", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--resume", type=int, nargs="*", default=[250, 1000, 4000])
    args = parser.parse_args()
    marks = [m for m in (10, 100, 1000) if m <= args.amendments]
    with tempfile.TemporaryDirectory() as tmp:
        spec = spec_for(Path(tmp))
        result: dict = {}
        for reuse in (True, False):
            if not reuse and args.amendments > 300:
                marks_now = [m for m in marks if m <= 300]
                n = 300
            else:
                marks_now, n = marks, args.amendments
            runs = [amend_costs(spec, n, marks_now, reuse) for _ in range(args.runs)]
            key = "amended (reusing tables)" if reuse else "rebuild every table"
            result[key] = {
                f"k={m}": f"{statistics.median(r[m] for r in runs) * 1e3:.1f} ms" for m in marks_now
            }
        for n in args.resume:
            result[f"load_state_dict with {n} amendments"] = resume_cost(spec, n, args.runs)
        store = Path(tmp) / "samples"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "mixer.cli",
                "tokenize",
                str(ROOT / "pipelines/samples/fineweb"),
                "-t",
                str(ROOT / "pipelines/tokenizer.json"),
                "-o",
                str(store),
                "--workers",
                "0",
                "--no-progress",
            ],
            check=True,
            capture_output=True,
        )
        sizes = {
            suffix: sum(p.stat().st_size for p in store.glob(f"*{suffix}"))
            for suffix in (".bin", ".idx", ".rec")
        }
        docs = json.loads((store / "manifest.json").read_text())["num_documents"]
        result["provenance"] = (
            f"{sizes['.rec']} bytes .rec for {docs} documents = "
            f"{sizes['.rec'] / (sizes['.bin'] + sizes['.idx']):.2%} of .bin + .idx"
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
