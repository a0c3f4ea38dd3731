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
from pathlib import Path
from typing import Any

from mixer.config import no_unknown_keys, read_toml
from mixer.errors import JobError, MixerError, SpecError
from mixer.ingest import TokenizeJob, tokenize
from mixer.mix.export import export_mix, is_exported
from mixer.mix.sampler import MixSampler
from mixer.mix.spec import MixSpec
from mixer.report import format_report, mix_report, plot_mix

logger = logging.getLogger(__name__)

_TOP_KEYS = ("name", "description", "tokenizer", "stores", "mix", "output")
_RUN_KEYS = ("tokenizer", "out", "workers", "ray_address")  # set by the recipe or by `mixer run`
_STORE_KEYS = ("datasets", *(k for k in TokenizeJob.field_names() if k not in _RUN_KEYS))
_OUTPUT_KEYS = ("export", "plot")


def _resolve(path: str, base: Path) -> str:
    return path if "://" in path or Path(path).is_absolute() else str(base / path)


def load_pipeline(path: str) -> dict[str, Any]:
    """Parse a pipeline file and check its tables' keys (the store options: `TokenizeJob`'s)."""
    data = read_toml(path, "pipeline")
    if "stores" not in data and ({"source", "seq_len"} & set(data)):
        raise SpecError(f"{path}: this is a mix spec, not a pipeline: use `mixer mix {path}`")
    no_unknown_keys(path, data, _TOP_KEYS)
    for key in ("tokenizer", "stores", "mix"):
        if key not in data:
            raise SpecError(f"{path}: missing key {key!r}")
    if not isinstance(data["stores"], dict):
        raise SpecError(f"{path}: stores must be a table of [stores.NAME] tables")
    for name, table in data["stores"].items():
        no_unknown_keys(f"{path}: stores.{name}", table, _STORE_KEYS)
        datasets = table.get("datasets", [])
        if not isinstance(datasets, list) or not all(isinstance(d, str) for d in datasets):
            raise SpecError(f"{path}: stores.{name}.datasets must be a list of strings")
    no_unknown_keys(f"{path}: output", data.get("output", {}), _OUTPUT_KEYS)
    return data


def run_pipeline(
    path: str,
    out: str,
    inputs: dict[str, list[str]] | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    progress: bool | None = None,
    force: bool = False,
    dry_run: bool = False,
    as_json: bool = False,
) -> str:
    """Tokenize -> mix report -> export/plot; every step is skipped when already complete.

    Returns what the CLI prints: the mix report as text (`mixer.report.format_report`), or with
    `as_json` one JSON object (the stores' summaries, the report and the outputs); with
    `dry_run`, each store's plan, and nothing runs. `inputs` overrides stores' inputs by store
    name; `workers`, `ray_address` and `progress` are as for `tokenize`; `force` rewrites an
    export that differs from this recipe's (otherwise refused)."""
    data = load_pipeline(path)
    base, out_dir = Path(path).resolve().parent, Path(out).resolve()
    for name in inputs or {}:
        if name not in data["stores"]:
            raise MixerError(f"--input {name}=...: the pipeline has no store {name!r}")
    jobs = store_jobs(path, data, out_dir, inputs or {}, workers, ray_address)
    plans: dict[str, Any] = {}
    stores: dict[str, Any] = {}
    for name, job in jobs.items():
        expects = data["stores"][name].get("datasets", [])
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
            quiet = False if as_json and progress is None else progress
            tokenize(job, progress=quiet, summary=stores[name])
        except MixerError as e:
            if not expects:
                raise
            hint = f"--input {name}=ROOT, ROOT a download of " + " or ".join(expects)
            raise type(e)(f"stores.{name} ({hint}): {e}") from None

    if dry_run:
        if as_json:
            return json.dumps({"dry_run": True, "out": str(out_dir), "stores": plans}, indent=2)
        lines = [
            f"[{name}] {plan['files']:,} files, {plan['input_bytes'] / 1e6:,.1f} MB, "
            f"{plan['tasks']:,} tasks -> {plan['out']}"
            for name, plan in plans.items()
        ]
        return "\n".join([*lines, f"then the mix report, mix.json and report.json in {out_dir}"])
    mix = dict(data["mix"])
    mix["source"] = [
        {"store": str(out_dir / "stores" / s["name"]), **s} if "store" not in s else s
        for s in mix.get("source", [])
    ]
    spec = MixSpec.from_dict(mix, base_dir=base)
    sampler = MixSampler(spec)
    report = mix_report(sampler)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "mix.json").write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
    output = data.get("output", {})
    if output.get("export"):
        done = is_exported(sampler, out_dir / "mixed", 0, len(sampler))
        exported = export_mix(sampler, out_dir / "mixed", progress=bool(progress), force=force)
        verb = "reused the export of" if done else "exported"
        logger.info("%s %s blocks in %s", verb, f"{len(sampler):,}", exported)
    if output.get("plot"):
        try:
            plot_mix(sampler, out_dir / "mix.png", title=data.get("name", Path(path).stem))
            logger.info("wrote %s", out_dir / "mix.png")
        except MixerError as e:  # matplotlib is optional: the run is still complete
            logger.warning("skipped the plot: %s", e)
    logger.info("pipeline %s: done, outputs in %s", data.get("name", path), out_dir)
    if not as_json:
        return format_report(report)
    outputs = {"report": str(out_dir / "report.json"), "mix": str(out_dir / "mix.json")}
    if output.get("export"):
        outputs["mixed"] = str(out_dir / "mixed")
    if (out_dir / "mix.png").exists() and output.get("plot"):
        outputs["plot"] = str(out_dir / "mix.png")
    return json.dumps({"stores": stores, "report": report, "outputs": outputs}, indent=2)


def store_jobs(
    path: str,
    data: dict[str, Any],
    out_dir: Path,
    inputs: dict[str, list[str]],
    workers: int | None,
    ray_address: str | None,
) -> dict[str, TokenizeJob]:
    """Every store's job, built (and so checked) before anything runs."""
    base = Path(path).resolve().parent
    tokenizer = _resolve(data["tokenizer"], base)
    jobs = {}
    for name, table in data["stores"].items():
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
                **options,
            )
        except JobError as e:
            raise SpecError(f"{path}: stores.{name}.{e.field}: {e.problem}") from None
    return jobs
