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
import sys
from pathlib import Path
from typing import Any

from mixer.errors import MixerError, SpecError
from mixer.ingest.driver import tokenize
from mixer.ingest.job import TokenizeJob
from mixer.mix.export import export_mix, is_exported
from mixer.mix.sampler import MixSampler
from mixer.mix.spec import MixSpec
from mixer.report import format_report, mix_report, plot_mix

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

_TOP_KEYS = {"name", "description", "tokenizer", "stores", "mix", "output"}
_STORE_KEYS = {
    "datasets",
    "inputs",
    "include",
    "exclude",
    "all_splits",
    "format",
    "text_field",
    "txt_mode",
    "on_error",
    "where",
    "backend",
}
_LIST_KEYS = ("datasets", "inputs", "include", "exclude", "where")
_OUTPUT_KEYS = {"export", "plot"}


def _resolve(path: str, base: Path) -> str:
    return path if "://" in path or Path(path).is_absolute() else str(base / path)


def _check_keys(where: str, table: Any, allowed: set[str]) -> dict:
    if not isinstance(table, dict):
        raise SpecError(f"{where} must be a table, got {table!r}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise SpecError(
            f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )
    return table


def load_pipeline(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise MixerError(f"pipeline not found: {path}") from None
    except IsADirectoryError:
        raise MixerError(f"{path}: is a directory, not a pipeline TOML") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: invalid TOML ({e})") from None
    if "stores" not in data and ({"source", "seq_len"} & set(data)):
        raise SpecError(f"{path}: this is a mix spec, not a pipeline: use `mixer mix {path}`")
    _check_keys(path, data, _TOP_KEYS)
    for key in ("tokenizer", "stores", "mix"):
        if key not in data:
            raise SpecError(f"{path}: missing key {key!r}")
    for name, table in data["stores"].items():
        _check_keys(f"{path}: stores.{name}", table, _STORE_KEYS)
        if not table.get("inputs"):
            raise SpecError(f"{path}: stores.{name}.inputs must list at least one input")
        for key in _LIST_KEYS:
            value = table.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SpecError(f"{path}: stores.{name}.{key} must be a list of strings")
    _check_keys(f"{path}: output", data.get("output", {}), _OUTPUT_KEYS)
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
) -> int:
    """Tokenize -> mix report -> export/plot; every step is skipped when already complete.

    `force` rewrites an export that differs from this recipe's (otherwise refused);
    `dry_run` prints each store's plan and stops; `as_json` prints one JSON object (the stores'
    summaries, the report and the outputs) instead of the text report."""
    data = load_pipeline(path)
    base, out_dir = Path(path).resolve().parent, Path(out).resolve()
    for name in inputs or {}:
        if name not in data["stores"]:
            raise MixerError(f"--input {name}=...: the pipeline has no store {name!r}")
    tokenizer = _resolve(data["tokenizer"], base)
    plans: dict[str, Any] = {}
    stores: dict[str, Any] = {}
    for name, table in data["stores"].items():
        given = (inputs or {}).get(name)
        urls = given or [_resolve(u, base) for u in table["inputs"]]
        options = {k: v for k, v in table.items() if k not in ("inputs", "datasets")}
        for key in ("where", "include", "exclude"):
            if key in options:
                options[key] = tuple(options[key])
        expects = table.get("datasets", [])
        print(
            f"[{name}] {'planning' if dry_run else 'tokenizing'} {len(urls)} input(s)"
            + (f" ({', '.join(expects)})" if expects else ""),
            file=sys.stderr,
        )
        job = TokenizeJob(
            inputs=tuple(urls),
            tokenizer=tokenizer,
            out=str(out_dir / "stores" / name),
            workers=workers,
            ray_address=ray_address,
            **options,
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
            print(json.dumps({"dry_run": True, "out": str(out_dir), "stores": plans}, indent=2))
        else:
            for name, plan in plans.items():
                print(
                    f"[{name}] {plan['files']:,} files, {plan['input_bytes'] / 1e6:,.1f} MB, "
                    f"{plan['tasks']:,} tasks -> {plan['out']}"
                )
            print(f"then the mix report, mix.json and report.json in {out_dir}")
        return 0
    mix = dict(data["mix"])
    mix["source"] = [
        {"store": str(out_dir / "stores" / s["name"]), **s} if "store" not in s else s
        for s in mix.get("source", [])
    ]
    spec = MixSpec.from_dict(mix, base_dir=base)
    sampler = MixSampler(spec)
    report = mix_report(sampler)
    if not as_json:
        print(format_report(report))
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "mix.json").write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
    output = data.get("output", {})
    if output.get("export"):
        done = is_exported(sampler, out_dir / "mixed", 0, len(sampler))
        exported = export_mix(sampler, out_dir / "mixed", progress=bool(progress), force=force)
        verb = "reused the export of" if done else "exported"
        print(f"{verb} {len(sampler):,} blocks in {exported}", file=sys.stderr)
    if output.get("plot"):
        try:
            plot_mix(sampler, out_dir / "mix.png", title=data.get("name", Path(path).stem))
            print(f"wrote {out_dir / 'mix.png'}", file=sys.stderr)
        except MixerError as e:  # matplotlib is optional: the run is still complete
            print(f"skipped the plot: {e}", file=sys.stderr)
    print(f"pipeline {data.get('name', path)}: done, outputs in {out_dir}", file=sys.stderr)
    if as_json:
        outputs = {"report": str(out_dir / "report.json"), "mix": str(out_dir / "mix.json")}
        if output.get("export"):
            outputs["mixed"] = str(out_dir / "mixed")
        if (out_dir / "mix.png").exists() and output.get("plot"):
            outputs["plot"] = str(out_dir / "mix.png")
        print(json.dumps({"stores": stores, "report": report, "outputs": outputs}, indent=2))
    return 0
