"""`mixer tokenize`: corpus files -> tasks -> a token store, resumable and deterministic.

Each task (a file, a byte range of one, a run of parquet row groups, or a group of small files;
see `mixer.ingest.inputs.plan_tasks`) becomes exactly one shard named after its position in the
plan, so the store's bytes depend on the inputs and the tokenizer, never on how many workers ran
or in which order they finished.

Where the store goes, a directory or a URL, is a `mixer.store.output.Output`: the driver claims
it, workers commit shards with done records, the driver publishes the manifest last (see that
module for the crash safety and the claims). A rerun reuses every shard whose record matches its
task (the task key covers the input's size and mtime or etag, the options and the tokenizer) and
redoes the rest.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TextIO

from mixer.errors import Interrupted, MixerError
from mixer.ingest import inputs, readers
from mixer.ingest.encoders import (
    AUTO_ORDER,
    TokenizerInfo,
    engine_available,
    load_tokenizer,
    verify_backend,
)
from mixer.ingest.executors import CANCEL_WAIT_S, run_in_process, run_on_ray, use_ray
from mixer.ingest.job import TokenizeJob
from mixer.ingest.matches import check_inputs
from mixer.ingest.progress import Progress, mb
from mixer.ingest.select import Selection, SelectionReport
from mixer.ingest.task import TaskSpec, run_task, task_key
from mixer.store.format import TOKENIZER_FILE, dtype_for_vocab, entry_inputs, shard_files
from mixer.store.output import Claimant, Output, open_output
from mixer.store.writer import build_manifest

logger = logging.getLogger(__name__)

VERIFY_DOCUMENTS_PER_FILE = 32


VERIFY_FILES = 64


# The sample is bounded in characters, not only in documents, since HF tokenizers' memory and
# time grow with the text it is given (BENCHMARKS.md, "Verification sample"). A prefix of a long
# document verifies the engines as well (both see the same text), and `ADVERSARIAL` already
# holds long pieces. At most 64 files x 256 Ki characters.
VERIFY_DOCUMENT_CHARS = 64 << 10


VERIFY_CHARS_PER_FILE = 256 << 10


def tokenize(
    job: TokenizeJob,
    progress: TextIO | None = None,
    dry_run: bool = False,
    summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run a tokenize job to completion and return the store's manifest.

    `progress`: a stream to show progress on (a bar on a terminal, plain lines otherwise;
    None shows none). The
    summary line is logged at INFO (`mixer.ingest.driver`), warnings at WARNING. `dry_run` stops
    after planning and returns the plan instead (`plan_summary`: files, tasks, bytes, the output
    and whether it exists); nothing is written. `summary`, when given, is filled with what the
    summary line says (`run_summary`), for `--json`."""
    info = load_tokenizer(job.tokenizer, job.eos_token, job.no_eos)
    output = open_output(job.out, job.storage_options, job.cache_dir)
    output.check_usable()
    options = readers.ReadOptions(
        text_field=job.text_field,
        txt_mode=job.txt_mode,
        on_error=job.on_error,
        where=job.row_filters(),
        storage_options=job.storage_options,
        max_document_bytes=job.max_document_bytes,
    )
    files = find_files(job)
    tasks = inputs.plan_tasks(files, job.chunk_bytes, options)
    job_options = {
        "text_field": job.text_field,
        "txt_mode": job.txt_mode,
        "on_error": job.on_error,
        "where": [w.describe() for w in options.where],
        "eos_token": info.eos_token,
        "inputs": [f.url for f in files],
    }
    if job.max_document_bytes != readers.MAX_DOCUMENT_BYTES:  # it decides which records stay
        job_options["max_document_bytes"] = job.max_document_bytes
    if job.limit is not None:  # a trial: never taken for the complete store (complete_store)
        job_options["limit"] = job.limit
    if dry_run:
        return plan_summary(job, files, tasks, output.where, output.exists())
    if (done := complete_store(output, info, job_options, tasks, quiet=True)) is not None:
        if summary is not None:
            summary.update(run_summary(done, done["num_shards"], 0.0, output.where))
        return done
    identity = json.dumps([info.sha256, job_options, output.where], sort_keys=True)
    output.claim(Claimant.for_job(hashlib.sha256(identity.encode()).hexdigest()))
    try:
        if (done := complete_store(output, info, job_options, tasks)) is not None:
            if summary is not None:  # a run of the same job finished it while this one waited
                summary.update(run_summary(done, done["num_shards"], 0.0, output.where))
            return done
        backend = resolve_backend(job.backend, info, tasks, options)
        specs = [
            TaskSpec(
                t,
                f"shard-{n:05d}",
                task_key(t, job_options, info, backend),
                options,
                output,
                backend,
            )
            for n, t in enumerate(tasks)
        ]
        entries = reusable_entries(output, specs)
        started = time.perf_counter()
        reused = len(entries)
        bar = Progress(sum(t.weight for t in tasks), len(specs), progress)
        bar.reused(sum(s.task.weight for s in specs if s.name in entries), reused)
        ran: list[TaskSpec] = []  # a trial's tasks, each cut at the documents it still wanted
        try:
            if job.limit is not None:
                on_ray, nodes = False, set()
                reused = run_trial(specs, job.limit, output, entries, ran, info, job_options, bar)
                specs = ran
            else:
                on_ray, nodes = run_tasks(
                    [s for s in specs if s.name not in entries], entries, info, job, bar
                )
            # A run that lost a URL output may have overwritten a shard after its check: redo.
            if lost := not_own(output, specs, entries):
                logger.warning(
                    "%s: %d shards were overwritten by another run; redoing them",
                    output.where,
                    len(lost),
                )
                run_tasks(lost, entries, info, job, bar)
                if lost := not_own(output, specs, entries):
                    raise MixerError(
                        f"{output.where}: shard {lost[0].name} is not the one this job wrote "
                        "(another job writes the same output); nothing was published"
                    )
        except KeyboardInterrupt:
            bar.close()
            output.remove_temporaries(wait_s=CANCEL_WAIT_S)  # once cancelled workers are gone
            # What a rerun will reuse: workers may have finished shards the driver had not seen.
            kept = len(reusable_entries(output, ran if job.limit is not None else specs))
            raise Interrupted(
                f"interrupted: {kept} of {len(specs)} shards kept; rerun the same command to resume"
            ) from None
        finally:
            bar.close()
        manifest = store_manifest(specs, entries, files, options, info, job_options)
        output.write_file(TOKENIZER_FILE, info.json.encode("utf-8"))  # its sha256 is info's
        output.publish(manifest)
    finally:
        output.release()
    note_kept_out_of_ray(on_ray, job, len(specs) - reused)
    size = sum(e["bin_bytes"] + e["idx_bytes"] + e.get("rec_bytes", 0) for e in manifest["shards"])
    elapsed = time.perf_counter() - started
    logger.info(summary_line(manifest, reused, elapsed, nodes, output.where, size, bar))
    if summary is not None:
        summary.update(run_summary(manifest, reused, elapsed, output.where, size, bar, nodes))
    return manifest


def plan_summary(
    job: TokenizeJob, files: list, tasks: list, out: str, exists: bool
) -> dict[str, Any]:
    """What `--dry-run` reports: the files and tasks a run would read and where it would write."""
    formats = Counter(f.format for f in files)
    return {
        "dry_run": True,
        "inputs": list(job.inputs),
        "files": len(files),
        "formats": dict(sorted(formats.items())),
        "input_bytes": sum(f.size for f in files),
        "tasks": len(tasks),
        "shards": len(tasks),
        "chunk_bytes": job.chunk_bytes,
        "limit": job.limit,
        "out": out,
        "out_exists": exists,
        "first_files": [f.url for f in files[:10]],
    }


def run_summary(
    manifest: dict,
    reused: int,
    seconds: float,
    out: str,
    size: int | None = None,
    progress: Progress | None = None,
    nodes: set[str] = frozenset(),
) -> dict[str, Any]:
    """The summary line as data (`mixer tokenize --json`)."""
    text = progress.done.text_bytes if progress is not None else 0
    return {
        "store": out,
        "documents": manifest["num_documents"],
        "tokens": manifest["num_tokens"],
        "shards": manifest["num_shards"],
        "reused": reused,
        "skipped": manifest["skipped"],
        "filtered": manifest["filtered"],
        "seconds": round(seconds, 3),
        "text_bytes": text,
        "text_mb_per_s": round(text / 1e6 / seconds, 3) if seconds > 0 and text else None,
        "bytes_on_disk": size,
        "ray_nodes": len(nodes),
        "limit": (manifest.get("job") or {}).get("limit"),  # a trial of the first `limit`
    }


_said_ray_note = False  # the note is logged once per process (a recipe has many stores)


def note_kept_out_of_ray(on_ray: bool, job: TokenizeJob, pending: int) -> None:
    """Say (once per process) when the default kept a job with several tasks out of Ray."""
    global _said_ray_note
    trial = job.limit is not None  # runs in this process whatever its size
    if not on_ray and not trial and job.workers is None and min(os.cpu_count() or 1, pending) > 1:
        if not _said_ray_note:
            _said_ray_note = True
            logger.info(
                "ran in this process (too little input to repay Ray's start-up of about 7 s; "
                "workers=N forces Ray)",
                extra={"params": ("workers",)},
            )


def find_files(job: TokenizeJob) -> list[inputs.InputFile]:
    """The corpus files of the job's inputs, through its include/exclude selection."""
    chosen = SelectionReport()
    files = inputs.expand_inputs(
        list(job.inputs),
        job.format,
        job.storage_options,
        Selection(job.include, job.exclude, job.all_splits),
        chosen,
    )
    if (line := chosen.held_out_line()) is not None:
        logger.info(line, extra={"params": ("include", "all_splits")})
    return files


def run_trial(
    specs: list[TaskSpec],
    limit: int,
    output: Output,
    entries: dict,
    ran: list[TaskSpec],
    info: TokenizerInfo,
    job_options: dict,
    bar: Progress,
) -> int:
    """A trial (`TokenizeJob.limit`): `specs` in plan order in this process, each cut at the
    documents still wanted, until `limit` are written or the input ends; returns how many
    shards were reused. Each task run, with its cut, is added to `ran` and its entry to
    `entries`. A task's key covers its cut, which depends on the tasks before it, so an
    interrupted trial resumes exactly."""
    records, size_of = output.done_records()
    reused = 0
    for spec in specs:
        if limit == 0:
            break
        cut = {**job_options, "max_documents": limit}
        spec = dataclasses.replace(
            spec, max_documents=limit, key=task_key(spec.task, cut, info, spec.backend)
        )
        ran.append(spec)
        entry = reusable(records.get(spec.name), spec, size_of)
        if entry is None:
            entry = run_task(spec, info, functools.partial(bar.advance, spec.name))
            bar.finish(spec.name, spec.task.weight, entry, entry.get("text_bytes"))
        else:
            reused += 1
            bar.reused(spec.task.weight, 1)
        entries[spec.name] = entry
        limit -= entry["documents"]
    return reused


def run_tasks(
    pending: list[TaskSpec], entries: dict, info: TokenizerInfo, job: TokenizeJob, bar: Progress
) -> tuple[bool, set[str]]:
    """Run `pending`, adding each entry to `entries`; (ran on Ray, Ray node ids that ran them).

    However this ends (done, an error, Ctrl-C), tasks still running are cancelled and waited
    for before it returns or raises."""
    on_ray = use_ray(job, pending, pending[0].backend) if pending else False
    execute = run_on_ray if on_ray else run_in_process
    nodes: set[str] = set()
    running = execute(pending, info, job, bar.advance)
    try:
        for spec, entry, node in running:
            if node is not None:
                spec.output.check_visible(entry, node)
                nodes.add(node)
            entries[spec.name] = entry
            bar.finish(spec.name, spec.task.weight, entry, entry.get("text_bytes"))
    finally:
        running.close()
    return on_ray, nodes


def complete_store(
    output: Output,
    info: TokenizerInfo,
    job_options: dict,
    tasks: list[inputs.Task | inputs.FileGroup],
    quiet: bool = False,
) -> dict | None:
    """The output's manifest when this job finished it on these very inputs, else None.

    A store of another tokenizer or other options is refused; one whose inputs changed since
    (size, mtime or etag) is rebuilt, reusing the shards of unchanged inputs, and the log says
    what changed. A trial (`TokenizeJob.limit`) of this job with another limit, or none, is
    replaced whole; a trial refuses an output holding this job's complete store.
    """
    manifest = output.read_manifest()
    if manifest is None:
        return None
    built_limit = (manifest.get("job") or {}).get("limit")
    same_but_limit = {k: v for k, v in job_options.items() if k != "limit"}
    if built_limit is not None:
        same_but_limit["limit"] = built_limit
    check_same_job(manifest, output.where, info, same_but_limit)
    if built_limit != job_options.get("limit"):
        if built_limit is None:
            raise MixerError(
                f"{output.where} holds the complete store of this job; write the trial "
                f"(limit={job_options['limit']}) to another output",
                params=("limit",),
            )
        if not quiet:
            logger.warning(
                "%s holds a trial of the first %s documents (limit=%d); replacing it",
                output.where,
                f"{built_limit:,}",
                built_limit,
                extra={"params": ("limit",)},
            )
        return None
    changes = changed_inputs(manifest, tasks)
    if not changes:
        logger.info("%s: already complete, nothing to do", output.where)
        return manifest
    if not quiet:
        logger.warning(
            "%s: inputs changed since the store was built (%s); rebuilding their shards",
            output.where,
            "; ".join(changes),
        )
    return None


def changed_inputs(manifest: dict, tasks: list[inputs.Task | inputs.FileGroup]) -> list[str]:
    """What differs between the inputs a store was built from and `tasks`, one line per file."""
    built: dict[str, list[dict]] = {}
    for entry in manifest["shards"]:
        for source in entry_inputs(entry) if isinstance(entry, dict) else []:
            built.setdefault(str(source.get("url")), []).append(without_counts(source))
    now: dict[str, list[dict]] = {}
    for task in tasks:
        for part in task.parts:
            now.setdefault(part.url, []).append(part.describe())
    if "limit" in (manifest.get("job") or {}):  # a trial depends only on the tasks it read
        now = {url: d[: len(built[url])] for url, d in now.items() if url in built}
    changes = []
    for url, described in now.items():
        before = built.get(url, [])
        if before == described:
            continue
        old = before[0] if before else {}
        if old.get("size") != described[0]["size"]:
            changes.append(f"{url}: {old.get('size')} -> {described[0]['size']} bytes")
        elif old.get("version") != described[0].get("version"):
            changes.append(f"{url}: same size, modified since")
        else:
            changes.append(f"{url}: split differently")
    return changes


GROUP_COUNTS = ("records", "documents", "tokens", "skipped")  # per file of a group's entry


def without_counts(source: dict) -> dict:
    """A shard entry's description of one of its inputs as the task described it: a group's
    files also carry what each read and gave (`mixer.store.format`)."""
    return {k: v for k, v in source.items() if k not in GROUP_COUNTS}


def built_from(entry: dict) -> dict | None:
    """The task description a shard entry was built from (`Task.describe`, `FileGroup.describe`)."""
    if "inputs" in entry:
        return {"inputs": [without_counts(s) for s in entry_inputs(entry)]}
    return entry.get("input")


def reusable_entries(output: Output, specs: list[TaskSpec]) -> dict[str, dict[str, Any]]:
    """Entries of shards an earlier run of the same tasks finished and left intact, by name.

    A finished store whose inputs changed (see `complete_store`) becomes a store being written
    again: the shards of unchanged tasks get done records, then the manifest goes. Nothing of a
    trial's store is kept that way (its last shard is cut short).
    """
    manifest = output.read_manifest()
    if manifest is not None:
        built = {e.get("name"): e for e in manifest["shards"] if isinstance(e, dict)}
        keep = {
            s.name: {"key": s.key, "entry": built[s.name]}
            for s in specs
            if s.name in built and built_from(built[s.name]) == s.task.describe()
        }
        output.restart({} if "limit" in (manifest.get("job") or {}) else keep)
    records, size_of = output.done_records()
    entries = {}
    for spec in specs:
        if (entry := reusable(records.get(spec.name), spec, size_of)) is not None:
            entries[spec.name] = entry
    return entries


def reusable(record: Any, spec: TaskSpec, size_of: Callable[[str], int | None]) -> dict | None:
    """The record's entry if it is for this exact task and both shard files have its sizes."""
    if not isinstance(record, dict) or record.get("key") != spec.key:
        return None
    entry = record.get("entry")
    if not isinstance(entry, dict):
        return None
    for kind in shard_files(entry):
        name = entry.get(kind)
        if not isinstance(name, str) or size_of(name) != entry.get(f"{kind}_bytes"):
            return None
    return entry


def not_own(output: Output, specs: list[TaskSpec], entries: dict) -> list[TaskSpec]:
    """The specs whose shard in the output is not the one this job wrote or reused."""
    records, size_of = output.done_records()
    lost = []
    for spec in specs:
        found = reusable(records.get(spec.name), spec, size_of)
        ours = entries[spec.name]
        if found is None or any(found.get(k) != ours.get(k) for k in ("bin_sha256", "idx_sha256")):
            lost.append(spec)
            del entries[spec.name]
    return lost


def store_manifest(
    specs: list[TaskSpec],
    entries: dict,
    files: list[inputs.InputFile],
    options: readers.ReadOptions,
    info: TokenizerInfo,
    job_options: dict,
) -> dict[str, Any]:
    """The manifest of the finished shards, after checking every input contributed."""
    source_of = {f.url: f.input for f in files}
    checked = []
    for s in specs:
        entry = entries[s.name]
        if not isinstance(s.task, inputs.FileGroup):
            checked.append((source_of[s.task.url], entry))
            continue
        probes = entry.get("probe") or [None] * len(s.task.parts)  # None: reused from a manifest
        files = entry["inputs"]  # a trial's group cut short lists only the files it read
        for part, counts, probe in zip(s.task.parts[: len(files)], files, probes, strict=True):
            checked.append((source_of[part.url], {**counts, "probe": probe}))
    check_inputs(checked, options.where, options.text_field)
    shards = [{k: v for k, v in entries[s.name].items() if k != "probe"} for s in specs]
    skipped: Counter[str] = Counter()
    for entry in shards:
        skipped.update(entry["skipped"])
    copy = {"file": TOKENIZER_FILE, "file_bytes": len(info.json.encode("utf-8"))}
    return build_manifest(
        shards,
        tokenizer={**info.manifest_entry(), **copy},
        eos_id=info.eos_id,
        dtype=dtype_for_vocab(info.vocab_size),
        job=job_options,
        skipped=dict(sorted(skipped.items())),
        filtered=sum(e["filtered"] for e in shards),
    )


def check_same_job(manifest: dict, where: str, info: TokenizerInfo, job_options: dict) -> None:
    """Refuse (naming `where`) a manifest of another tokenizer or other inputs or options."""
    if manifest["tokenizer"].get("sha256") != info.sha256:
        raise MixerError(
            f"{where} holds a store built with another tokenizer "
            f"({manifest['tokenizer'].get('name')}, sha256 "
            f"{str(manifest['tokenizer'].get('sha256'))[:12]}…); choose another output"
        )
    if manifest.get("job") != job_options:
        raise MixerError(
            f"{where} holds a store built from other inputs or options; choose another output"
        )


def verification_sample(tasks: list[inputs.Task | inputs.FileGroup], options: readers.ReadOptions):
    """The first documents of every input file (up to VERIFY_FILES files), labelled file:n."""
    options = dataclasses.replace(options, on_error="skip")
    pieces = [p for t in tasks for p in t.parts]
    firsts = {t.url: t for t in reversed(pieces)}  # the first task of each file
    sample = []
    for task in list(reversed(firsts.values()))[:VERIFY_FILES]:
        documents = readers.read_documents(task, options, readers.ReadStats())
        chars = 0
        for n, text in enumerate(documents):
            if n == VERIFY_DOCUMENTS_PER_FILE or chars >= VERIFY_CHARS_PER_FILE:
                break
            label = f"{task.url} document {n + 1}"
            if len(text) > VERIFY_DOCUMENT_CHARS:  # both engines get the same prefix
                text = text[:VERIFY_DOCUMENT_CHARS]
                label += f" (first {VERIFY_DOCUMENT_CHARS:,} characters)"
            chars += len(text)
            sample.append((label, text))
    return sample


def resolve_backend(
    requested: str,
    info: TokenizerInfo,
    tasks: list[inputs.Task | inputs.FileGroup],
    options: readers.ReadOptions,
) -> str:
    """'hf', or a faster engine's backend only once it matched hf id for id on this tokenizer
    and this input: the one named, or for 'auto' the first of AUTO_ORDER that is verified."""
    if requested == "hf":
        return "hf"
    candidates = (
        [b for b in AUTO_ORDER if engine_available(b)] if requested == "auto" else [requested]
    )
    if not candidates:
        return "hf"
    sample = verification_sample(tasks, options)
    refusals = []
    for backend in candidates:
        mismatch = verify_backend(info, sample, backend)
        if mismatch is None:
            if refusals:
                logger.info("using backend %s; %s", backend, "; ".join(refusals))
            return backend
        if requested != "auto":
            raise MixerError(f"backend {backend} refused: {mismatch}; use backend hf or auto")
        refusals.append(mismatch)
    logger.warning("using the hf backend: %s", "; ".join(refusals))
    return "hf"


def summary_line(
    manifest: dict,
    reused: int,
    seconds: float,
    nodes: set[str] = frozenset(),
    out: str | None = None,
    size: int | None = None,
    progress: Progress | None = None,
) -> str:
    """`wrote D documents, T tokens, S shards (R reused), K skipped (why) in Xs (text MB/s),
    on N Ray nodes; OUT, SIZE on disk`."""
    skipped = sum(manifest["skipped"].values())
    shards = manifest["num_shards"]
    parts = [
        f"wrote {manifest['num_documents']:,} documents",
        f"{manifest['num_tokens']:,} tokens",
        f"{shards} shard{'s' if shards != 1 else ''} ({reused} reused)",
        f"{skipped:,} skipped"
        + (
            " (" + ", ".join(f"{k} {v:,}" for k, v in manifest["skipped"].items()) + ")"
            if skipped
            else ""
        ),
    ]
    if manifest["filtered"]:
        parts.append(f"{manifest['filtered']:,} filtered out by where")
    if (limit := (manifest.get("job") or {}).get("limit")) is not None:
        parts[0] = f"trial of the first {limit:,} documents: " + parts[0]
    line = ", ".join(parts) + f" in {seconds:.1f}s"
    if progress is not None and progress.done.text_bytes:
        line += f" ({mb(progress.done.text_bytes)} of text, {progress.rate() / 1e6:,.1f} MB/s)"
    if nodes:
        line += f" on {len(nodes)} Ray node{'s' if len(nodes) != 1 else ''}"
    if out is not None:
        line += f"; {out}" + (f", {mb(size)} on disk" if size is not None else "")
    return line
