"""The `mixer` command: a thin layer over the library, one verb per job.

Exit codes: 0 success; 1 a `MixerError` (bad input, spec, store or option value), printed as
one line `mixer: error: ...`; 2 a command-line usage error (unknown option, missing argument),
printed by click with the usage line, as argparse and click tools do; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shlex
import sys
from collections.abc import Callable
from inspect import signature
from typing import Annotated, Any

import typer
import typer.core

from mixer.errors import JobError, MixerError, look_hint

# Library parameters a command spells otherwise than `--name-with-dashes` (see `command`).
_FLAGS = {
    "tokenize": {"inputs": "INPUTS", "chunk_bytes": "--chunk-mb (in bytes)"},
    "peek": {"inputs": "INPUTS", "max_files": "--files"},
    "plan": {"pilot_csv": "--pilot", "finetune_tokens": "--total-tokens"},
}

app = typer.Typer(
    name="mixer",
    help="Tokenize corpora into token stores and mix them into exact, reproducible "
    "training streams.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)

EXIT_ERROR = 1  # a MixerError: the one-line message says what to do
EXIT_USAGE = 2  # click's usage errors (unknown option, missing argument)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class _Command(typer.core.TyperCommand):
    """A command whose help reads as click's does: arguments are `INPUT...` (required) or
    `[STORE]` in the usage line, not typer's `{INPUT}...`, and are listed without typer's type
    labels (`INPUT <list[str]>`); options show their metavar (every one has one)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(_argument_name(param, bracket=not param.required))
            else:
                pieces += param.get_usage_pieces(ctx)
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments, options = [], []
        for param in self.get_params(ctx):
            if (record := param.get_help_record(ctx)) is None:
                continue
            if param.param_type_name == "argument":
                arguments.append((_argument_name(param, bracket=False), record[1]))
            else:
                options.append(record)
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _argument_name(param: Any, bracket: bool) -> str:
    name = (param.metavar or str(param.name).upper()) + ("..." if param.nargs != 1 else "")
    return f"[{name}]" if bracket else name


def command(**settings: Any) -> Callable[[Callable], Callable]:
    """`app.command`, whose `MixerError`s name the command's flags instead of the library's
    parameters (`cli_message`): a parameter `text_field` is the flag `--text-field`."""

    def register(f: Callable) -> Callable:
        flags = {name: "--" + name.replace("_", "-") for name in signature(f).parameters}
        flags.update(_FLAGS.get(f.__name__, {}))

        @functools.wraps(f)
        def run(*args: Any, **kwargs: Any) -> Any:
            _Format.flags = flags
            try:
                return f(*args, **kwargs)
            except MixerError as e:
                e.args = (cli_message(e, flags),)
                raise
            finally:
                _Format.flags = {}

        return app.command(cls=_Command, **settings)(run)

    return register


def cli_message(error: MixerError, flags: dict[str, str]) -> str:
    """`error`'s message with each parameter it names (`error.params`, written `name=` or, for a
    `JobError`, leading as `name:`) spelled as its flag (`spell_flags`)."""
    message = str(error)
    if error.look is not None:  # point at `mixer peek`, not at the Python function
        spec, field = error.look
        command = f"mixer peek {shlex.quote(spec)}" + ("" if field is None else f" --field {field}")
        message = message.replace(look_hint(spec, field), f"; look with: {command}")
    if isinstance(error, JobError) and error.field in flags:
        message = flags[error.field] + message[len(error.field) :]
    return spell_flags(message, error.params, flags)


def spell_flags(message: str, params: tuple[str, ...], flags: dict[str, str]) -> str:
    """`message` with each `name=` of `params` spelled as its flag: `format='xml' is not one of
    ...` -> `--format 'xml' is not one of ...`, `pass all_splits=True` -> `pass --all-splits`.
    Parameters this command has no flag for (a recipe's TOML keys) stay as they are."""
    for name in params:
        if name not in flags:
            continue

        def flag(m: re.Match, name: str = name) -> str:
            after = m.string[m.end() : m.end() + 1]  # a value follows unless space or punctuation
            value_follows = m.group(1) is None and after not in ("", *" );,.:")
            return flags[name] + (" " if value_follows else "")

        message = re.sub(rf"(?<![\w.-]){re.escape(name)}=(True\b)?", flag, message)
    return message


def examples(*lines: str) -> str:
    """An epilog of example commands, each on its own line (click's \\b: never rewrapped)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


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


def progress_stream(progress: bool | None, as_json: bool):
    """Where the library shows progress: stderr, unless --no-progress (or --json without
    --progress) asked for none. The CLI owns the terminal; the library writes to what it gets."""
    return None if progress is False or (as_json and progress is None) else sys.stderr


def note_no_tokenizer(what: str) -> None:
    """Say why no text is shown: a store written before stores kept their tokenizer's copy."""
    typer.echo(
        f"mixer: note: {what}: no copy of the tokenizer in the store (written by an older "
        "mixer); pass --tokenizer to show text",
        err=True,
    )


def _version(value: bool) -> None:
    if value:
        from mixer import __version__
        from mixer.extras import DISTRIBUTION

        typer.echo(f"mixer {__version__} (distribution {DISTRIBUTION})")
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    cache_max_bytes: Annotated[
        float | None,
        typer.Option(
            metavar="BYTES",
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


@command(
    epilog=examples(
        "mixer tokenize pipelines/samples/fineweb pipelines/samples/dclm "
        "-t pipelines/tokenizer.json -o stores/web",
        "mixer tokenize 's3://bucket/web/*.jsonl.zst' -t tokenizer.json -o s3://bucket/stores/web",
    ),
)
def tokenize(
    inputs: Annotated[
        list[str],
        typer.Argument(metavar="INPUT", help="Files, directories or globs; local or fsspec URLs."),
    ],
    tokenizer: Annotated[
        str,
        typer.Option(
            "--tokenizer",
            "-t",
            metavar="TOKENIZER",
            help="HF tokenizer.json, or a directory with one.",
        ),
    ],
    out: Annotated[
        str, typer.Option("--out", "-o", metavar="STORE", help="Store directory to create.")
    ],
    format: Annotated[
        str | None,
        typer.Option(
            metavar="FORMAT",
            help="Override format detection: jsonl, jsonl.gz, jsonl.zst, parquet, txt.",
        ),
    ] = None,
    text_field: Annotated[
        str,
        typer.Option(
            metavar="FIELD", help="Field holding the text; dotted paths like meta.body allowed."
        ),
    ] = "text",
    txt_mode: Annotated[
        str,
        typer.Option(
            metavar="MODE", help="For .txt: 'document' (one per file) or 'line' (one per line)."
        ),
    ] = "document",
    on_error: Annotated[
        str,
        typer.Option(
            metavar="fail|skip", help="Bad records: 'fail' (stop at file:line) or 'skip' and count."
        ),
    ] = "fail",
    where: Annotated[
        list[str] | None,
        typer.Option(
            metavar="EXPR",
            help="Keep rows matching, e.g. \"src in ['abc', 'midi']\"; repeat to AND.",
        ),
    ] = None,
    eos_token: Annotated[
        str | None, typer.Option(metavar="TOKEN", help="Token appended after every document.")
    ] = None,
    no_eos: Annotated[bool, typer.Option("--no-eos", help="Append no EOS token.")] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Parallel Ray tasks (default: all CPUs, or this process when the input is "
            "too small to repay Ray's ~7 s start-up); 0 runs in-process.",
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(metavar="ADDR", help="Join an existing Ray cluster (auto or HOST:PORT)."),
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            metavar="auto|hf|fast|giga",
            help="auto: the first faster engine verified id-for-id on this input; hf; "
            "fast (fastokens); giga (gigatoken).",
        ),
    ] = "auto",
    chunk_mb: Annotated[
        int,
        typer.Option(
            metavar="MB",
            help="Task size: larger uncompressed line files are split into tasks of about this "
            "size, and smaller files of one format read together up to it.",
        ),
    ] = 32,
    storage_options: Annotated[
        str | None,
        typer.Option(metavar="JSON", help="JSON passed to fsspec, e.g. '{\"anon\": true}'."),
    ] = None,
    cache_dir: Annotated[
        str | None,
        typer.Option(
            metavar="DIR",
            help="Staging for a URL --out (default $MIXER_CACHE_DIR or ~/.cache/mixer).",
        ),
    ] = None,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Default: on a TTY.")
    ] = None,
    include: Annotated[
        list[str] | None,
        typer.Option(
            metavar="PATTERN",
            help="Read only files matching, relative to each input root, e.g. "
            "'data/CC-MAIN-*/*.parquet' ('*' within a folder, '**' across); repeat to OR.",
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            metavar="PATTERN", help="Skip files matching, relative to each input root; repeat."
        ),
    ] = None,
    all_splits: Annotated[
        bool,
        typer.Option(
            "--all-splits",
            help="Also read val/valid/validation/dev/test/sample folders and test-*/val-* "
            "files under the inputs (skipped by default).",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Show the files, tasks, bytes and output; tokenize nothing."
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary (or the --dry-run plan) as JSON.")
    ] = False,
    max_document_bytes: Annotated[
        int | None,
        typer.Option(
            metavar="BYTES",
            help="Longest record read (a jsonl line, txt document or line, parquet text value); "
            "longer ones are an error, or counted as too_large with --on-error skip "
            "(default 16777216, 16 MiB; bounds memory for any input).",
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="A trial: only the first N documents, in input order, in this process. The "
            "store is marked a trial; a run without --limit into it replaces it.",
        ),
    ] = None,
) -> None:
    """Tokenize corpora (jsonl, jsonl.gz, jsonl.zst, parquet, txt) into a token store."""
    from mixer.ingest.driver import tokenize as run_tokenize
    from mixer.ingest.job import TokenizeJob

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
        **({} if max_document_bytes is None else {"max_document_bytes": max_document_bytes}),
        limit=limit,
    )
    if dry_run:
        plan = run_tokenize(job, dry_run=True)
        typer.echo(json.dumps(plan, indent=2) if as_json else format_plan(plan))
        return
    summary: dict = {}
    run_tokenize(job, progress=progress_stream(progress, as_json), summary=summary)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))


def format_plan(plan: dict) -> str:
    """A --dry-run plan as lines."""
    formats = ", ".join(f"{k} {v:,}" for k, v in plan["formats"].items())
    state = "exists (a rerun reuses what matches)" if plan["out_exists"] else "new"
    lines = [
        f"dry run: {plan['files']:,} file{'s' if plan['files'] != 1 else ''} ({formats}), "
        f"{plan['input_bytes'] / 1e6:,.1f} MB, "
        f"in {plan['tasks']:,} task{'s' if plan['tasks'] != 1 else ''} (one shard each, "
        f"--chunk-mb {plan['chunk_bytes'] >> 20})",
        f"output   {plan['out']} ({state})",
    ]
    if plan.get("limit") is not None:
        lines.insert(1, f"trial    only the first {plan['limit']:,} documents (--limit)")
    lines += [f"  {url}" for url in plan["first_files"]]
    if plan["files"] > len(plan["first_files"]):
        lines.append(f"  (+{plan['files'] - len(plan['first_files']):,} more files)")
    return "\n".join(lines)


@command(
    epilog=examples("mixer peek pipelines/samples/musicpile/data --field src --limit 5000"),
)
def peek(
    inputs: Annotated[
        list[str],
        typer.Argument(metavar="INPUT", help="Files, directories or globs; local or fsspec URLs."),
    ],
    field: Annotated[
        str | None,
        typer.Option(
            metavar="FIELD", help="Count this field's most common values (dotted paths ok)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(metavar="N", help="Records to read in all.")] = 1000,
    files: Annotated[
        int, typer.Option(metavar="N", help="Files to read from, spread over the input.")
    ] = 8,
    text_field: Annotated[
        str, typer.Option(metavar="FIELD", help="Field holding the text.")
    ] = "text",
    format: Annotated[
        str | None, typer.Option(metavar="FORMAT", help="Override format detection.")
    ] = None,
    include: Annotated[
        list[str] | None,
        typer.Option(metavar="PATTERN", help="As for tokenize: files to read; repeat."),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option(metavar="PATTERN", help="As for tokenize: files to skip; repeat."),
    ] = None,
    all_splits: Annotated[
        bool, typer.Option("--all-splits", help="Also read held-out split folders.")
    ] = False,
    storage_options: Annotated[
        str | None,
        typer.Option(metavar="JSON", help="JSON passed to fsspec, e.g. '{\"anon\": true}'."),
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


@command(
    epilog=examples(
        "mixer inspect stores/web",
        "mixer inspect stores/proofpile --sample 3 --tokenizer pipelines/tokenizer.json",
        "mixer inspect stores/web --json",
    )
)
def inspect(
    store: Annotated[str, typer.Argument(metavar="STORE", help="Token store directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    sample: Annotated[
        int, typer.Option(metavar="K", help="Decode K documents spread over the store.")
    ] = 0,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            metavar="TOKENIZER",
            help="tokenizer.json for --sample (default: the store's copy of it).",
        ),
    ] = None,
) -> None:
    """Show a store: totals, per input and per shard (documents, tokens, share, backend),
    document-length percentiles, skipped records; --sample K decodes K documents."""
    from mixer.mix.explain import store_decoder
    from mixer.store.reader import TokenStore
    from mixer.store.summary import format_summary, store_summary

    if sample < 0:
        raise MixerError(f"--sample must be >= 0, got {sample}")
    opened = TokenStore.open(store)
    decoder = store_decoder(opened, tokenizer) if sample else None
    if sample and decoder is None:
        note_no_tokenizer(store)
    summary = store_summary(opened, sample, decoder)
    typer.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


@command(epilog=examples("mixer verify stores/web"))
def verify(
    store: Annotated[str, typer.Argument(metavar="STORE", help="Token store directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Recompute every shard checksum and re-check every index against the manifest."""
    from mixer.store.reader import TokenStore

    opened = TokenStore.open(store)
    opened.verify()
    if as_json:
        result = {
            "store": str(opened.root),
            "ok": True,
            "shards": len(opened.shards),
            "documents": opened.num_documents,
            "tokens": opened.num_tokens,
        }
        typer.echo(json.dumps(result, indent=2))
        return
    shards = len(opened.shards)
    typer.echo(
        f"{store}: OK ({shards} shard{'s' if shards != 1 else ''}, {opened.num_tokens:,} tokens)"
    )


@command(
    epilog=examples(
        "mixer mix pipelines/quickstart-mix.toml --report",
        "mixer mix pipelines/quickstart-mix.toml --export out/mixed --start 0 --stop 1000",
        "mixer mix out/spt/mix.json --plot out/mix.png",
    ),
)
def mix(
    spec: Annotated[
        str,
        typer.Argument(metavar="SPEC", help="Mix spec (TOML, or a mix.json that mixer run wrote)."),
    ],
    report: Annotated[
        bool, typer.Option("--report", help="Per phase and source: blocks, fractions, epochs.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Report as JSON.")] = False,
    export: Annotated[
        str | None,
        typer.Option(metavar="DIR", help="Write the mixed stream as a Megatron token store."),
    ] = None,
    start: Annotated[
        int | None, typer.Option(metavar="I", help="First block to export (default 0).")
    ] = None,
    stop: Annotated[
        int | None, typer.Option(metavar="J", help="Block to stop exporting at (default: end).")
    ] = None,
    plot: Annotated[
        str | None,
        typer.Option(metavar="PNG", help="PNG of cumulative fractions and epochs per source."),
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Recompute every store's checksums first.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace a different export in --export DIR (default: refuse)."
        ),
    ] = False,
) -> None:
    """Check a mix spec and report, export or plot the stream it defines.

    Re-running the same export into the same directory reuses it."""
    from mixer.report import run_mix

    if (start is not None or stop is not None) and not export:
        flag = "--start" if start is not None else "--stop"
        raise MixerError(f"{flag} selects blocks to export: add --export DIR")
    text = run_mix(
        spec,
        report or not (export or plot),
        as_json,
        export,
        start or 0,
        stop,
        plot,
        verify,
        force,
        progress=sys.stderr if sys.stderr.isatty() else None,
    )
    if text:
        typer.echo(text)


@command(
    epilog=examples(
        "mixer explain pipelines/quickstart-mix.toml --step 120 --global-batch-size 8",
        "mixer explain pipelines/quickstart-mix.toml --step 12 --global-batch-size 64 "
        "--rank 3 --world-size 8 --json",
    ),
)
def explain(
    spec: Annotated[str, typer.Argument(metavar="SPEC", help="Mix spec (TOML).")],
    step: Annotated[int, typer.Option(metavar="STEP", help="Global step (batch) to explain.")],
    global_batch_size: Annotated[
        int | None,
        typer.Option(
            metavar="N", help="Blocks per global step (default: the spec's global_batch_size)."
        ),
    ] = None,
    rank: Annotated[
        int | None,
        typer.Option(metavar="R", help="Only this data-parallel rank's rows (with --world-size)."),
    ] = None,
    world_size: Annotated[
        int, typer.Option(metavar="N", help="Data-parallel ranks sharing a step.")
    ] = 1,
    state: Annotated[
        str | None,
        typer.Option(
            metavar="JSON",
            help="A loader state_dict saved as JSON (or a MixedTrainer checkpoint's "
            "mixer_state.json): apply its steering, and place the step where that run had it.",
        ),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            metavar="TOKENIZER",
            help="tokenizer.json for text previews (default: the stores' copy of it).",
        ),
    ] = None,
    chars: Annotated[
        int, typer.Option(metavar="N", help="Characters of each document to show.")
    ] = 60,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show what a global step read: per row its source, block, epoch and the documents in it,
    with the input file and record (line or row) each came from."""
    from mixer.mix.explain import explain_step, format_rows, load_decoder
    from mixer.mix.sampler import MixSampler
    from mixer.mix.spec import MixSpec

    mix_spec = MixSpec.from_toml(spec)
    sampler = MixSampler(mix_spec)
    size = global_batch_size or mix_spec.global_batch_size
    first = None
    if state is not None:
        from mixer.mix.loader import LoaderState
        from mixer.mix.steering import apply_steering, read_state_file

        saved = read_state_file(state)
        sampler = apply_steering(sampler, saved.get("steering", saved))
        if "global_batch_size" in saved:  # a whole state: it knows where each step began
            first, ran_at = LoaderState.from_dict(saved).locate_step(step)
            if global_batch_size not in (None, ran_at):
                raise MixerError(
                    f"--global-batch-size: {global_batch_size}, but the state says step {step} "
                    f"ran at {ran_at} blocks per step; leave it out"
                )
            size = ran_at
    if size is None:
        raise MixerError("--global-batch-size: needed, the spec gives total_tokens, not steps")
    decoder = load_decoder(sampler, tokenizer)
    if decoder is None:
        note_no_tokenizer(spec)
    rows = explain_step(sampler, step, size, rank, world_size, decoder, chars, first)
    first = step * size if first is None else first
    if as_json:
        out = {"step": step, "global_batch_size": size, "first_block": first, "rows": rows}
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(f"step {step} (global batch size {size}, blocks [{first}, {first + size}))")
    typer.echo(format_rows(rows))


@command(
    epilog=examples(
        "mixer run pipelines/spt-proofpile.toml --out out/spt",
        "mixer run pipelines/spt-proofpile.toml --out out/spt "
        "--input proofpile=s3://bucket/proofpile/",
    ),
)
def run(
    pipeline: Annotated[
        str, typer.Argument(metavar="PIPELINE", help="Pipeline TOML (see pipelines/).")
    ],
    out: Annotated[
        str, typer.Option("--out", "-o", metavar="DIR", help="Directory for stores and reports.")
    ],
    input: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            metavar="NAME=ROOT",
            help="NAME=ROOT: store NAME reads the dataset downloaded whole at ROOT (local or "
            "URL) through the recipe's include/exclude patterns; repeat for several roots.",
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(metavar="N", help="Parallel Ray tasks; 0 in-process.")
    ] = None,
    ray_address: Annotated[
        str | None, typer.Option(metavar="ADDR", help="Join an existing Ray cluster.")
    ] = None,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Default: on a TTY.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Rewrite the export even if DIR/mixed differs.")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show each store's files, tasks and output; run nothing."),
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="A trial: each store only the first N documents (see mixer tokenize --limit); "
            "a run without it replaces the trial stores.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the stores' summaries and the report as JSON.")
    ] = False,
) -> None:
    """Run a recipe: tokenize its stores, report its mix, export and plot it.

    Re-running reuses finished stores and an identical export."""
    from mixer.pipeline import run_pipeline

    overrides: dict[str, list[str]] = {}
    for item in input or ():
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise MixerError(f"--input {item!r}: expected NAME=URL")
        overrides.setdefault(name, []).append(url)
    typer.echo(
        run_pipeline(
            pipeline,
            out,
            overrides,
            workers,
            ray_address,
            progress_stream(progress, as_json),
            force=force,
            dry_run=dry_run,
            as_json=as_json,
            limit=limit,
        )
    )


@command(
    epilog=examples(
        "mixer plan --domain-tokens 300M --total-tokens 200B --max-repeats 50",
        "mixer plan --pilot pipelines/pilot-example.csv --total-tokens 200B --plot p.png",
    ),
)
def plan(
    total_tokens: Annotated[
        str, typer.Option(metavar="N", help="Training budget in tokens: 200B, 200e9, ...")
    ],
    domain_tokens: Annotated[
        str | None,
        typer.Option(metavar="D|STORE", help="Domain size in tokens (300M, 6.8M) or a store."),
    ] = None,
    fraction: Annotated[
        list[float] | None,
        typer.Option(metavar="F", help="Fraction to tabulate; repeat (default: the paper's)."),
    ] = None,
    max_repeats: Annotated[
        float | None, typer.Option(metavar="E", help="Epoch cap to warn about.")
    ] = None,
    pilot: Annotated[
        str | None, typer.Option(metavar="CSV", help="Pilot runs: tokens,fraction,loss.")
    ] = None,
    target_tokens: Annotated[
        str | None,
        typer.Option(metavar="N", help="Budget for the recommendation (default: total)."),
    ] = None,
    plot: Annotated[
        str | None, typer.Option(metavar="PNG", help="Predicted loss vs fraction.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    injection: Annotated[
        bool,
        typer.Option(
            "--injection",
            help="Fit the forgetting law (Bethune et al. 2025) to --pilot runs (columns "
            "model_params, finetune_tokens, injection_fraction, pretrain_loss) and give the "
            "smallest injected "
            "pretraining fraction for finetuning on --total-tokens tokens.",
        ),
    ] = False,
    model_params: Annotated[
        str | None,
        typer.Option(
            metavar="N",
            help="With --injection: the model to plan for, e.g. 1.3B (default: largest pilot).",
        ),
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(
            metavar="NATS", help="With --injection: allowed rise of the pretraining loss, in nats."
        ),
    ] = 0.01,
) -> None:
    """Choose a domain fraction: epochs and repeats per fraction, and the SPT scaling-law fit;
    or with --injection the pretraining-data fraction to inject while finetuning."""
    from mixer.plan import run_injection_plan, run_plan
    from mixer.units import parse_count

    if injection:
        if domain_tokens is not None or fraction or max_repeats is not None or plot:
            raise MixerError(
                "--injection takes --pilot, --total-tokens (finetuning tokens), --model-params"
                " and --tolerance; --domain-tokens, --fraction, --max-repeats and --plot are"
                " for the SPT plan"
            )
        finetune = parse_count(total_tokens, "--total-tokens")
        params = None if model_params is None else parse_count(model_params, "--model-params")
        typer.echo(run_injection_plan(pilot, finetune, params, tolerance, as_json))
        return

    domain = None
    if domain_tokens is not None:
        if os.path.exists(domain_tokens) or "://" in domain_tokens:
            from mixer.store.reader import TokenStore

            domain = TokenStore.open(domain_tokens).num_tokens
        else:
            domain = parse_count(domain_tokens, "--domain-tokens")
    total = parse_count(total_tokens, "--total-tokens")
    target = None if target_tokens is None else parse_count(target_tokens, "--target-tokens")
    typer.echo(run_plan(domain, total, fraction, max_repeats, pilot, target, plot, as_json))


class _StderrHandler(logging.StreamHandler):
    """Writes each record to the `sys.stderr` of the moment (so capture and redirection work)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Format(logging.Formatter):
    """`mixer tokenize: ...` for the tokenize pipeline's lines, `mixer: ...` for the rest, and
    `warning: ` before a warning's message; parameters a line names (`params`, as on a
    `MixerError`) spelled as the running command's `flags`."""

    flags: dict[str, str] = {}

    def format(self, record: logging.LogRecord) -> str:
        who = "mixer tokenize" if record.name.startswith("mixer.ingest") else "mixer"
        level = "warning: " if record.levelno >= logging.WARNING else ""
        message = spell_flags(record.getMessage(), getattr(record, "params", ()), self.flags)
        return f"{who}: {level}{message}"


def configure_logging() -> None:
    """The library's log lines, INFO and up, one line each on stderr (once per process)."""
    package = logging.getLogger("mixer")
    if not any(isinstance(h, _StderrHandler) for h in package.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_Format())
        package.addHandler(handler)
    package.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit code 1, usage
    errors exit 2 (click), Ctrl-C exits 130 after saying what was kept."""
    configure_logging()
    try:
        app(args=argv, prog_name="mixer")
    except MixerError as e:
        typer.echo(f"mixer: error: {e}", err=True)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt as e:  # outside a command (typer turns it into exit 130 inside)
        typer.echo(f"mixer: {str(e) or 'interrupted'}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit as e:
        interrupt = interrupt_of(e)
        if interrupt is not None:
            typer.echo(f"mixer: {str(interrupt) or 'interrupted'}", err=True)
        raise


def interrupt_of(exit: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C behind an exit, if any: typer turns KeyboardInterrupt into a silent exit 130,
    and `mixer.errors.Interrupted` carries what was kept and how to resume."""
    seen: BaseException | None = exit
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


if __name__ == "__main__":
    main()
