"""`mixer tokenize`: corpus files -> Ray tasks -> a token store, resumable and deterministic.

Each task (a file, a byte range of one, or a run of parquet row groups; see `sources.plan_tasks`)
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

import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixer import remote, sources
from mixer.backends import fast_available, make_encoder, verify_backend
from mixer.errors import MixerError
from mixer.store import (
    MANIFEST,
    ShardWriter,
    build_manifest,
    dtype_for_vocab,
    json_bytes,
    read_manifest,
    write_json_atomic,
)
from mixer.tokenizer import TokenizerInfo, load_tokenizer

PARTIAL_DIR = ".mixer-partial"
BATCH_DOCUMENTS = 512
BATCH_CHARS = 4 << 20
BACKENDS = ("auto", "hf", "fast")
# For choosing between this process and a local Ray (`use_ray`): Ray's fixed cost here, and
# the pipeline's text bytes per second on one core (bench_tokenize_peers.py), used with
# `text_bytes`, whose 4x for compressed inputs is about what zstd achieves on web text.
RAY_START_S = 7.0
CORE_BYTES_PER_S = {"fast": 80e6, "hf": 3e6}
VERIFY_DOCUMENTS_PER_FILE = 32
VERIFY_FILES = 64


@dataclass(frozen=True)
class TokenizeJob:
    """Everything `mixer tokenize` was asked to do; the CLI and the API both build one."""

    inputs: tuple[str, ...]
    tokenizer: str
    out: str
    format: str | None = None
    text_field: str = "text"
    txt_mode: str = "document"
    on_error: str = "fail"
    where: tuple[str, ...] = ()
    eos_token: str | None = None
    no_eos: bool = False
    workers: int | None = None
    ray_address: str | None = None
    chunk_bytes: int = 32 << 20
    backend: str = "auto"
    storage_options: dict = field(default_factory=dict, hash=False)
    cache_dir: str | None = None  # staging for a URL --out (default: mixer.remote's cache)


@dataclass(frozen=True)
class TaskSpec:
    """What one worker needs to write one shard; small, so it ships cheaply to Ray."""

    task: sources.Task
    name: str
    key: str
    options: sources.ReadOptions
    out: str  # the store directory; for a URL --out, the cache dir for node-local staging
    backend: str
    url: str | None = None  # a URL --out, where the worker uploads the finished shard


def task_key(task: sources.Task, options: dict, tokenizer: TokenizerInfo, backend: str) -> str:
    """Fingerprint of everything that determines a shard's bytes: reuse only on a match."""
    material = {
        "task": task.describe(),
        "backend": backend,
        "size": task.size,
        "options": options,
        "tokenizer": tokenizer.sha256,
        "eos": tokenizer.eos_id,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def run_task(spec: TaskSpec, info: TokenizerInfo) -> dict[str, Any]:
    """Tokenize one task into one shard and record it as done; returns its manifest entry."""
    out = Path(spec.out)
    if spec.url is not None:  # staging on whichever node runs this task
        out = remote.staging_dir(spec.url, spec.out or None)
        out.mkdir(parents=True, exist_ok=True)
    encoder = make_encoder(info, spec.backend)
    stats = sources.ReadStats()
    writer = ShardWriter(out, spec.name, dtype_for_vocab(info.vocab_size))
    try:
        batch: list[str] = []
        chars = 0
        for text in sources.read_documents(spec.task, spec.options, stats):
            batch.append(text)
            chars += len(text)
            if len(batch) >= BATCH_DOCUMENTS or chars >= BATCH_CHARS:
                writer.add_documents(*encoder.encode_batch(batch))
                batch, chars = [], 0
        if batch:
            writer.add_documents(*encoder.encode_batch(batch))
        entry = writer.close()
    except BaseException:
        writer.abort()
        raise
    entry.update(
        input=spec.task.describe(),
        backend=encoder.name,
        skipped=dict(sorted(stats.skipped.items())),
        filtered=stats.filtered,
    )
    record = {"key": spec.key, "entry": entry}
    if spec.url is None:
        write_json_atomic(out / PARTIAL_DIR / f"{spec.name}.json", record)
    else:
        upload_shard(out, spec, record)
    return entry


def upload_shard(staging: Path, spec: TaskSpec, record: dict) -> None:
    """Upload a finished shard, then its done record, then drop the node-local copy."""
    entry = record["entry"]
    storage_options = spec.options.storage_options
    names = [entry["bin"], entry["idx"]]
    remote.upload_files(staging, names, spec.url, storage_options)
    remote.put_bytes(
        f"{spec.url}/{PARTIAL_DIR}/{spec.name}.json",
        json_bytes(record),
        storage_options,
    )
    for name in names:
        (staging / name).unlink(missing_ok=True)


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
    for kind in ("bin", "idx"):
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


def tokenize(job: TokenizeJob, progress: bool | None = None) -> dict[str, Any]:
    """Run a tokenize job to completion and return the store's manifest."""
    info = load_tokenizer(job.tokenizer, job.eos_token, job.no_eos)
    for value, allowed, flag in (
        (job.on_error, ("fail", "skip"), "--on-error"),
        (job.txt_mode, ("document", "line"), "--txt-mode"),
    ):
        if value not in allowed:
            raise MixerError(f"{flag} {value!r} is not one of {', '.join(allowed)}")
    if job.backend not in BACKENDS:
        raise MixerError(f"--backend {job.backend!r} is not one of {', '.join(BACKENDS)}")
    if job.format is not None and job.format not in sources.FORMATS:
        raise MixerError(f"--format {job.format!r} is not one of {', '.join(sources.FORMATS)}")
    # A URL --out: workers upload their shards as they finish, the driver the manifest last.
    url = job.out.rstrip("/") if remote.is_remote(job.out) else None
    if url is not None:
        out = remote.staging_dir(url, job.cache_dir)
    else:
        out = Path(job.out.removeprefix("file://"))
    options = sources.ReadOptions(
        text_field=job.text_field,
        txt_mode=job.txt_mode,
        on_error=job.on_error,
        where=tuple(sources.parse_where(w) for w in job.where),
        storage_options=job.storage_options,
    )
    files = sources.expand_inputs(list(job.inputs), job.format, job.storage_options)
    tasks = sources.plan_tasks(files, job.chunk_bytes, options)
    job_options = {
        "text_field": job.text_field,
        "txt_mode": job.txt_mode,
        "on_error": job.on_error,
        "where": [w.describe() for w in options.where],
        "eos_token": info.eos_token,
        "inputs": [f.url for f in files],
    }
    if url is not None:
        published = remote.read_remote_manifest(url, job.storage_options)
        if published is not None:
            check_same_job(published, url, info, job_options)
            print(f"{url}: already complete, nothing to do", file=sys.stderr)
            return published
    else:
        existing = check_output_dir(out, info, job_options)
        if existing is not None:
            print(f"{out}: already complete, nothing to do", file=sys.stderr)
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
    try:
        for spec, entry, node in execute(pending, info, job):
            if node is not None:
                if url is None:
                    check_visible(out, entry, node)
                nodes.add(node)
            entries[spec.name] = entry
            bar.update(spec.task.weight, entry)
    finally:
        bar.close()

    shards = [entries[s.name] for s in specs]
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
        for litter in out.glob(".shard-*.tmp-*"):  # left by a worker killed mid-shard (retried)
            litter.unlink(missing_ok=True)
    else:
        remote.put_bytes(f"{url}/{MANIFEST}", json_bytes(manifest), job.storage_options)
        remote.remove_prefix(f"{url}/{PARTIAL_DIR}", job.storage_options)
        shutil.rmtree(out, ignore_errors=True)
    elapsed = time.perf_counter() - started
    line = summary_line(manifest, len(entries) - len(pending), elapsed, nodes)
    if not on_ray and job.workers is None and min(os.cpu_count() or 1, len(pending)) > 1:
        line += (
            " in this process (too little input to repay Ray's start-up; --workers N forces Ray)"
        )
    print(line, file=sys.stderr)
    return manifest


def check_visible(out: Path, entry: dict, node: str) -> None:
    """A shard a Ray worker wrote must be readable here: --out must be shared by all nodes."""
    path = out / entry["bin"]
    if not path.is_file() or path.stat().st_size != entry["bin_bytes"]:
        raise MixerError(
            f"{entry['name']} was written on Ray node {node[:12]} but is not at {path} on the "
            "driver: on a multi-node cluster --out must be a shared filesystem or a URL"
        )


def verification_sample(tasks: list[sources.Task], options: sources.ReadOptions):
    """The first documents of every input file (up to VERIFY_FILES files), labelled file:n."""
    options = sources.ReadOptions(
        text_field=options.text_field,
        txt_mode=options.txt_mode,
        on_error="skip",
        where=options.where,
        storage_options=options.storage_options,
    )
    firsts = {t.url: t for t in reversed(tasks)}  # the first task of each file
    sample = []
    for task in list(reversed(firsts.values()))[:VERIFY_FILES]:
        documents = sources.read_documents(task, options, sources.ReadStats())
        for n, text in enumerate(documents):
            if n == VERIFY_DOCUMENTS_PER_FILE:
                break
            sample.append((f"{task.url} document {n + 1}", text))
    return sample


def resolve_backend(
    requested: str, info: TokenizerInfo, tasks: list[sources.Task], options: sources.ReadOptions
) -> str:
    """'hf', or 'fast' only once it matched hf id for id on this tokenizer and this input."""
    if requested == "hf" or (requested == "auto" and fast_available() is None):
        return "hf"
    mismatch = verify_backend(info, verification_sample(tasks, options))
    if mismatch is None:
        return "fast"
    if requested == "fast":
        raise MixerError(f"--backend fast refused: {mismatch}; use --backend hf or auto")
    print(f"mixer tokenize: warning: using the hf backend: {mismatch}", file=sys.stderr)
    return "hf"


def use_ray(job: TokenizeJob, pending: list[TaskSpec], backend: str) -> bool:
    """Whether to run on Ray: always with --ray-address or an explicit --workers N > 1.

    By default (all CPUs of this machine) only when the work is large enough to repay a local
    Ray's start-up, shutdown and worker imports, about 7 s: with the fast engine 500 MB took 7.0 s
    in this process and 12.5 s on two Ray workers (BENCHMARKS.md, "Scaling").
    """
    if job.workers == 0:
        return False
    if job.ray_address:
        return True
    if job.workers is not None:
        return job.workers > 1
    workers = min(os.cpu_count() or 1, len(pending))
    if workers <= 1:
        return False
    weights = [text_bytes(s.task) for s in pending]
    one_process_s = sum(weights) / CORE_BYTES_PER_S[backend]
    ray_s = RAY_START_S + max(sum(weights) / workers, max(weights)) / CORE_BYTES_PER_S[backend]
    return ray_s < one_process_s


def text_bytes(task: sources.Task) -> int:
    """Estimated text in a task: compressed inputs (.gz, .zst, parquet) count 4x their size."""
    return task.weight * (1 if task.format in ("jsonl", "txt") else 4)


def dispatch_order(pending: list[TaskSpec]) -> list[TaskSpec]:
    """Largest task first, ties in input order: a big file started last would run alone at the
    end. The store does not depend on this order (shards are named and listed by input order)."""
    return sorted(pending, key=lambda s: -text_bytes(s.task))


def summary_line(manifest: dict, reused: int, seconds: float, nodes: set[str] = frozenset()) -> str:
    skipped = sum(manifest["skipped"].values())
    parts = [
        f"wrote {manifest['num_documents']:,} documents",
        f"{manifest['num_tokens']:,} tokens",
        f"{manifest['num_shards']} shards ({reused} reused)",
        f"{skipped:,} skipped" + (f" {manifest['skipped']}" if skipped else ""),
    ]
    if manifest["filtered"]:
        parts.append(f"{manifest['filtered']:,} filtered out by --where")
    where = f" on {len(nodes)} Ray node{'s' if len(nodes) != 1 else ''}" if nodes else ""
    return "mixer tokenize: " + ", ".join(parts) + f" in {seconds:.1f}s{where}"


# ---------------------------------------------------------------------------- executors


def run_in_process(pending: list[TaskSpec], info: TokenizerInfo, job: TokenizeJob):
    """Sequential, no Ray: small jobs (see `use_ray`), --workers 0/1, memory:// inputs."""
    for spec in pending:
        yield spec, run_task(spec, info), None


def run_task_on_node(spec: TaskSpec, info: TokenizerInfo) -> tuple[dict[str, Any], str]:
    """`run_task` in a Ray worker, also returning the id of the node that ran it."""
    import ray

    return run_task(spec, info), ray.get_runtime_context().get_node_id()


def run_on_ray(pending: list[TaskSpec], info: TokenizerInfo, job: TokenizeJob):
    """Run tasks on Ray, at most `workers` in flight, yielding each as it finishes."""
    if not job.ray_address:
        # A one-machine Ray then binds to 127.0.0.1 instead of the machine's network address
        # (read by Ray at import, so it must be set before the first `import ray`).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if any(s.task.url.startswith("memory://") for s in pending):
        raise MixerError("memory:// inputs live in one process; use --workers 0 to run in-process")
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"logging_level": "ERROR", "include_dashboard": False}
        if job.ray_address:
            kwargs["address"] = job.ray_address
        else:
            # "local" starts a fresh instance; a bare ray.init() would silently join any
            # cluster `ray start` left running on this machine, with other resources.
            kwargs["address"] = "local"
            kwargs["num_cpus"] = job.workers or os.cpu_count()
        ray.init(**kwargs)
    workers = job.workers or int(ray.cluster_resources().get("CPU", 1))
    # A task whose worker dies (OOM kill, lost node) is rerun from scratch by Ray: the shard is
    # only renamed into place when complete, so a retry can neither duplicate nor lose documents.
    remote = ray.remote(num_cpus=1, max_retries=3)(run_task_on_node)
    info_ref = ray.put(info)
    queue = list(reversed(dispatch_order(pending)))
    in_flight: dict[Any, TaskSpec] = {}
    try:
        while queue or in_flight:
            while queue and len(in_flight) < workers:
                spec = queue.pop()
                in_flight[remote.remote(spec, info_ref)] = spec
            done, _ = ray.wait(list(in_flight), num_returns=1)
            spec = in_flight.pop(done[0])
            try:
                entry, node = ray.get(done[0])
                yield spec, entry, node
            except ray.exceptions.RayTaskError as e:
                if isinstance(e.cause, MixerError):
                    raise e.cause from None
                raise
    finally:
        for ref in in_flight:
            ray.cancel(ref, force=True)


# ---------------------------------------------------------------------------- progress


class Progress:
    """tqdm over input bytes with documents/tokens in the postfix; silent when not a TTY."""

    def __init__(self, total_bytes: int, total_shards: int, enabled: bool | None):
        from tqdm import tqdm

        if enabled is None:
            enabled = sys.stderr.isatty()
        self.documents = self.tokens = self.shards = 0
        self.total_shards = total_shards
        self.bar = tqdm(
            total=total_bytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc="tokenize",
            disable=not enabled,
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def reused(self, nbytes: int, shards: int) -> None:
        self.shards += shards
        self.bar.update(nbytes)

    def update(self, nbytes: int, entry: dict) -> None:
        self.shards += 1
        self.documents += entry["documents"]
        self.tokens += entry["tokens"]
        self.bar.set_postfix_str(
            f"tasks {self.shards}/{self.total_shards} docs {self.documents:,} "
            f"tokens {self.tokens:,}",
            refresh=False,
        )
        self.bar.update(nbytes)

    def close(self) -> None:
        self.bar.close()
