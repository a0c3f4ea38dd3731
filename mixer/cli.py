"""The `mixer` command: a thin layer over the library, one verb per job.

Every user error is a `MixerError`, printed as one line (`mixer: error: ...`) with exit code 1.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer

from mixer.errors import MixerError

app = typer.Typer(
    name="mixer",
    help="Tokenize corpora into token stores and mix them into exact, reproducible "
    "training streams.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def parse_json_option(value: str | None, flag: str) -> dict:
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise MixerError(f"{flag} is not valid JSON ({e.msg}): {value!r}") from None
    if not isinstance(parsed, dict):
        raise MixerError(f"{flag} must be a JSON object, got {value!r}")
    return parsed


@app.callback()
def options(
    cache_max_bytes: Annotated[
        float | None,
        typer.Option(
            help="Bound on the local cache of s3:// (fsspec URL) stores that commands read, "
            "e.g. 200e9; least recently used stores are evicted (default $MIXER_CACHE_MAX_BYTES, "
            "else no bound). Goes before the command: mixer --cache-max-bytes 200e9 mix ...",
        ),
    ] = None,
) -> None:
    from mixer.store import cache

    if cache_max_bytes is not None:
        if not cache_max_bytes >= 1:
            raise MixerError(f"--cache-max-bytes must be at least 1, got {cache_max_bytes:g}")
        os.environ[cache.MAX_BYTES_ENV] = str(int(cache_max_bytes))  # reaches every open


@app.command(
    epilog="Example:  mixer tokenize 'data/web/*.jsonl.zst' -t tokenizer.json -o stores/web",
)
def tokenize(
    inputs: Annotated[
        list[str], typer.Argument(help="Files, directories or globs; local or fsspec URLs.")
    ],
    tokenizer: Annotated[
        str, typer.Option("--tokenizer", "-t", help="HF tokenizer.json, or a directory with one.")
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Store directory to create.")],
    format: Annotated[
        str | None,
        typer.Option(help="Override format detection: jsonl, jsonl.gz, jsonl.zst, parquet, txt."),
    ] = None,
    text_field: Annotated[
        str, typer.Option(help="Field holding the text; dotted paths like meta.body allowed.")
    ] = "text",
    txt_mode: Annotated[
        str, typer.Option(help="For .txt: 'document' (one per file) or 'line' (one per line).")
    ] = "document",
    on_error: Annotated[
        str, typer.Option(help="Bad records: 'fail' (stop at file:line) or 'skip' and count.")
    ] = "fail",
    where: Annotated[
        list[str] | None,
        typer.Option(help="Keep rows matching, e.g. \"src in ['abc', 'midi']\"; repeat to AND."),
    ] = None,
    eos_token: Annotated[
        str | None, typer.Option(help="Token appended after every document.")
    ] = None,
    no_eos: Annotated[bool, typer.Option("--no-eos", help="Append no EOS token.")] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Parallel Ray tasks (default: all CPUs, or this process when the input is "
            "too small to repay Ray's ~7 s start-up); 0 runs in-process."
        ),
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(help="Join an existing Ray cluster (auto or HOST:PORT).")
    ] = None,
    backend: Annotated[
        str,
        typer.Option(help="auto: the fast engine once verified id-for-id on this input; hf; fast."),
    ] = "auto",
    chunk_mb: Annotated[
        int, typer.Option(help="Split large uncompressed files into tasks of about this size.")
    ] = 32,
    storage_options: Annotated[
        str | None, typer.Option(help="JSON passed to fsspec, e.g. '{\"anon\": true}'.")
    ] = None,
    cache_dir: Annotated[
        str | None,
        typer.Option(help="Staging for a URL --out (default $MIXER_CACHE_DIR or ~/.cache/mixer)."),
    ] = None,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Default: on a TTY.")
    ] = None,
    include: Annotated[
        list[str] | None,
        typer.Option(
            help="Read only files matching, relative to each input root, e.g. "
            "'data/CC-MAIN-*/*.parquet' ('*' within a folder, '**' across); repeat to OR."
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(help="Skip files matching, relative to each input root; repeat."),
    ] = None,
    all_splits: Annotated[
        bool,
        typer.Option(
            "--all-splits",
            help="Also read val/valid/validation/dev/test/sample folders and test-*/val-* "
            "files under the inputs (skipped by default).",
        ),
    ] = False,
) -> None:
    """Tokenize corpora (jsonl, jsonl.gz, jsonl.zst, parquet, txt) into a token store."""
    from mixer.ingest.driver import tokenize as run_tokenize
    from mixer.ingest.job import TokenizeJob

    if chunk_mb <= 0:
        raise MixerError(f"--chunk-mb must be positive, got {chunk_mb}")
    job = TokenizeJob(
        inputs=tuple(inputs),
        tokenizer=tokenizer,
        out=out,
        format=format,
        text_field=text_field,
        txt_mode=txt_mode,
        on_error=on_error,
        where=tuple(where or ()),
        eos_token=eos_token,
        no_eos=no_eos,
        workers=workers,
        ray_address=ray_address,
        chunk_bytes=chunk_mb << 20,
        backend=backend,
        cache_dir=cache_dir,
        storage_options=parse_json_option(storage_options, "--storage-options"),
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
        all_splits=all_splits,
    )
    run_tokenize(job, progress=progress)


@app.command(
    epilog="Example:  mixer peek musicpile/data --field src --limit 5000",
)
def peek(
    inputs: Annotated[
        list[str], typer.Argument(help="Files, directories or globs; local or fsspec URLs.")
    ],
    field: Annotated[
        str | None, typer.Option(help="Count this field's most common values (dotted paths ok).")
    ] = None,
    limit: Annotated[int, typer.Option(help="Records to read in all.")] = 1000,
    files: Annotated[int, typer.Option(help="Files to read from, spread over the input.")] = 8,
    text_field: Annotated[str, typer.Option(help="Field holding the text.")] = "text",
    format: Annotated[str | None, typer.Option(help="Override format detection.")] = None,
    include: Annotated[
        list[str] | None, typer.Option(help="As for tokenize: files to read; repeat.")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="As for tokenize: files to skip; repeat.")
    ] = None,
    all_splits: Annotated[
        bool, typer.Option("--all-splits", help="Also read held-out split folders.")
    ] = False,
    storage_options: Annotated[
        str | None, typer.Option(help="JSON passed to fsspec, e.g. '{\"anon\": true}'.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the columns or keys, first texts and a field's common values of an input's first
    records: what to look at before writing --where or --text-field."""
    from mixer.ingest.peek import format_peek
    from mixer.ingest.peek import peek as run_peek
    from mixer.ingest.select import Selection

    report = run_peek(
        list(inputs),
        field=field,
        limit=limit,
        max_files=files,
        text_field=text_field,
        format=format,
        selection=Selection(tuple(include or ()), tuple(exclude or ()), all_splits),
        storage_options=parse_json_option(storage_options, "--storage-options"),
    )
    typer.echo(json.dumps(report.to_json(), indent=2) if as_json else format_peek(report))


@app.command(epilog="Example:  mixer inspect stores/web --json")
def inspect(
    store: Annotated[str, typer.Argument(help="Token store directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show a store's documents, tokens, shards, dtype, tokenizer and skipped records."""
    from mixer.store.reader import TokenStore

    opened = TokenStore.open(store)
    m = opened.manifest
    summary = {
        "store": str(opened.root),
        "documents": opened.num_documents,
        "tokens": opened.num_tokens,
        "shards": len(opened.shards),
        "dtype": opened.dtype.name,
        "tokenizer": m["tokenizer"],
        "eos_id": opened.eos_id,
        "skipped": m.get("skipped", {}),
        "filtered": m.get("filtered", 0),
        "job": m.get("job", {}),
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    tok = m["tokenizer"]
    skipped = summary["skipped"]
    lines = [
        f"store      {summary['store']}",
        f"documents  {summary['documents']:,}",
        f"tokens     {summary['tokens']:,}",
        f"shards     {summary['shards']}",
        f"dtype      {summary['dtype']}",
        f"tokenizer  {tok.get('name', '?')} (vocab {tok['vocab_size']:,}, "
        f"sha256 {str(tok['sha256'])[:12]}…), eos id {summary['eos_id']}",
        "skipped    "
        + (", ".join(f"{k} {v:,}" for k, v in skipped.items()) if skipped else "none"),
    ]
    if summary["filtered"]:
        lines.append(f"filtered   {summary['filtered']:,} rows by --where")
    typer.echo("\n".join(lines))


@app.command(epilog="Example:  mixer verify stores/web")
def verify(store: Annotated[str, typer.Argument(help="Token store directory.")]) -> None:
    """Recompute every shard checksum and re-check every index against the manifest."""
    from mixer.store.reader import TokenStore

    opened = TokenStore.open(store)
    opened.verify()
    typer.echo(f"{store}: OK ({len(opened.shards)} shards, {opened.num_tokens:,} tokens)")


@app.command(
    epilog="Examples:  mixer mix pipelines/example-mix.toml --report\n\n"
    "           mixer mix spec.toml --export stores/mixed --start 0 --stop 100000",
)
def mix(
    spec: Annotated[str, typer.Argument(help="Mix spec (TOML).")],
    report: Annotated[
        bool, typer.Option("--report", help="Per phase and source: blocks, fractions, epochs.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Report as JSON.")] = False,
    export: Annotated[
        str | None, typer.Option(help="Write the mixed stream as a Megatron token store.")
    ] = None,
    start: Annotated[int, typer.Option(help="First block to export.")] = 0,
    stop: Annotated[int | None, typer.Option(help="Block to stop exporting at.")] = None,
    plot: Annotated[
        str | None, typer.Option(help="PNG of cumulative fractions and epochs per source.")
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Recompute every store's checksums first.")
    ] = False,
) -> None:
    """Check a mix spec and report, export or plot the stream it defines."""
    from mixer.report import run_mix

    code = run_mix(spec, report or not (export or plot), as_json, export, start, stop, plot, verify)
    raise typer.Exit(code)


@app.command(
    epilog="Examples:  mixer explain pipelines/example-mix.toml --step 120\n\n"
    "           mixer explain mix.toml --step 120 --global-batch-size 512 --rank 3 "
    "--world-size 8 --json",
)
def explain(
    spec: Annotated[str, typer.Argument(help="Mix spec (TOML).")],
    step: Annotated[int, typer.Option(help="Global step (batch) to explain.")],
    global_batch_size: Annotated[
        int | None,
        typer.Option(help="Blocks per global step (default: the spec's global_batch_size)."),
    ] = None,
    rank: Annotated[
        int | None, typer.Option(help="Only this data-parallel rank's rows (with --world-size).")
    ] = None,
    world_size: Annotated[int, typer.Option(help="Data-parallel ranks sharing a step.")] = 1,
    state: Annotated[
        str | None,
        typer.Option(help="A loader state_dict saved as JSON: apply its amendments and skips."),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            help="tokenizer.json for text previews (default: the path the store recorded)."
        ),
    ] = None,
    chars: Annotated[int, typer.Option(help="Characters of each document to show.")] = 60,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show what a global step read: per row its source, block, epoch and the documents in it,
    with the input file and record (line or row) each came from."""
    from mixer.mix.explain import explain_step, format_rows, load_decoder
    from mixer.mix.sampler import MixSampler
    from mixer.mix.spec import MixSpec

    mix_spec = MixSpec.from_toml(spec)
    sampler = MixSampler(mix_spec)
    if state is not None:
        from mixer.mix.steering import apply_state_file

        sampler = apply_state_file(sampler, state)
    size = global_batch_size or mix_spec.global_batch_size
    if size is None:
        raise MixerError("--global-batch-size: needed, the spec gives total_tokens, not steps")
    decoder = load_decoder(sampler, tokenizer)
    rows = explain_step(sampler, step, size, rank, world_size, decoder, chars)
    if as_json:
        typer.echo(json.dumps({"step": step, "global_batch_size": size, "rows": rows}, indent=2))
        return
    typer.echo(
        f"step {step} (global batch size {size}, blocks [{step * size}, {(step + 1) * size}))"
    )
    typer.echo(format_rows(rows))


@app.command(
    epilog="Examples:  mixer run pipelines/spt-proofpile.toml --out out/spt\n\n"
    "           mixer run pipelines/spt-proofpile.toml --out out/spt "
    "--input proofpile=s3://bucket/proofpile/",
)
def run(
    pipeline: Annotated[str, typer.Argument(help="Pipeline TOML (see pipelines/).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Directory for stores and reports.")],
    input: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            help="NAME=ROOT: store NAME reads the dataset downloaded whole at ROOT (local or "
            "URL) through the recipe's include/exclude patterns; repeat for several roots.",
        ),
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Parallel Ray tasks; 0 in-process.")] = None,
    ray_address: Annotated[str | None, typer.Option(help="Join an existing Ray cluster.")] = None,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Default: on a TTY.")
    ] = None,
) -> None:
    """Run a recipe: tokenize its stores, report its mix, export and plot it."""
    from mixer.pipeline import run_pipeline

    overrides: dict[str, list[str]] = {}
    for item in input or ():
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise MixerError(f"--input {item!r}: expected NAME=URL")
        overrides.setdefault(name, []).append(url)
    raise typer.Exit(run_pipeline(pipeline, out, overrides, workers, ray_address, progress))


@app.command(
    epilog="Examples:  mixer plan --domain-tokens 300e6 --total-tokens 200e9 --max-repeats 50\n\n"
    "           mixer plan --pilot pipelines/pilot-example.csv --total-tokens 200e9 --plot p.png",
)
def plan(
    total_tokens: Annotated[float, typer.Option(help="Training budget in tokens, e.g. 200e9.")],
    domain_tokens: Annotated[
        str | None, typer.Option(help="Domain size in tokens (e.g. 300e6) or a token store.")
    ] = None,
    fraction: Annotated[
        list[float] | None, typer.Option(help="Fractions to tabulate; repeat (default: paper's).")
    ] = None,
    max_repeats: Annotated[float | None, typer.Option(help="Epoch cap to warn about.")] = None,
    pilot: Annotated[
        str | None, typer.Option(help="CSV of pilot runs: tokens,fraction,loss.")
    ] = None,
    target_tokens: Annotated[
        float | None, typer.Option(help="Budget for the recommendation (default: total).")
    ] = None,
    plot: Annotated[str | None, typer.Option(help="PNG of predicted loss vs fraction.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    injection: Annotated[
        bool,
        typer.Option(
            "--injection",
            help="Fit the forgetting law (Bethune et al. 2025) to --pilot runs (model_params,"
            "finetune_tokens,injection_fraction,pretrain_loss) and give the smallest injected "
            "pretraining fraction for finetuning on --total-tokens tokens.",
        ),
    ] = False,
    model_params: Annotated[
        float | None,
        typer.Option(help="With --injection: the model to plan for (default: largest pilot)."),
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(help="With --injection: allowed rise of the pretraining loss, in nats."),
    ] = 0.01,
) -> None:
    """Choose a domain fraction: epochs and repeats per fraction, and the SPT scaling-law fit;
    or with --injection the pretraining-data fraction to inject while finetuning."""
    from mixer.plan import run_injection_plan, run_plan

    if injection:
        if domain_tokens is not None or fraction or max_repeats is not None or plot:
            raise MixerError(
                "--injection takes --pilot, --total-tokens (finetuning tokens), --model-params"
                " and --tolerance; --domain-tokens, --fraction, --max-repeats and --plot are"
                " for the SPT plan"
            )
        raise typer.Exit(run_injection_plan(pilot, total_tokens, model_params, tolerance, as_json))

    domain = None
    if domain_tokens is not None:
        try:
            domain = int(float(domain_tokens))
        except ValueError:
            from mixer.store.reader import TokenStore

            domain = TokenStore.open(domain_tokens).num_tokens
    code = run_plan(
        domain, int(total_tokens), fraction, max_repeats, pilot, target_tokens, plot, as_json
    )
    raise typer.Exit(code)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit code 1."""
    try:
        app(args=argv, prog_name="mixer")
    except MixerError as e:
        typer.echo(f"mixer: error: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
