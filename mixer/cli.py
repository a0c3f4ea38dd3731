"""The `mixer` command: a thin layer over the library, one verb per job.

Every user error is a `MixerError`, printed as one line (`mixer: error: ...`) with exit code 1.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

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
        Optional[str],
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
        Optional[list[str]],
        typer.Option(help="Keep rows matching, e.g. \"src in ['abc', 'midi']\"; repeat to AND."),
    ] = None,
    eos_token: Annotated[
        Optional[str], typer.Option(help="Token appended after every document.")
    ] = None,
    no_eos: Annotated[bool, typer.Option("--no-eos", help="Append no EOS token.")] = False,
    workers: Annotated[
        Optional[int],
        typer.Option(help="Parallel Ray tasks (default: all CPUs); 0 runs in-process."),
    ] = None,
    ray_address: Annotated[
        Optional[str], typer.Option(help="Join an existing Ray cluster (auto or HOST:PORT).")
    ] = None,
    chunk_mb: Annotated[
        int, typer.Option(help="Split large uncompressed files into tasks of about this size.")
    ] = 32,
    storage_options: Annotated[
        Optional[str], typer.Option(help="JSON passed to fsspec, e.g. '{\"anon\": true}'.")
    ] = None,
    progress: Annotated[
        Optional[bool], typer.Option("--progress/--no-progress", help="Default: on a TTY.")
    ] = None,
) -> None:
    """Tokenize corpora (jsonl, jsonl.gz, jsonl.zst, parquet, txt) into a token store."""
    from mixer.ingest import TokenizeJob
    from mixer.ingest import tokenize as run_tokenize

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
        storage_options=parse_json_option(storage_options, "--storage-options"),
    )
    run_tokenize(job, progress=progress)


@app.command(epilog="Example:  mixer inspect stores/web --json")
def inspect(
    store: Annotated[str, typer.Argument(help="Token store directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show a store's documents, tokens, shards, dtype, tokenizer and skipped records."""
    from mixer.store import TokenStore

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
    from mixer.store import TokenStore

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
        Optional[str], typer.Option(help="Write the mixed stream as a Megatron token store.")
    ] = None,
    start: Annotated[int, typer.Option(help="First block to export.")] = 0,
    stop: Annotated[Optional[int], typer.Option(help="Block to stop exporting at.")] = None,
    plot: Annotated[
        Optional[str], typer.Option(help="PNG of cumulative fractions and epochs per source.")
    ] = None,
) -> None:
    """Check a mix spec and report, export or plot the stream it defines."""
    from mixer.report import run_mix

    code = run_mix(spec, report or not (export or plot), as_json, export, start, stop, plot)
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
