"""What `mixer mix` does: report a plan and plot it (export: mixer.mix.export).

Everything here works from a `MixSampler`'s closed-form counts, so a report over a trillion-token
plan takes milliseconds and reads no tokens.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from mixer.extras import matplotlib_figure
from mixer.mix.export import export_mix, is_exported
from mixer.mix.sampler import MixSampler
from mixer.mix.spec import MixSpec
from mixer.units import human_count

logger = logging.getLogger(__name__)

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
            f"  {'source':<{width}}  {'weight':>12}  {'used':>12}  {'achieved':>12}"
            f"  {'blocks':>14}  {'tokens':>18}",
        ]
        for name, row in phase["sources"].items():
            lines.append(
                f"  {name:<{width}}  {row['target']:>12.6g}  {row['used']:>12.6g}"
                f"  {row['achieved']:>12.6g}  {row['blocks']:>14,}  {row['tokens']:>18,}"
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


def plot_mix(
    sampler: MixSampler,
    out_png: str | os.PathLike,
    points: int = 1000,
    title: str | None = None,
) -> None:
    """The mix as a PNG: per source, its share of the blocks so far in the current phase (solid)
    against the phase's target (dashed), on a log axis so that a 2% source is as legible as a
    98% one; below, the epochs of each source used so far. x is in tokens; phase boundaries
    are drawn and named. Everything comes from `source_counts`, so no tokens are read."""
    Figure = matplotlib_figure("plotting a mix")
    from matplotlib.ticker import FuncFormatter

    n = len(sampler)
    seq_len = sampler.seq_len
    # Sample points in every phase (so a short phase still has a curve), ends included.
    stops = [
        np.linspace(t.start, t.start + t.blocks, max(2, points * t.blocks // n + 1))
        for t in sampler.phases
    ]
    stops = np.unique(np.concatenate(stops).astype(np.int64))
    counts = sampler.source_counts(stops)
    starts = np.array([t.start for t in sampler.phases])
    phase_of = np.searchsorted(starts, stops, side="right") - 1
    base = sampler.source_counts(starts)[phase_of]  # counts at the start of each point's phase
    done = stops - starts[phase_of]
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    share_ax, epoch_ax = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    fig.suptitle(
        f"{title or 'mix'}: {human_count(n * seq_len)} tokens in {n:,} blocks of {seq_len}, "
        f"seed {sampler.spec.seed}"
    )
    x = stops * seq_len
    colors = [f"C{s % 10}" for s in range(len(sampler.source_names))]
    lowest = 1.0
    for s, name in enumerate(sampler.source_names):
        with np.errstate(divide="ignore", invalid="ignore"):
            share = (counts[:, s] - base[:, s]) / done
        share = np.where((done > 0) & (share > 0), share, np.nan)
        share_ax.plot(x, share, color=colors[s], label=name, linewidth=1.5)
        for t in sampler.phases:
            target = t.targets[s]
            if target > 0:
                lowest = min(lowest, target)
                share_ax.hlines(
                    target,
                    t.start * seq_len,
                    (t.start + t.blocks) * seq_len,
                    colors=colors[s],
                    linestyles="--",
                    linewidth=1,
                )
        epochs = counts[:, s] / sampler.source_blocks[s]
        epoch_ax.plot(x, epochs, color=colors[s], label=name, linewidth=1.5)
        epoch_ax.annotate(
            f"{epochs[-1]:.3g}",
            (x[-1], epochs[-1]),
            textcoords="offset points",
            xytext=(4, 0),
            va="center",
            fontsize=8,
            color=colors[s],
        )
    share_ax.set_yscale("log")
    share_ax.set_ylim(min(lowest / 4, 0.05), 1.5)
    share_ax.set_ylabel("share of blocks in the phase so far\n(dashed: each source's weight)")
    epoch_ax.legend(loc="upper left", fontsize=9)
    epoch_ax.set_ylabel("epochs of each source used")
    epoch_ax.set_xlabel("tokens")
    epoch_ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human_count(v)))
    for t in sampler.phases:
        for ax in (share_ax, epoch_ax):
            if t.start > 0:
                ax.axvline(t.start * seq_len, color="grey", linestyle=":", linewidth=1)
        if len(sampler.phases) > 1:
            share_ax.text(
                (t.start + t.blocks / 2) * seq_len,
                1.2,
                t.name,
                ha="center",
                va="bottom",
                fontsize=9,
                color="dimgrey",
            )
    for ax in (share_ax, epoch_ax):
        ax.grid(True, which="major", alpha=0.3)
        ax.set_xlim(0, n * seq_len)
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
    progress: TextIO | None = None,
) -> str:
    """`mixer mix SPEC.toml`: report (the default, or with --report/--json), --export, --plot.

        Returns the report (text or JSON; empty when none was asked for) for the CLI to print on
        stdout; status lines are logged and the export's bar goes to `progress` (the CLI hands it
    stderr on a terminal), so --json stays parseable.
    """
    sampler = MixSampler(MixSpec.from_toml(spec_path), verify=verify)
    text = ""
    if report or as_json or not (export or plot):
        data = mix_report(sampler)
        text = json.dumps(data, indent=2) if as_json else format_report(data)
    if export:
        last = len(sampler) if stop is None else stop
        done = is_exported(sampler, export, start, last)
        out = export_mix(sampler, export, start, stop, progress=progress, force=force)
        verb = "reused the export of" if done else "exported"
        logger.info("%s blocks [%d, %d) in %s", verb, start, last, out)
    if plot:
        path = Path(spec_path).resolve()  # a run's mix.json is named after the run's folder
        plot_mix(sampler, plot, title=path.parent.name if path.name == "mix.json" else path.stem)
        logger.info("wrote %s", plot)
    return text
