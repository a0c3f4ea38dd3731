"""What `mixer mix` does: report a plan and plot it (export: mixer.mix.export).

Everything here works from a `MixSampler`'s closed-form counts, so a report over a trillion-token
plan takes milliseconds and reads no tokens.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

from mixer.extras import matplotlib_figure
from mixer.mix.export import export_mix, is_exported
from mixer.mix.sampler import MixSampler
from mixer.mix.spec import MixSpec

LISTED_REPEATS = 100  # repeat starts listed per source; the count of repeats is always given


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


def plot_mix(sampler: MixSampler, out_png: str | os.PathLike, points: int = 1000) -> None:
    """Cumulative fraction per source and epochs per source over the stream, as a PNG."""
    Figure = matplotlib_figure("--plot")
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
    force: bool = False,
) -> int:
    """`mixer mix SPEC.toml`: report (the default, or with --report/--json), --export, --plot.

    The report goes to stdout; status lines and progress go to stderr so --json stays parseable.
    """
    sampler = MixSampler(MixSpec.from_toml(spec_path), verify=verify)
    if report or as_json or not (export or plot):
        data = mix_report(sampler)
        print(json.dumps(data, indent=2) if as_json else format_report(data))
    if export:
        last = len(sampler) if stop is None else stop
        done = is_exported(sampler, export, start, last)
        out = export_mix(sampler, export, start, stop, progress=sys.stderr.isatty(), force=force)
        verb = "reused the export of" if done else "exported"
        print(f"{verb} blocks [{start}, {last}) in {out}", file=sys.stderr)
    if plot:
        plot_mix(sampler, plot)
        print(f"wrote {plot}", file=sys.stderr)
    return 0
