"""Find input files and cut them into tasks: a file, a byte range of one, parquet row groups, or
a group of consecutive small files.

Plans depend only on the files and `chunk_bytes`, never on the number of workers, so a store's
shards are reproducible.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from mixer.errors import MixerError
from mixer.ingest.files import FORMATS, arrow_errors, check_text_column, detect_format, open_input
from mixer.ingest.readers import ReadOptions
from mixer.ingest.select import Selection, SelectionReport, literal_names

_STORE_NAMES = ("manifest.json",)


_STORE_SUFFIXES = (".bin", ".idx")


_CARD_NAMES = ("readme", "license", "licence")  # README.md, LICENSE.txt next to the data


_FOOTER_THREADS = 16


# Inputs and tasks
@dataclass(frozen=True)
class InputFile:
    """One corpus file; local files keep a plain absolute path, others a full URL."""

    url: str
    size: int
    format: str
    input: str = field(default="", compare=False)
    """The input (file, folder or glob, as given) it was found under."""
    version: str = field(default="", compare=False)
    """What else identifies this state of the file: its mtime in ns, or its etag (`_version`)."""


@dataclass(frozen=True)
class Task:
    """One unit of work, which becomes one output shard."""

    url: str
    format: str
    size: int
    byte_range: tuple[int, int] | None = None
    row_groups: tuple[int, int] | None = None
    version: str = ""
    """The input file's version (`InputFile.version`): with `size`, what the file was."""
    est_bytes: int | None = field(default=None, compare=False, repr=False)
    """Bytes the task reads when neither `size` nor `byte_range` says (parquet row groups)."""

    def describe(self) -> dict:
        """JSON-able identity of the task, for the manifest and resume keys."""
        out: dict[str, Any] = {"url": self.url, "format": self.format, "size": self.size}
        if self.version:
            out["version"] = self.version
        if self.byte_range is not None:
            out["byte_range"] = list(self.byte_range)
        if self.row_groups is not None:
            out["row_groups"] = list(self.row_groups)
        return out

    @property
    def weight(self) -> int:
        """Approximate bytes read, so progress bars move by data rather than by task."""
        if self.byte_range is not None:
            return self.byte_range[1] - self.byte_range[0]
        if self.est_bytes is not None:
            return self.est_bytes
        return self.size

    @property
    def parts(self) -> tuple[Task, ...]:
        """The pieces read one after the other: the task itself (see `FileGroup.parts`)."""
        return (self,)

    @property
    def whole_file(self) -> bool:
        """Whether it reads its whole file (no byte range or row groups): it may be grouped."""
        return self.byte_range is None and self.row_groups is None


@dataclass(frozen=True)
class FileGroup:
    """Consecutive whole small files of one format, read one after the other into one shard, so
    that thousands of small files make a few shards rather than thousands.

    Its record numbers count across the files in order (see `mixer.ingest.readers.read_numbered`);
    its shard entry lists each file with the records it read (`mixer.store.format`)."""

    parts: tuple[Task, ...]

    @property
    def url(self) -> str:
        """The first file's."""
        return self.parts[0].url

    @property
    def format(self) -> str:
        return self.parts[0].format

    def describe(self) -> dict:
        """JSON-able identity: every file's url, size and version, in order."""
        return {"inputs": [p.describe() for p in self.parts]}

    @property
    def weight(self) -> int:
        return sum(p.weight for p in self.parts)


def _known(url: str) -> bool:
    try:
        detect_format(url)
    except MixerError:
        return False
    return True


def _selected(rel: str, format: str | None) -> bool:
    """Whether a file found under a directory or by a glob is corpus, not a store or dotfile."""
    parts = rel.split("/")
    name = parts[-1]
    if any(p.startswith(".") for p in parts if p):
        return False
    if name in _STORE_NAMES or name.endswith(_STORE_SUFFIXES):
        return False
    if name.lower().split(".")[0] in _CARD_NAMES:  # a dataset card is not corpus
        return False
    return format is not None or _known(name)


def expand_inputs(
    inputs: list[str],
    format: str | None = None,
    storage_options: dict | None = None,
    selection: Selection | None = None,
    report: SelectionReport | None = None,
) -> list[InputFile]:
    """Files, directories and globs (local or fsspec URLs) -> the corpus files, in a fixed order.

    A file named explicitly is always read. Directories (recursively) and globs take only files
    with a known extension (any file when `format` is given), skipping dotfiles, token-store
    files and README/LICENSE files, so that pointing at a downloaded dataset does not pick up
    its card, its `.cache/` or a store; then
    `selection` (see `mixer.ingest.select`) applies its include/exclude patterns and skips
    held-out splits, relative to each input's root. Every input must contribute a file and every
    include pattern must select one: an empty selection is an error, not an empty store.
    """
    if format is not None and format not in FORMATS:
        raise MixerError(
            f"format={format!r} is not one of {', '.join(FORMATS)}", params=("format",)
        )
    selection = selection or Selection()
    report = report if report is not None else SelectionReport()
    seen: set[str] = set()
    files: list[InputFile] = []
    sample: list[str] = []
    for spec in inputs:
        try:
            found = _expand_one(spec, format, storage_options or {}, selection, report, sample)
        except (FileNotFoundError, PermissionError) as e:
            raise MixerError(f"cannot list input {spec!r}: {e}") from None
        for url, size, version in sorted(found):
            if url not in seen:
                seen.add(url)
                files.append(InputFile(url, size, format or detect_format(url), spec, version))
    if sample:  # some input was a folder or glob, where patterns apply
        selection.check_includes(report, list(inputs), sample)
    return files


def _static_root(path: str) -> tuple[str, str]:
    """(folder before the first glob character, the pattern after it) of a glob path."""
    magic = min(path.index(c) for c in "*?[" if c in path)
    cut = path.rfind("/", 0, magic)
    return (path[:cut], path[cut + 1 :]) if cut >= 0 else ("", path)


def _version(info: dict[str, Any], path: str, local: bool) -> str:
    """A file's version beside its size: mtime in ns locally, else the store's etag or mtime."""
    if local:
        return str(os.stat(path).st_mtime_ns)
    for key in ("ETag", "etag", "md5Hash", "generation", "LastModified", "mtime", "updated"):
        if info.get(key) is not None:
            return f"{key}:{info[key]}"
    return ""


def _expand_one(
    spec: str,
    format: str | None,
    storage_options: dict,
    selection: Selection,
    report: SelectionReport,
    sample: list[str],
) -> list[tuple[str, int, str]]:
    fs, path = fsspec.core.url_to_fs(spec, **storage_options)
    local = isinstance(fs, LocalFileSystem)
    if local:
        path = os.path.abspath(path)

    def url_of(p: str) -> str:
        return os.path.abspath(p) if local else fs.unstrip_protocol(p)

    root_names: set[str] = set()
    if any(c in path for c in "*?["):
        root, pattern = _static_root(path)
        root_names = literal_names(pattern)
        entries = fs.glob(path, detail=True)
        candidates: list[tuple[str, str, dict]] = []
        for p, info in entries.items():
            rel = p[len(root) :].lstrip("/") if p.startswith(root) else p.rsplit("/", 1)[-1]
            if info["type"] == "directory":
                candidates += [(q, f"{rel}/{r}", i) for q, r, i in _walk(fs, p)]
            else:
                candidates.append((p, rel, info))
    elif fs.isdir(path):
        candidates = _walk(fs, path)
    elif fs.isfile(path):
        info = fs.info(path)
        return [(url_of(path), info.get("size") or 0, _version(info, path, local))]
    else:
        raise MixerError(f"no input files match {spec!r}: it does not exist")
    corpus = [(p, rel, info) for p, rel, info in candidates if _selected(rel, format)]
    if not corpus:
        unknown = [rel for _, rel, _ in candidates if _selected(rel, "any")]
        hint = ""
        if unknown:
            hint = f" (only files of unknown format, e.g. {unknown[0]!r}; pass format=)"
        raise MixerError(f"no input files match {spec!r}{hint}", params=("format",))
    sample += [rel for _, rel, _ in corpus[:3]]
    before = (sum(report.held_out.values()), report.excluded)
    chosen = [
        (url_of(p), info.get("size") or 0, _version(info, p, local))
        for p, rel, info in corpus
        if selection.choose(rel, root_names, report)
    ]
    if not chosen:
        held = sum(report.held_out.values()) - before[0]
        why = []
        if report.excluded > before[1]:
            patterns = [f"include={p!r}" for p in selection.include]
            patterns += [f"exclude={p!r}" for p in selection.exclude]
            why.append(f"{report.excluded - before[1]:,} by {' '.join(patterns)}")
        if held:
            why.append(
                f"{held:,} in held-out split or sample folders (name the folder in the input "
                "or an include= pattern, or pass all_splits=True)"
            )
        raise MixerError(
            f"no file of {spec!r} is selected: its {len(corpus):,} corpus files (e.g. "
            f"{corpus[0][1]!r}) are all left out, {'; '.join(why)}",
            params=("include", "exclude", "all_splits"),
        )
    return chosen


def _walk(fs: Any, root: str) -> list[tuple[str, str, dict]]:
    """(path, path relative to root, fsspec info) of every file under a directory."""
    root = root.rstrip("/")
    found = fs.find(root, detail=True)
    return [
        (p, p[len(root) :].lstrip("/"), info)
        for p, info in found.items()
        if info["type"] != "directory"
    ]


def plan_tasks(
    files: list[InputFile], chunk_bytes: int = 64 << 20, options: ReadOptions | None = None
) -> list[Task | FileGroup]:
    """Split files into tasks of about `chunk_bytes` each, in a fixed order.

    Uncompressed line files are split into byte ranges, parquet into runs of row groups (by
    uncompressed size, read from the footer); compressed files and whole-file text documents
    cannot be split. Consecutive whole files of the same format whose estimated text
    (`text_bytes`, the measure splitting uses) adds up to at most `chunk_bytes` become one
    `FileGroup`; a file that is alone in its group stays a plain `Task`.
    """
    if chunk_bytes <= 0:
        raise MixerError(f"chunk size must be positive, not {chunk_bytes}")
    options = options or ReadOptions()
    if options.where:
        txt = [f.url for f in files if f.format.startswith("txt")]
        if txt:
            raise MixerError(
                f"a where= filter needs records with fields; {txt[0]} is plain text",
                params=("where",),
            )
    parquet = [f for f in files if f.format == "parquet"]
    with ThreadPoolExecutor(min(_FOOTER_THREADS, max(1, len(parquet)))) as pool:
        groups = list(pool.map(lambda f: _parquet_groups(f, options), parquet))
    footers = {f.url: g for f, g in zip(parquet, groups, strict=True)}
    pieces: list[Task] = []
    for f in files:
        splittable = f.format == "jsonl" or (f.format == "txt" and options.txt_mode == "line")
        if f.format == "parquet":
            pieces += _split_row_groups(f, footers[f.url], chunk_bytes)
        elif splittable and f.size > chunk_bytes:
            n = -(-f.size // chunk_bytes)
            bounds = [f.size * i // n for i in range(n + 1)]
            pieces += [
                Task(f.url, f.format, f.size, byte_range=(a, b), version=f.version)
                for a, b in zip(bounds, bounds[1:], strict=False)
            ]
        else:
            pieces.append(Task(f.url, f.format, f.size, version=f.version))
    return _grouped(pieces, chunk_bytes)


def text_bytes(task: Task | FileGroup) -> int:
    """Estimated text in a task: compressed inputs (.gz, .zst, parquet) count 4x their size."""
    return task.weight * (1 if task.format in ("jsonl", "txt") else 4)


def _grouped(pieces: list[Task], chunk_bytes: int) -> list[Task | FileGroup]:
    """The tasks in order, runs of small whole files of one format joined (greedily, up to
    `chunk_bytes`) into file groups."""
    tasks: list[Task | FileGroup] = []
    run: list[Task] = []
    run_of: str | None = None  # the run's format
    total = 0

    def close() -> None:
        if run:
            tasks.append(run[0] if len(run) == 1 else FileGroup(tuple(run)))
            run.clear()

    for task in pieces:
        text = text_bytes(task)
        if not task.whole_file or text > chunk_bytes:
            close()
            tasks.append(task)
            run_of = None
            continue
        if run_of != task.format or total + text > chunk_bytes:
            close()
            run_of, total = task.format, 0
        run.append(task)
        total += text
    close()
    return tasks


def _parquet_groups(f: InputFile, options: ReadOptions) -> list[tuple[int, int]]:
    """(uncompressed, compressed) bytes of each row group; checks the text column exists."""
    import pyarrow.parquet as pq

    with open_input(f.url, options.storage_options) as raw, arrow_errors(f.url):
        pf = pq.ParquetFile(raw)
        check_text_column(f.url, pf, options.text_field)
        md = pf.metadata
        return [
            (
                md.row_group(i).total_byte_size,
                sum(md.row_group(i).column(c).total_compressed_size for c in range(md.num_columns)),
            )
            for i in range(md.num_row_groups)
        ]


def _split_row_groups(f: InputFile, groups: list[tuple[int, int]], chunk: int) -> list[Task]:
    runs: list[tuple[int, int]] = []
    start, total = 0, 0
    for i, (uncompressed, _) in enumerate(groups):
        total += uncompressed
        if total >= chunk:
            runs.append((start, i + 1))
            start, total = i + 1, 0
    if start < len(groups):
        runs.append((start, len(groups)))
    if len(runs) <= 1:
        return [
            Task(f.url, f.format, f.size, version=f.version, est_bytes=sum(c for _, c in groups))
        ]
    return [
        Task(
            f.url,
            f.format,
            f.size,
            row_groups=(a, b),
            version=f.version,
            est_bytes=sum(c for _, c in groups[a:b]),
        )
        for a, b in runs
    ]
