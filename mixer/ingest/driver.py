"""`mixer tokenize`: corpus files -> Ray tasks -> a token store, resumable and deterministic.

Each task (a file, a byte range of one, or a run of parquet row groups; see
`mixer.ingest.inputs.plan_tasks`)
becomes exactly one shard named after its position in the plan, so the store's bytes depend on
the inputs and the tokenizer, never on how many workers ran or in which order they finished.

Crash safety: a worker publishes its shard by renaming, then drops a small "done" record
(its manifest entry and the task's key) into `STORE/.mixer-partial/`. A rerun reuses every
shard whose record matches its task, redoes the rest, and writes `manifest.json` last. Until the
manifest exists the directory is not a store.

A URL --out (s3://...) works the same way on any number of nodes: each worker writes its shard
to a node-local staging directory, uploads the .bin and .idx, then the done record (so a record
at the URL means the shard's objects are complete), and deletes its local copy. The driver
uploads `manifest.json` last. Nothing needs a filesystem shared between nodes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mixer.errors import Interrupted, MixerError
from mixer.ingest import inputs, readers, where
from mixer.ingest.encoders import (
    AUTO_ORDER,
    TokenizerInfo,
    engine_available,
    load_tokenizer,
    verify_backend,
)
from mixer.ingest.executors import run_in_process, run_on_ray, use_ray
from mixer.ingest.files import FORMATS
from mixer.ingest.job import BACKENDS, TokenizeJob
from mixer.ingest.matches import check_inputs
from mixer.ingest.progress import Progress, mb
from mixer.ingest.select import Selection, SelectionReport
from mixer.ingest.task import PARTIAL_DIR, TaskSpec, task_key
from mixer.store import cache, remote
from mixer.store.format import MANIFEST, dtype_for_vocab, json_bytes, shard_files, write_json_atomic
from mixer.store.reader import read_manifest
from mixer.store.writer import build_manifest

logger = logging.getLogger(__name__)

VERIFY_DOCUMENTS_PER_FILE = 32


VERIFY_FILES = 64


# The sample is bounded in size, not only in documents: HF tokenizers needs about 200 bytes of
# memory per byte of text, so 32 documents of 50 MB took 40 s and 10 GB. A prefix of a long
# document verifies the engines as well (they see the same text), and `ADVERSARIAL` already
# holds long pieces. At most 64 files x 256 Ki characters.
VERIFY_DOCUMENT_CHARS = 64 << 10


VERIFY_CHARS_PER_FILE = 256 << 10


def finished_entries(out: Path, specs: list[TaskSpec]) -> dict[str, dict[str, Any]]:
    """Entries of shards an earlier run of the same tasks finished and left intact, by name."""

    def size_of(name: str) -> int | None:
        path = out / name
        return path.stat().st_size if path.is_file() else None

    entries = {}
    for spec in specs:
        try:
            record = json.loads((out / PARTIAL_DIR / f"{spec.name}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        if (entry := reusable(record, spec, size_of)) is not None:
            entries[spec.name] = entry
    return entries


def finished_remote_entries(url: str, specs: list[TaskSpec], storage_options: dict):
    """`finished_entries` for a URL --out: done records and shard objects at the URL."""
    records = remote.read_json_objects(f"{url}/{PARTIAL_DIR}", storage_options)
    sizes = remote.object_sizes(url, storage_options)
    entries = {}
    for spec in specs:
        record = records.get(f"{spec.name}.json")
        if (entry := reusable(record, spec, sizes.get)) is not None:
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


def check_output_dir(out: Path, info: TokenizerInfo, job_options: dict) -> dict | None:
    """Refuse to clobber: returns the existing manifest when this exact job already finished."""
    if (out / MANIFEST).exists():
        return check_same_job(read_manifest(out), str(out), info, job_options)
    if out.exists():
        if not out.is_dir():
            raise MixerError(f"--out {out} exists and is not a directory")
        strays = [
            p.name for p in out.iterdir() if p.name != PARTIAL_DIR and not p.name.startswith(".")
        ]
        if strays and not (out / PARTIAL_DIR).is_dir():
            raise MixerError(
                f"--out {out} is a non-empty directory that is not a mixer store "
                f"(holds {strays[0]!r}); choose an empty or new directory"
            )
    return None


def check_same_job(manifest: dict, where: str, info: TokenizerInfo, job_options: dict) -> dict:
    """`manifest` when it records this tokenizer and job, else a MixerError naming `where`."""
    if manifest["tokenizer"].get("sha256") != info.sha256:
        raise MixerError(
            f"{where} holds a store built with another tokenizer "
            f"({manifest['tokenizer'].get('name')}, sha256 "
            f"{str(manifest['tokenizer'].get('sha256'))[:12]}…); choose another --out"
        )
    if manifest.get("job") != job_options:
        raise MixerError(
            f"{where} holds a store built from other inputs or options; choose another --out"
        )
    return manifest


def tokenize(
    job: TokenizeJob,
    progress: bool | None = None,
    dry_run: bool = False,
    summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run a tokenize job to completion and return the store's manifest.

    `dry_run` stops after planning and returns the plan instead (`plan_summary`: files, tasks,
    bytes, the output and whether it is already complete); nothing is written. `summary`, when
    given, is filled with what the summary line says (`run_summary`), for `--json`."""
    info = load_tokenizer(job.tokenizer, job.eos_token, job.no_eos)
    for value, allowed, flag in (
        (job.on_error, ("fail", "skip"), "--on-error"),
        (job.txt_mode, ("document", "line"), "--txt-mode"),
    ):
        if value not in allowed:
            raise MixerError(f"{flag} {value!r} is not one of {', '.join(allowed)}")
    if job.backend not in BACKENDS:
        raise MixerError(f"--backend {job.backend!r} is not one of {', '.join(BACKENDS)}")
    if job.format is not None and job.format not in FORMATS:
        raise MixerError(f"--format {job.format!r} is not one of {', '.join(FORMATS)}")
    # A URL --out: workers upload their shards as they finish, the driver the manifest last.
    url = job.out.rstrip("/") if remote.is_remote(job.out) else None
    if url is not None:
        out = cache.staging_dir(url, job.cache_dir)
    else:
        out = Path(job.out.removeprefix("file://"))
    options = readers.ReadOptions(
        text_field=job.text_field,
        txt_mode=job.txt_mode,
        on_error=job.on_error,
        where=tuple(where.parse_where(w) for w in job.where),
        storage_options=job.storage_options,
        max_document_bytes=job.max_document_bytes,
    )
    selection = Selection(tuple(job.include), tuple(job.exclude), job.all_splits)
    chosen = SelectionReport()
    files = inputs.expand_inputs(
        list(job.inputs), job.format, job.storage_options, selection, chosen
    )
    if (line := chosen.held_out_line()) is not None:
        print(f"mixer tokenize: {line}", file=sys.stderr)
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
    if dry_run:
        return plan_summary(job, files, tasks, url or str(out), url is None and out.exists())
    if url is not None:
        published = remote.read_remote_manifest(url, job.storage_options)
        if published is not None:
            check_same_job(published, url, info, job_options)
            print(f"{url}: already complete, nothing to do", file=sys.stderr)
            if summary is not None:
                summary.update(run_summary(published, published["num_shards"], 0.0, url))
            return published
    else:
        existing = check_output_dir(out, info, job_options)
        if existing is not None:
            print(f"{out}: already complete, nothing to do", file=sys.stderr)
            if summary is not None:
                summary.update(run_summary(existing, existing["num_shards"], 0.0, str(out)))
            return existing

    backend = resolve_backend(job.backend, info, tasks, options)
    specs = [
        TaskSpec(
            task,
            f"shard-{n:05d}",
            task_key(task, job_options, info, backend),
            options,
            (job.cache_dir or "") if url else str(out),
            backend,
            url,
        )
        for n, task in enumerate(tasks)
    ]
    if url is None:
        (out / PARTIAL_DIR).mkdir(parents=True, exist_ok=True)
        entries = finished_entries(out, specs)
    else:
        entries = finished_remote_entries(url, specs, job.storage_options)
    pending = [s for s in specs if s.name not in entries]

    bar = Progress(sum(t.weight for t in tasks), len(specs), enabled=progress)
    bar.reused(sum(s.task.weight for s in specs if s.name in entries), len(entries))
    started = time.perf_counter()
    on_ray = use_ray(job, pending, backend)
    execute = run_on_ray if on_ray else run_in_process
    nodes: set[str] = set()
    running = execute(pending, info, job, bar.advance)
    try:
        for spec, entry, node in running:
            if node is not None:
                if url is None:
                    check_visible(out, entry, node)
                nodes.add(node)
            entries[spec.name] = entry
            bar.finish(spec.name, spec.task.weight, entry, entry.get("text_bytes"))
    except KeyboardInterrupt:
        running.close()  # cancels and waits for Ray tasks still running
        bar.close()
        remove_temporaries(out)
        # What a rerun will reuse: workers may have finished shards the driver had not heard of.
        if url is None:
            kept = len(finished_entries(out, specs))
        else:
            kept = len(finished_remote_entries(url, specs, job.storage_options))
        raise Interrupted(
            f"interrupted: {kept} of {len(specs)} shards kept; rerun the same command to resume"
        ) from None
    finally:
        bar.close()

    source_of = {f.url: f.input for f in files}
    check_inputs(
        [(source_of[s.task.url], entries[s.name]) for s in specs], options.where, job.text_field
    )
    shards = [{k: v for k, v in entries[s.name].items() if k != "probe"} for s in specs]
    skipped: Counter[str] = Counter()
    for entry in shards:
        skipped.update(entry["skipped"])
    manifest = build_manifest(
        shards,
        tokenizer=info.manifest_entry(),
        eos_id=info.eos_id,
        dtype=dtype_for_vocab(info.vocab_size),
        job=job_options,
        skipped=dict(sorted(skipped.items())),
        filtered=sum(e["filtered"] for e in shards),
    )
    if url is None:
        write_json_atomic(out / MANIFEST, manifest)
        shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)
        remove_temporaries(out)  # left by a worker killed mid-shard (and retried)
    else:
        remote.put_bytes(f"{url}/{MANIFEST}", json_bytes(manifest), job.storage_options)
        remote.remove_prefix(f"{url}/{PARTIAL_DIR}", job.storage_options)
        shutil.rmtree(out, ignore_errors=True)
    elapsed = time.perf_counter() - started
    kept_out_of_ray = (
        not on_ray and job.workers is None and min(os.cpu_count() or 1, len(pending)) > 1
    )
    global _said_ray_note
    if kept_out_of_ray and not _said_ray_note:
        _said_ray_note = True
        print(
            "mixer tokenize: ran in this process (too little input to repay Ray's start-up of "
            "about 7 s; --workers N forces Ray)",
            file=sys.stderr,
        )
    location = job.out if url is not None else str(out)
    size = sum(e["bin_bytes"] + e["idx_bytes"] + e.get("rec_bytes", 0) for e in shards)
    reused = len(entries) - len(pending)
    print(summary_line(manifest, reused, elapsed, nodes, location, size, bar), file=sys.stderr)
    if summary is not None:
        summary.update(run_summary(manifest, reused, elapsed, location, size, bar, nodes))
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
    }


_said_ray_note = False  # the note above is printed once per process (a recipe has many stores)


def remove_temporaries(out: Path) -> None:
    """Remove half-written shard files (hidden `.NAME.KIND.tmp-PID`) from a store directory:
    the store's run is the only writer there, so whatever is left is a killed task's."""
    if out.is_dir():
        for litter in out.glob(".shard-*.tmp-*"):
            litter.unlink(missing_ok=True)


def check_visible(out: Path, entry: dict, node: str) -> None:
    """A shard a Ray worker wrote must be readable here: --out must be shared by all nodes."""
    path = out / entry["bin"]
    if not path.is_file() or path.stat().st_size != entry["bin_bytes"]:
        raise MixerError(
            f"{entry['name']} was written on Ray node {node[:12]} but is not at {path} on the "
            "driver: on a multi-node cluster --out must be a shared filesystem or a URL"
        )


def verification_sample(tasks: list[inputs.Task], options: readers.ReadOptions):
    """The first documents of every input file (up to VERIFY_FILES files), labelled file:n."""
    options = readers.ReadOptions(
        text_field=options.text_field,
        txt_mode=options.txt_mode,
        on_error="skip",
        where=options.where,
        storage_options=options.storage_options,
        max_document_bytes=options.max_document_bytes,
    )
    firsts = {t.url: t for t in reversed(tasks)}  # the first task of each file
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
    requested: str, info: TokenizerInfo, tasks: list[inputs.Task], options: readers.ReadOptions
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
                logger.info("using --backend %s; %s", backend, "; ".join(refusals))
            return backend
        if requested != "auto":
            raise MixerError(f"--backend {backend} refused: {mismatch}; use --backend hf or auto")
        refusals.append(mismatch)
    print(f"mixer tokenize: warning: using the hf backend: {'; '.join(refusals)}", file=sys.stderr)
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
        parts.append(f"{manifest['filtered']:,} filtered out by --where")
    line = "mixer tokenize: " + ", ".join(parts) + f" in {seconds:.1f}s"
    if progress is not None and progress.done.text_bytes:
        line += f" ({mb(progress.done.text_bytes)} of text, {progress.rate() / 1e6:,.1f} MB/s)"
    if nodes:
        line += f" on {len(nodes)} Ray node{'s' if len(nodes) != 1 else ''}"
    if out is not None:
        line += f"; {out}" + (f", {mb(size)} on disk" if size is not None else "")
    return line
