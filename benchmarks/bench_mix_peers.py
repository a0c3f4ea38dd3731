"""Mixing and loading against peer tools: plan build time, memory and samples/s, same data.

    make peer-venvs      # benchmarks/.venvs/{megatron,streaming,datasets}, torch pinned to 2.13.0
    .venv/bin/python benchmarks/bench_mix_peers.py [--runs 3] [--plans 10M,1B] [--samples 20000]

Question: with the same stores, weights and seq_len 2048, how long does each tool take to build
the index of a 10M- and a 1B-token plan, how much memory does it hold, how fast does it hand out
samples, and how close to the weights is the mix it delivers?

1. Two stores are written once under benchmarks/data/mix-peers (gitignored): a generic one
   (--web-tokens, random tokens, ~1000-token documents) and a small domain one (--domain-tokens)
   at --domain-weight, which the 1B plan repeats for many epochs (stores need not hold the plan).
   MosaicML Streaming and HF datasets read their own formats, so their child scripts convert the
   same blocks once (MDS, Arrow); that is timed apart and is not part of the build. Every file is
   read once so all tools start from the page cache.
2. Each tool runs in a fresh subprocess of its own virtualenv (benchmarks/peers/mix_*.py, single
   process, no DataLoader workers), --runs times, interleaved, medians reported:
   - mixer: `MixSampler(spec)`; samples via `sampler[i]` and `BatchIterator`;
   - megatron-core 0.16: `BlendedMegatronDatasetBuilder(GPTDataset, ...)` with the shard prefixes
     and weights, index cache in a fresh temp dir; samples via `dataset[i]` (a dict of tensors)
     and the bare token lookup;
   - Streaming 0.13: `StreamingDataset(streams=[Stream(proportion=w)], epoch_size=plan)`; build
     is the constructor plus the first sample (the epoch's order is made then); samples via
     iteration;
   - HF datasets: per-source shuffled passes, `interleave_datasets(probabilities=w, seed=...)`,
     first N rows; samples via row and batched iteration;
   - the ceiling: plain np.memmap slice copies of the very blocks mixer picks, located beforehand
     (and the same from ndarray views of the memmaps, without np.memmap's __getitem__).
   Build is the wall time of the tool's own calls (imports not counted). Peak RSS is VmHWM after
   the build and after reading; it counts the page-cache pages of memory-mapped files a process
   has touched (mixer, Megatron and Arrow map their data; Streaming reads its shards), so the
   private (anonymous) RSS after reading is shown too. Samples/s is over the first --samples
   samples of the plan (all of a smaller plan).
3. Each child also reports how its whole plan splits over the sources (fraction of samples, all
   samples being seq_len + 1 tokens) and the worst prefix gap |count_s(n) - w_s n| in samples.
   The first samples of the block-based tools are checked to be blocks of the stores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from mixer.store.reader import TokenStore

BENCH_DIR = Path(__file__).resolve().parent
PEERS_DIR = BENCH_DIR / "peers"
sys.path.insert(0, str(PEERS_DIR))
sys.path.insert(0, str(BENCH_DIR))
from bench_sampler import VOCAB, write_random_store  # noqa: E402
from mix_common import digest, source_blocks  # noqa: E402

VENVS = BENCH_DIR / ".venvs"
# tool -> (virtualenv under benchmarks/.venvs or None for this interpreter, script, format dir)
TOOLS = {
    "mixer": (None, "mix_mixer.py", None),
    "megatron": ("megatron", "mix_megatron.py", None),
    "streaming": ("streaming", "mix_streaming.py", "mds"),
    "interleave": ("datasets", "mix_interleave.py", "arrow"),
}
BLOCK_TOOLS = {"mixer", "streaming", "interleave"}  # their samples are the stores' blocks
CHILD_TIMEOUT_S = 600
SUFFIXES = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


def parse_tokens(text: str) -> int:
    text = text.strip().upper().replace("_", "")
    return int(float(text[:-1]) * SUFFIXES[text[-1]]) if text[-1] in SUFFIXES else int(text)


def tool_python(tool: str) -> Path | None:
    """The tool's interpreter, or None when its virtualenv has not been made."""
    venv = TOOLS[tool][0]
    if venv is None:
        return Path(sys.executable)
    python = VENVS / venv / "bin" / "python"
    return python if (VENVS / venv / ".installed").exists() and python.exists() else None


def ensure_store(root: Path, num_tokens: int, seed: int) -> TokenStore:
    if not (root / "manifest.json").exists():
        shutil.rmtree(root, ignore_errors=True)
        print(f"writing {num_tokens:,}-token store {root}", file=sys.stderr)
        write_random_store(root, num_tokens, seed)
    return TokenStore.open(root)


def source_configs(args: argparse.Namespace) -> list[dict]:
    data = args.data_dir
    web = (f"web-{args.web_tokens}", args.web_tokens, 1 - args.domain_weight, 1)
    domain = (f"domain-{args.domain_tokens}", args.domain_tokens, args.domain_weight, 2)
    sources = []
    for (dirname, tokens, weight, seed), name in zip((web, domain), ("web", "domain"), strict=True):
        store = ensure_store(data / dirname, tokens, seed)
        sources.append(
            {
                "name": name,
                "weight": weight,
                "store": str(store.root),
                "prefixes": [str(s.bin_path)[: -len(".bin")] for s in store.shards],
                "shard_tokens": [int(s.entry["tokens"]) for s in store.shards],
                "dtype": store.dtype.name,
                "mds": str(data / f"mds-seq{args.seq_len}" / dirname),
                "arrow": str(data / f"arrow-seq{args.seq_len}" / dirname),
            }
        )
    return sources


def run_child(tool: str, config: dict, convert: bool = False) -> dict:
    """Run a tool's script in a fresh process; its last JSON line, or {'error': why}."""
    python = tool_python(tool)
    if python is None:
        venv = TOOLS[tool][0]
        return {"error": f"not run: no benchmarks/.venvs/{venv} (make peer-venvs)"}
    command = [str(python), str(PEERS_DIR / TOOLS[tool][1])]
    command += ["convert"] if convert else []
    with tempfile.TemporaryDirectory(prefix=f"mix-{tool}-") as work_dir:
        env = dict(os.environ, HF_HOME=work_dir, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
        try:
            child = subprocess.run(
                [*command, json.dumps(dict(config, work_dir=work_dir))],
                capture_output=True,
                text=True,
                env=env,
                timeout=CHILD_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"failed: no result within {CHILD_TIMEOUT_S} s"}
    lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
    if child.returncode != 0 or not lines:
        tail = (child.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"failed (exit {child.returncode}): {tail}"}
    return json.loads(lines[-1])


def convert_formats(tools: list[str], config: dict, data_dir: Path) -> dict[str, dict]:
    """Convert the stores once for the tools that need their own format; seconds per tool.

    Times are kept in data_dir/conversions.json, so later runs report the first conversion."""
    record_path = data_dir / "conversions.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    costs = {}
    for tool in tools:
        key = TOOLS[tool][2]
        if key is None:
            continue
        targets = [s[key] for s in config["sources"]]
        if not all(Path(t).exists() for t in targets):
            result = run_child(tool, config, convert=True)
            if "error" in result:
                costs[tool] = result
                continue
            for source in config["sources"]:
                if source["name"] in result["convert_s"]:
                    record[source[key]] = result["convert_s"][source["name"]]
            record_path.write_text(json.dumps(record, indent=1))
        costs[tool] = {
            "seconds": sum(record.get(t, float("nan")) for t in targets),
            "bytes": sum(f.stat().st_size for t in targets for f in Path(t).rglob("*")),
        }
    return costs


def warm_page_cache(paths: list[Path]) -> None:
    for path in paths:
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file():
                with open(file, "rb") as f:
                    while f.read(1 << 24):
                        pass


def block_digests(config: dict) -> dict[str, str]:
    """Digest of every block of every source -> the source's name (for the sanity check)."""
    owners = {}
    for source in config["sources"]:
        for block in source_blocks(source, config["seq_len"]):
            owners[digest(block)] = source["name"]
    return owners


def median_result(results: list[dict]) -> dict:
    """Medians over runs of the timings and memory; the rest from the first run."""
    ok = [r for r in results if "error" not in r]
    if not ok:
        return results[0]
    out = dict(ok[0], runs=len(ok))
    for key in ok[0]:
        if key.endswith(("_s", "_mb")):
            out[key] = statistics.median(r[key] for r in ok)
    out["rates"] = {
        path: dict(
            rate, samples_per_s=statistics.median(r["rates"][path]["samples_per_s"] for r in ok)
        )
        for path, rate in ok[0]["rates"].items()
    }
    return out


def sanity(tool: str, result: dict, seq_len: int, owners: dict[str, str]) -> str:
    first = next(iter(result["rates"].values()))["first"]
    lengths_ok = all(f["len"] == seq_len + 1 for f in first)
    if tool not in BLOCK_TOOLS:
        return f"{len(first)} samples of {seq_len + 1} tokens" if lengths_ok else "bad lengths"
    found = [owners.get(f["sha1"], "?") for f in first]
    good = sum(name != "?" for name in found)
    return f"{good}/{len(first)} are store blocks ({', '.join(found)})"


def print_plan(plan_tokens: int, results: dict, config: dict, owners: dict, runs: int) -> None:
    seq_len = config["seq_len"]
    names = [s["name"] for s in config["sources"]]
    weights = " / ".join(f"{s['weight']:g}" for s in config["sources"])
    print(
        f"\n### {plan_tokens:,}-token plan: {plan_tokens // seq_len:,} samples of "
        f"{seq_len + 1} tokens, weights {' / '.join(names)} = {weights}, median of {runs} runs\n"
    )
    print(
        "| tool | build | peak RSS after build (MB) | build adds (MB) | peak RSS after "
        "reading (MB) | private RSS after reading (MB) | plan samples | fractions "
        f"{' / '.join(names)} | worst prefix gap (samples) | first samples |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for tool, r in results.items():
        if "error" in r:
            print(f"| {tool} | {r['error']} |" + " |" * 8)
            continue
        fractions = " / ".join(f"{f:.4f}" for f in r["mix"]["fractions"])
        print(
            f"| {tool} | {r['build_s'] * 1000:,.1f} ms | {r['rss_after_build_mb']:,.0f} | "
            f"{r['rss_after_build_mb'] - r['rss_before_build_mb']:,.0f} | "
            f"{r['rss_after_read_mb']:,.0f} | {r['anon_rss_after_read_mb']:,.0f} | "
            f"{r['plan_samples']:,} | {fractions} | {r['mix']['max_prefix_gap']:,.2f} | "
            f"{sanity(tool, r, seq_len, owners)} |"
        )
    ceiling = results.get("mixer", {}).get("rates", {}).get("np.memmap slice copy (ceiling)")
    print("\n| tool | path | samples measured | samples/s | x memmap slicing |")
    print("|---|---|---:|---:|---:|")
    for tool, r in results.items():
        for path, rate in r.get("rates", {}).items():
            share = f"{rate['samples_per_s'] / ceiling['samples_per_s']:.2f}" if ceiling else "-"
            print(
                f"| {tool} | {path} | {rate['samples']:,} | {rate['samples_per_s']:,.0f} | "
                f"{share} |"
            )


def print_scaling(plans: list[int], by_plan: dict[int, dict], costs: dict) -> None:
    print("\n### Build time by plan size\n")
    heads = " | ".join(f"{p / 1e6:,.0f}M tokens" for p in plans)
    print(f"| tool | {heads} | largest / smallest |")
    print("|---|" + "---:|" * (len(plans) + 1))
    for tool in by_plan[plans[0]]:
        rs = [by_plan[p][tool] for p in plans]
        if any("error" in r for r in rs):
            print(f"| {tool} | " + " | ".join("-" for _ in plans) + " | - |")
            continue
        builds = [r["build_s"] for r in rs]
        cells = " | ".join(f"{b * 1000:,.1f} ms" for b in builds)
        print(f"| {tool} | {cells} | {builds[-1] / builds[0]:.1f}x |")
    print("\n### One-time costs, not counted as build\n")
    print("| tool | what | cost |")
    print("|---|---|---:|")
    for tool, cost in costs.items():
        if "error" in cost:
            print(f"| {tool} | conversion | {cost['error']} |")
        else:
            what = {"streaming": "convert to MDS", "interleave": "convert to Arrow"}[tool]
            print(f"| {tool} | {what} ({cost['bytes'] / 1e6:,.0f} MB) | {cost['seconds']:.1f} s |")
    megatron = by_plan[plans[0]].get("megatron", {})
    if "error" not in megatron:
        compiled = megatron["helpers_compile_s"]
        note = f"{compiled:.1f} s" if compiled else "0 (prebuilt in the wheel)"
        print(f"| megatron | compile C++ dataset helpers | {note} |")
        print(
            f"| megatron | import megatron.core datasets (torch) | {megatron['import_s']:.1f} s |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plans", default="10M,1B", help="plan sizes in tokens, comma separated")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=20_000, help="samples timed per run")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--web-tokens", type=parse_tokens, default=parse_tokens("100M"))
    parser.add_argument("--domain-tokens", type=parse_tokens, default=parse_tokens("2M"))
    parser.add_argument("--domain-weight", type=float, default=0.03)
    parser.add_argument("--tools", default=",".join(TOOLS), help="subset of " + ",".join(TOOLS))
    parser.add_argument("--data-dir", type=Path, default=BENCH_DIR / "data" / "mix-peers")
    args = parser.parse_args()
    plans = [parse_tokens(p) for p in args.plans.split(",")]
    tools = [t for t in args.tools.split(",") if t]
    for tool in tools:
        if tool not in TOOLS:
            parser.error(f"--tools: unknown tool {tool!r}; known: {', '.join(TOOLS)}")

    config = {
        "seq_len": args.seq_len,
        "seed": 1234,
        "samples": args.samples,
        "batch_size": args.batch_size,
        "vocab_size": VOCAB,
        "eos_id": 0,
        "sources": source_configs(args),
    }
    costs = convert_formats(tools, config, args.data_dir)
    warm = [Path(s["store"]) for s in config["sources"]]
    warm += [Path(s[TOOLS[t][2]]) for t in tools if TOOLS[t][2] for s in config["sources"]]
    warm_page_cache([p for p in warm if p.exists()])
    owners = block_digests(config)

    by_plan = {}
    for plan_tokens in plans:
        plan_config = dict(config, plan_tokens=plan_tokens)
        runs = {tool: [] for tool in tools}
        for run in range(args.runs):
            for tool in tools:
                print(f"plan {plan_tokens:,}: {tool} run {run + 1}", file=sys.stderr)
                runs[tool].append(run_child(tool, plan_config))
                if "error" in runs[tool][-1]:
                    print(f"  {runs[tool][-1]['error']}", file=sys.stderr)
        by_plan[plan_tokens] = {tool: median_result(rs) for tool, rs in runs.items()}

    print(
        f"Stores: web {args.web_tokens:,} tokens, domain {args.domain_tokens:,} tokens "
        f"(random tokens, vocab {VOCAB:,}), seq_len {args.seq_len}, one process per tool and run, "
        f"samples/s over the first {args.samples:,} samples of each plan."
    )
    for plan_tokens in plans:
        print_plan(plan_tokens, by_plan[plan_tokens], config, owners, args.runs)
    print_scaling(plans, by_plan, costs)


if __name__ == "__main__":
    main()
