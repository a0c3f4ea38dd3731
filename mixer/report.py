"""What `mixer mix` does: report a plan, export the mixed stream as a store, plot it.

Everything here works from a `MixSampler`'s closed-form counts, so a report over a trillion-token
plan takes milliseconds and reads no tokens.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from mixer.errors import MixerError
from mixer.sampler import READ_CHUNK_ROWS, MixSampler
from mixer.spec import MixSpec
from mixer.store import MANIFEST, ShardWriter, build_manifest, write_json_atomic

LISTED_REPEATS = 100  # repeat starts listed per source; the count of repeats is always given
SHARD_BYTES = 1 << 30  # exported shards stay below this size


def mix_report(sampler: MixSampler) -> dict[str, Any]:
    """Per phase and source: blocks, tokens, target, used and achieved fractions; per source:
    epochs used and the global index where each repeat (epoch >= 1) begins."""
    seq_len = sampler.seq_len
    phases = []
    for table in sampler.phases:
        sources = {}
        for s, name in enumerate(sampler.source_names):
            sources[name] = {
                "target": table.targets[s],
                "used": table.used_weights[s],
                "blocks": table.draws[s],
                "tokens": table.draws[s] * seq_len,
                "achieved": table.draws[s] / table.blocks,
            }
        phases.append(
            {
                "name": table.name,
                "start": table.start,
                "blocks": table.blocks,
                "tokens": table.blocks * seq_len,
                "period": table.period,
                "sources": sources,
            }
        )
    sources = {}
    for s, spec in enumerate(sampler.spec.sources):
        drawn, n = sampler.draws[s], sampler.source_blocks[s]
        repeats = max(0, -(-drawn // n) - 1)
        sources[spec.name] = {
            "store": spec.store,
            "store_blocks": n,
            "blocks": drawn,
            "tokens": drawn * seq_len,
            "fraction": drawn / len(sampler),
            "epochs": drawn / n,
            "max_repeats": spec.max_repeats,
            "repeats": repeats,
            "repeat_starts": [
                sampler.index_of_draw(spec.name, e * n)
                for e in range(1, min(repeats, LISTED_REPEATS) + 1)
            ],
        }
    return {
        "seq_len": seq_len,
        "seed": sampler.spec.seed,
        "blocks": len(sampler),
        "tokens": len(sampler) * seq_len,
        "phases": phases,
        "sources": sources,
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as aligned text tables for a terminal."""
    lines = [
        f"mix: {report['blocks']:,} blocks x seq_len {report['seq_len']} = "
        f"{report['tokens']:,} tokens, seed {report['seed']}"
    ]
    width = max(len("source"), *(len(name) for name in report["sources"]))
    for phase in report["phases"]:
        end = phase["start"] + phase["blocks"]
        lines += [
            "",
            f"phase {phase['name']}: blocks [{phase['start']:,}, {end:,}), "
            f"{phase['tokens']:,} tokens, period {phase['period']:,}",
            f"  {'source':<{width}}  {'target':>10}  {'used':>10}  {'achieved':>10}"
            f"  {'blocks':>14}  {'tokens':>18}",
        ]
        for name, row in phase["sources"].items():
            lines.append(
                f"  {name:<{width}}  {row['target']:>10.6g}  {row['used']:>10.6g}"
                f"  {row['achieved']:>10.6g}  {row['blocks']:>14,}  {row['tokens']:>18,}"
            )
    lines += ["", "sources over the run:"]
    for name, row in report["sources"].items():
        limit = f", max_repeats {row['max_repeats']}" if row["max_repeats"] is not None else ""
        line = (
            f"  {name}: {row['epochs']:.1f} epochs ({row['blocks']:,} blocks drawn of "
            f"{row['store_blocks']:,}{limit}), fraction {row['fraction']:.6g}"
        )
        if row["repeats"]:
            starts = ", ".join(f"{i:,}" for i in row["repeat_starts"][:5])
            more = row["repeats"] - min(row["repeats"], 5)
            line += f"; repeats start at {starts}" + (f" (+{more:,} more)" if more else "")
        lines.append(line)
    return "\n".join(lines)


def export_mix(
    sampler: MixSampler,
    out_dir: str | os.PathLike,
    start: int = 0,
    stop: int | None = None,
    progress: bool = True,
    shard_blocks: int | None = None,
) -> Path:
    """Write blocks [start, stop) as a token store, one sequence of seq_len + 1 tokens each.

    For trainers that cannot call Python: sequence k of the output (tokens
    [k (seq_len + 1), (k + 1) (seq_len + 1)) of the concatenated .bin files) is global block
    start + k. Shards appear under their final names only when complete and the manifest,
    which records the spec and the range, is written last.
    """
    stop = len(sampler) if stop is None else stop
    if not 0 <= start < stop <= len(sampler):
        raise MixerError(
            f"--start/--stop: [{start}, {stop}) is not a range inside [0, {len(sampler)}]"
        )
    out = Path(out_dir)
    if (out / MANIFEST).exists():
        raise MixerError(f"{out}: already a token store; export into a new directory")
    out.mkdir(parents=True, exist_ok=True)
    width = sampler.seq_len + 1
    per_shard = shard_blocks or max(1, SHARD_BYTES // (width * sampler.dtype.itemsize))
    bar = tqdm(total=stop - start, unit="block", disable=not progress, file=sys.stderr)
    shards: list[dict[str, Any]] = []
    writer = None
    try:
        for first in range(start, stop, per_shard):
            last = min(first + per_shard, stop)
            writer = ShardWriter(out, f"mix-{len(shards):05d}", sampler.dtype)
            for lo in range(first, last, READ_CHUNK_ROWS):
                hi = min(lo + READ_CHUNK_ROWS, last)
                tokens = sampler.read_many(np.arange(lo, hi)).tokens
                writer.add_documents(np.full(hi - lo, width), tokens.ravel())
                bar.update(hi - lo)
            shards.append(writer.close())
            writer = None
    finally:
        bar.close()
        if writer is not None:
            writer.abort()
    first_store = sampler.stores[0]
    mix = {
        "spec": sampler.spec.to_dict(),
        "start": start,
        "stop": stop,
        "sequence_tokens": width,
    }
    manifest = build_manifest(
        shards,
        tokenizer=first_store.manifest["tokenizer"],
        eos_id=first_store.eos_id,
        dtype=sampler.dtype,
        mix=mix,
    )
    write_json_atomic(out / MANIFEST, manifest)
    return out


def plot_mix(sampler: MixSampler, out_png: str | os.PathLike, points: int = 1000) -> None:
    """Cumulative fraction per source and epochs per source over the stream, as a PNG."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MixerError("--plot needs matplotlib: pip install 'mixer[plot]'") from None
    stops = np.unique(np.linspace(1, len(sampler), points).astype(np.int64))
    counts = sampler.source_counts(stops)
    fig = Figure(figsize=(10, 7), layout="constrained")
    frac_ax, epoch_ax = fig.subplots(2, 1, sharex=True)
    for s, name in enumerate(sampler.source_names):
        frac_ax.plot(stops, counts[:, s] / stops, label=name)
        epoch_ax.plot(stops, counts[:, s] / sampler.source_blocks[s], label=name)
    for table in sampler.phases[1:]:
        for ax in (frac_ax, epoch_ax):
            ax.axvline(table.start, color="grey", linestyle=":", linewidth=1)
    frac_ax.set_ylabel("cumulative fraction")
    frac_ax.legend(loc="best")
    epoch_ax.set_ylabel("epochs")
    epoch_ax.set_xlabel("global block index")
    fig.savefig(out_png, dpi=100)


def run_mix(
    spec_path: str,
    report: bool,
    as_json: bool,
    export: str | None,
    start: int,
    stop: int | None,
    plot: str | None,
    verify: bool = False,
) -> int:
    """`mixer mix SPEC.toml`: report (the default, or with --report/--json), --export, --plot.

    The report goes to stdout; status lines and progress go to stderr so --json stays parseable.
    """
    sampler = MixSampler(MixSpec.from_toml(spec_path), verify=verify)
    if report or as_json or not (export or plot):
        data = mix_report(sampler)
        print(json.dumps(data, indent=2) if as_json else format_report(data))
    if export:
        out = export_mix(sampler, export, start, stop, progress=sys.stderr.isatty())
        last = len(sampler) if stop is None else stop
        print(f"exported blocks [{start}, {last}) to {out}", file=sys.stderr)
    if plot:
        plot_mix(sampler, plot)
        print(f"wrote {plot}", file=sys.stderr)
    return 0
