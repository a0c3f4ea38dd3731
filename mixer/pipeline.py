"""`mixer run PIPELINE.toml`: tokenize every store a recipe names, then report (and optionally
export and plot) its mix, all under one output directory.

A pipeline file has a tokenizer, one `[stores.NAME]` table per store (the options of
`mixer tokenize`), and a `[mix]` table that is a mix spec whose sources default to the stores of
the same name. Paths are relative to the pipeline file, so a recipe runs on the bundled samples
as is and on real data by overriding inputs: `--input proofpile=s3://bucket/proofpile/`.

A store names the published dataset(s) it expects (`datasets`, shown in messages) and
`include`/`exclude` patterns relative to each input root (see `mixer.ingest.select`), so
`--input NAME=ROOT` takes a dataset as downloaded whole and the recipe picks the training split
and the subsets it wants; repeat `--input NAME=ROOT` for a store made of several datasets.
"""

from __future__ import annotations

import json
import logging
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

from mixer.config import no_unknown_keys, read_toml
from mixer.errors import JobError, MixerError, SpecError
from mixer.ingest import TokenizeJob, tokenize
from mixer.mix.export import export_mix, is_exported
from mixer.mix.sampler import MixSampler
from mixer.mix.spec import MixSpec
from mixer.report import format_report, mix_report, plot_mix

logger = logging.getLogger(__name__)

# Set by the recipe or by `mixer run`, not by a store's table.
_RUN_KEYS = ("tokenizer", "out", "workers", "ray_address", "limit")
_STORE_KEYS = ("datasets", *(k for k in TokenizeJob.field_names() if k not in _RUN_KEYS))


@dataclass(frozen=True)
class RecipeOutput:
    """A recipe's `[output]` table: what `mixer run` makes after the mix report."""

    export: bool = False
    """Write the mixed stream as a token store, OUT/mixed."""
    plot: bool = False
    """Plot cumulative fractions and epochs per source, OUT/mix.png."""

    def __post_init__(self) -> None:
        for f in fields(self):
            if not isinstance(getattr(self, f.name), bool):
                raise SpecError(
                    f"output.{f.name}: must be true or false, got {getattr(self, f.name)!r}"
                )


@dataclass(frozen=True)
class Recipe:
    """A pipeline file: its keys are these fields (`load_pipeline` refuses any other)."""

    tokenizer: str
    """tokenizer.json (or a directory with one) every store is tokenized with."""
    stores: dict[str, dict[str, Any]]
    """`[stores.NAME]`: the options of `TokenizeJob` (not tokenizer, out, workers, ray_address,
    which the recipe and `mixer run` set) and `datasets`, the published datasets it expects."""
    mix: dict[str, Any]
    """A mix spec (`MixSpec.from_dict`) whose sources default to the stores of the same name."""
    name: str | None = None
    """Shown in the log and the plot's title (default: the file's name)."""
    description: str | None = None
    """Free text for the reader of the recipe."""
    output: RecipeOutput = field(default_factory=RecipeOutput)


def _resolve(path: str, base: Path) -> str:
    return path if "://" in path or Path(path).is_absolute() else str(base / path)


def load_pipeline(path: str) -> Recipe:
    """Parse a pipeline file and check its tables' keys (the store options: `TokenizeJob`'s)."""
    data = read_toml(path, "pipeline")
    if "stores" not in data and ({"source", "seq_len"} & set(data)):
        raise SpecError(f"{path}: this is a mix spec, not a pipeline: use `mixer mix {path}`")
    no_unknown_keys(path, data, [f.name for f in fields(Recipe)])
    for f in fields(Recipe):
        if f.default is MISSING and f.default_factory is MISSING and f.name not in data:
            raise SpecError(f"{path}: missing key {f.name!r}")
    if not isinstance(data["tokenizer"], str) or not data["tokenizer"]:
        raise SpecError(f"{path}: tokenizer must be a path or URL, got {data['tokenizer']!r}")
    if not isinstance(data["stores"], dict):
        raise SpecError(f"{path}: stores must be a table of [stores.NAME] tables")
    for name, table in data["stores"].items():
        no_unknown_keys(f"{path}: stores.{name}", table, _STORE_KEYS)
        datasets = table.get("datasets", [])
        if not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
            raise SpecError(f"{path}: stores.{name}.datasets must be a list of strings")
    if not isinstance(data["mix"], dict):
        raise SpecError(f"{path}: mix must be a table (a mix spec)")
    for key in ("name", "description"):
        if key in data and not isinstance(data[key], str):
            raise SpecError(f"{path}: {key} must be a string, got {data[key]!r}")
    output = data.get("output", {})
    no_unknown_keys(f"{path}: output", output, [f.name for f in fields(RecipeOutput)])
    try:
        return Recipe(**{**data, "output": RecipeOutput(**output)})
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None


def run_pipeline(
    path: str,
    out: str,
    inputs: dict[str, list[str]] | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    progress: TextIO | None = None,
    force: bool = False,
    dry_run: bool = False,
    as_json: bool = False,
    limit: int | None = None,
) -> str:
    """Tokenize -> mix report -> export/plot; every step is skipped when already complete.

    Returns what the CLI prints: the mix report as text (`mixer.report.format_report`), or with
    `as_json` one JSON object (the stores' summaries, the report and the outputs); with
    `dry_run`, each store's plan, and nothing runs. `inputs` overrides stores' inputs by store
    name; `workers`, `ray_address`, `progress` and `limit` are as for `tokenize`; `force`
    rewrites an export that differs from this recipe's (otherwise refused). With `limit`, a
    trial, each store holds its first `limit` documents and the run stops there: a mix report,
    export or plot of trial stores would pass for the recipe's."""
    recipe = load_pipeline(path)
    base, out_dir = Path(path).resolve().parent, Path(out).resolve()
    for name in inputs or {}:
        if name not in recipe.stores:
            raise MixerError(
                f"inputs for store {name!r}: the pipeline has no such store "
                f"(it has {', '.join(recipe.stores)})"
            )
    jobs = store_jobs(path, recipe, out_dir, inputs or {}, workers, ray_address, limit)
    plans: dict[str, Any] = {}
    stores: dict[str, Any] = {}
    for name, job in jobs.items():
        expects = recipe.stores[name].get("datasets", [])
        logger.info(
            "[%s] %s %d input(s)%s",
            name,
            "planning" if dry_run else "tokenizing",
            len(job.inputs),
            f" ({', '.join(expects)})" if expects else "",
        )
        try:
            if dry_run:
                plans[name] = tokenize(job, dry_run=True)
                continue
            stores[name] = {}
            tokenize(job, progress=progress, summary=stores[name])
        except MixerError as e:
            if not expects:
                raise
            hint = "its input: a download of " + " or ".join(expects)
            raise type(e)(f"stores.{name} ({hint}): {e}") from None

    if limit is not None and not dry_run:
        logger.info(
            "pipeline %s: trial stores (the first %s documents each) in %s; the mix, export and "
            "plot need the complete stores: rerun without limit=",
            recipe.name or path,
            f"{limit:,}",
            out_dir / "stores",
            extra={"params": ("limit",)},
        )
        if as_json:
            return json.dumps({"stores": stores, "limit": limit}, indent=2)
        return "\n".join(
            f"[{name}] trial: {s['documents']:,} documents, {s['tokens']:,} tokens -> {s['store']}"
            for name, s in stores.items()
        )
    if dry_run:
        if as_json:
            return json.dumps({"dry_run": True, "out": str(out_dir), "stores": plans}, indent=2)
        lines = [
            f"[{name}] {plan['files']:,} file{'s' if plan['files'] != 1 else ''}, "
            f"{plan['input_bytes'] / 1e6:,.1f} MB, "
            f"{plan['tasks']:,} task{'s' if plan['tasks'] != 1 else ''} -> {plan['out']}"
            for name, plan in plans.items()
        ]
        return "\n".join([*lines, f"then the mix report, mix.json and report.json in {out_dir}"])
    mix = dict(recipe.mix)
    mix["source"] = [
        {"store": str(out_dir / "stores" / s["name"]), **s} if "store" not in s else s
        for s in mix.get("source", [])
    ]
    spec = MixSpec.from_dict(mix, base_dir=base)
    sampler = MixSampler(spec)
    report = mix_report(sampler)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "mix.json").write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
    output = recipe.output
    if output.export:
        done = is_exported(sampler, out_dir / "mixed", 0, len(sampler))
        exported = export_mix(sampler, out_dir / "mixed", progress=progress, force=force)
        verb = "reused the export of" if done else "exported"
        logger.info("%s %s blocks in %s", verb, f"{len(sampler):,}", exported)
    if output.plot:
        try:
            plot_mix(sampler, out_dir / "mix.png", title=recipe.name or Path(path).stem)
            logger.info("wrote %s", out_dir / "mix.png")
        except MixerError as e:  # matplotlib is optional: the run is still complete
            logger.warning("skipped the plot: %s", e)
    logger.info("pipeline %s: done, outputs in %s", recipe.name or path, out_dir)
    if not as_json:
        return format_report(report)
    outputs = {"report": str(out_dir / "report.json"), "mix": str(out_dir / "mix.json")}
    if output.export:
        outputs["mixed"] = str(out_dir / "mixed")
    if (out_dir / "mix.png").exists() and output.plot:
        outputs["plot"] = str(out_dir / "mix.png")
    return json.dumps({"stores": stores, "report": report, "outputs": outputs}, indent=2)


def store_jobs(
    path: str,
    recipe: Recipe,
    out_dir: Path,
    inputs: dict[str, list[str]],
    workers: int | None,
    ray_address: str | None,
    limit: int | None = None,
) -> dict[str, TokenizeJob]:
    """Every store's job, built (and so checked) before anything runs."""
    base = Path(path).resolve().parent
    tokenizer = _resolve(recipe.tokenizer, base)
    jobs = {}
    for name, table in recipe.stores.items():
        urls = inputs.get(name) or [
            _resolve(u, base) if isinstance(u, str) else u for u in table.get("inputs", ())
        ]
        options = {k: v for k, v in table.items() if k not in ("inputs", "datasets")}
        try:
            jobs[name] = TokenizeJob(
                inputs=urls,
                tokenizer=tokenizer,
                out=str(out_dir / "stores" / name),
                workers=workers,
                ray_address=ray_address,
                limit=limit,
                **options,
            )
        except JobError as e:
            raise SpecError(f"{path}: stores.{name}.{e.field}: {e.problem}") from None
    return jobs
