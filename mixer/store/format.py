"""The token store: a directory of Megatron-compatible shards plus a manifest.

Layout of a store directory::

    manifest.json        written last, atomically; a store without it is not a store
    NAME.bin             raw little-endian token ids, documents back to back (EOS included)
    NAME.idx             Megatron ``IndexedDataset`` index for NAME.bin (below)
    tokenizer.json       optional: a copy of the tokenizer the store was built with

``NAME.idx`` (all integers little-endian, the layout megatron-core's ``IndexedDataset`` reads)::

    offset  size      field
    0       9         magic b"MMIDIDX\\x00\\x00"
    9       8         version, uint64 = 1
    17      1         dtype code, uint8: 8 = uint16, 4 = int32 (Megatron's codes)
    18      8         sequence count N, uint64 (one sequence per document)
    26      8         document count N + 1, uint64
    34      4*N       sequence lengths in tokens, int32
    34+4N   8*N       sequence byte offsets into NAME.bin, int64
    34+12N  8*(N+1)   document indices 0..N, int64 (document d is sequences [d, d+1))

``NAME.rec`` (optional: provenance, written by `mixer tokenize`) is one little-endian integer
per document, uint32 (or uint64 when a value needs it; the manifest's ``rec_dtype``): the
document's record number within its task, counted from the task's first record (see
`record_base`). Stores without it open and mix; they just cannot say where a document came from.

Token ids are uint16 when every id fits (vocab <= 65536) and int32 otherwise: Megatron has no
uint32 code, and int32 holds any real vocabulary.

``manifest.json`` holds the format version, the tokenizer fingerprint (sha256 of its
tokenizer.json) and vocab size, the EOS id, the dtype, and per shard its file names, document
and token counts, byte sizes and sha256 of both files and the input it came from. Names in the
manifest are plain file names inside the store; anything else is rejected.

A shard's input is ``input``, one task's description (``url``, ``format``, ``size``,
``version``, and ``byte_range`` or ``row_groups`` for part of a file), or, for a shard made of
several small whole files (`mixer.ingest.inputs.FileGroup`), ``inputs``: the list of the files'
descriptions in the order they were read, each with the ``records`` it read and the
``documents`` and ``tokens`` it gave. Such a shard's ``.rec`` numbers count records across its
files in that order, so record r belongs to the first file whose cumulative record count exceeds
r (`entry_inputs`, `TokenStore.origin`). Stores written before groups existed have only
``input`` and open as before.

The tokenizer's copy, when there is one, is listed as ``tokenizer.file`` (its name in the store)
and ``tokenizer.file_bytes``; its checksum is ``tokenizer.sha256``, the fingerprint itself, so
a store can be decoded without being told which tokenizer built it. Stores written before the
copy existed lack both keys and open as before.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mmap
import os
import re
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mixer.errors import StoreError

FORMAT_NAME = "mixer.token-store"


FORMAT_VERSION = 1


MANIFEST = "manifest.json"


IDX_MAGIC = b"MMIDIDX\x00\x00"


IDX_VERSION = 1


IDX_HEADER = struct.Struct("<9sQBQQ")


DTYPE_CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}


CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


DTYPE_NAMES = {"uint16": np.dtype(np.uint16), "int32": np.dtype(np.int32)}


RECORD_DTYPES = {"uint32": np.dtype("<u4"), "uint64": np.dtype("<u8")}


TOKENIZER_FILE = "tokenizer.json"


def tokenizer_copy(manifest: dict[str, Any]) -> tuple[str, int, str] | None:
    """(name, bytes, sha256) of the store's copy of its tokenizer (a checked manifest), or None
    for a store that holds none."""
    tokenizer = manifest["tokenizer"]
    if "file" not in tokenizer:
        return None
    return tokenizer["file"], tokenizer["file_bytes"], tokenizer["sha256"]


def listed_files(manifest: dict[str, Any]) -> list[tuple[str, int | None, str | None, str]]:
    """(name, bytes, sha256, what) of every file a checked manifest lists besides itself: each
    shard's files (`shard_files`; bytes and sha256 None where an entry omits them), then the
    tokenizer's copy. `what` names the file's role in messages."""
    out: list[tuple[str, int | None, str | None, str]] = []
    for entry in manifest["shards"]:
        for kind in shard_files(entry):
            what = f"shard {entry.get('name', entry[kind])}"
            out.append((entry[kind], entry.get(f"{kind}_bytes"), entry.get(f"{kind}_sha256"), what))
    if (copy := tokenizer_copy(manifest)) is not None:
        out.append((*copy, "the tokenizer's copy"))
    return out


def shard_files(entry: dict[str, Any]) -> tuple[str, ...]:
    """The kinds of file a shard entry lists ("bin", "idx", and "rec" when it has provenance):
    each has `entry[kind]` (its name), `entry[kind + "_bytes"]` and `entry[kind + "_sha256"]`."""
    return ("bin", "idx", "rec") if "rec" in entry else ("bin", "idx")


def entry_inputs(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The input descriptions a shard entry was read from, in order: its ``inputs`` (a group of
    files, each with its counts) or its one ``input``; [] when it names none."""
    sources = entry.get("inputs")
    if isinstance(sources, list):
        return [s for s in sources if isinstance(s, dict)]
    source = entry.get("input")
    return [source] if isinstance(source, dict) else []


def record_base(entries: list[dict[str, Any]]) -> list[int | None]:
    """Per shard entry, the record number (in its input file) of its task's first record.

    Tasks of one file own consecutive records in the order of their byte range or first row
    group, and each entry counts what its task read (`input_records`), so the base of a task is
    the sum over the earlier tasks of the same file. A group of whole files starts at record 0
    of its first file (its files' own ``records`` place the rest). None where that is unknown
    (no `input` or a task without `input_records`, e.g. a store written before provenance
    existed).
    """
    by_url: dict[str, dict[int, int | None]] = {}
    bases: list[int | None] = [None] * len(entries)
    keys: dict[int, tuple[str, int]] = {}  # entry -> (url, start) of a task of one file
    for n, entry in enumerate(entries):
        if "inputs" in entry:
            files = entry_inputs(entry)
            if files and all(isinstance(f.get("records"), int) for f in files):
                bases[n] = 0
            continue
        source = entry.get("input")
        if not isinstance(source, dict) or not isinstance(source.get("url"), str):
            continue
        start = (source.get("byte_range") or source.get("row_groups") or [0])[0]
        count = entry.get("input_records")
        by_url.setdefault(source["url"], {})[int(start)] = count if isinstance(count, int) else None
        keys[n] = (source["url"], int(start))
    first: dict[tuple[str, int], int | None] = {}
    for url, counts in by_url.items():  # prefix sums over each file's tasks, in range order
        total: int | None = 0
        for start in sorted(counts):
            first[(url, start)] = total
            total = None if total is None or counts[start] is None else total + counts[start]
    for n, key in keys.items():
        bases[n] = first[key]
    return bases


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """Smallest Megatron dtype that holds every id below `vocab_size`."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_error(path: str | os.PathLike, error: OSError) -> StoreError:
    """One line for a failed write (a full disk, a quota, a read-only or vanished directory)."""
    reason = os.strerror(error.errno) if error.errno else str(error)
    hint = "; free some space or write elsewhere" if error.errno in _FULL else ""
    return StoreError(f"{path}: cannot write: {reason}{hint}")


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# A file being written is a hidden sibling named after the writing process (and thread):
# ``.NAME.tmp-PID`` or ``.NAME.tmp-PID-TID``, renamed over NAME once complete.
_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)(?:-\d+)?$")


def temporary_path(path: str | os.PathLike, thread: bool = False) -> Path:
    """The hidden sibling `path` is written under before it is renamed into place."""
    path = Path(path)
    suffix = f"-{threading.get_ident()}" if thread else ""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host. A zombie (exited, not yet reaped by its parent:
    a Ray worker just killed, say) writes nothing more, so it counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no procfs (macOS), or it exited meanwhile
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]  # the state follows "(comm)"


def remove_dead_temporaries(directory: str | os.PathLike, own: bool = False) -> list[str]:
    """Delete the temporaries (`temporary_path`) in `directory` whose writer no longer runs here
    (with `own`, this process's too: once its own writers have stopped).

    Only for a directory this process has to itself (a claimed output, a cache entry under its
    lock): a PID says nothing about processes on other hosts. Returns the names removed.
    """
    removed = []
    try:
        children = list(Path(directory).iterdir())
    except FileNotFoundError:
        return removed
    for child in children:
        match = _TEMPORARY.match(child.name)
        pid = int(match[1]) if match else None
        if pid is not None and ((own and pid == os.getpid()) or not pid_alive(pid)):
            child.unlink(missing_ok=True)
            removed.append(child.name)
    return removed


def wait_for_writers(directories: list[Path], timeout_s: float) -> list[str]:
    """Wait until no temporary in `directories` belongs to a live process other than this one,
    at most `timeout_s`; returns the names whose writers still run then.

    For a directory this process has to itself whose other writers were told to stop (Ray
    workers cancelled on Ctrl-C): a cancelled task's result is in before its process is gone,
    and a temporary removed while its writer lives could be written again after.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        live = []
        for directory in directories:
            try:
                children = [c.name for c in Path(directory).iterdir()]
            except FileNotFoundError:
                continue
            for name in children:
                match = _TEMPORARY.match(name)
                pid = int(match[1]) if match else os.getpid()
                if pid != os.getpid() and pid_alive(pid):
                    live.append(name)
        if not live or time.monotonic() >= deadline:
            return live
        time.sleep(0.05)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary sibling, fsync, then rename: readers see all of it or nothing.

    A failed write removes the temporary and raises `StoreError` (`write_error`)."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise write_error(path, e) from None


def json_bytes(obj: Any) -> bytes:
    """How mixer serialises manifests and records, so local and uploaded copies are identical."""
    return (json.dumps(obj, indent=2) + "\n").encode()


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(path, json_bytes(obj))


def _is_plain_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and bool(name)
        and name not in (".", "..")
        and not any(c in name for c in "/\\\x00")
    )


def safe_member(root: Path, name: object) -> Path:
    """Resolve a manifest file name, refusing anything that could point outside the store."""
    if not _is_plain_name(name):
        raise StoreError(
            f"{root / MANIFEST}: file name {name!r} is not a plain name inside the store"
        )
    return root / name


def index_size(num_documents: int) -> int:
    return IDX_HEADER.size + 20 * num_documents + 8


def encode_index(lengths: np.ndarray, dtype: np.dtype) -> bytes:
    """The .idx bytes for documents of the given token lengths, one sequence per document."""
    lengths = np.asarray(lengths, dtype=np.int32)
    n = len(lengths)
    pointers = np.zeros(n, dtype=np.int64)
    if n > 1:
        np.cumsum(lengths[:-1], dtype=np.int64, out=pointers[1:])
    pointers *= dtype.itemsize
    header = IDX_HEADER.pack(IDX_MAGIC, IDX_VERSION, DTYPE_CODES[dtype], n, n + 1)
    return b"".join(
        (
            header,
            lengths.astype("<i4").tobytes(),
            pointers.astype("<i8").tobytes(),
            np.arange(n + 1, dtype="<i8").tobytes(),
        )
    )


def map_file(path: str | os.PathLike) -> np.ndarray:
    """The whole file as a read-only uint8 array backed by one memory map, no copy.

    The file is closed before this returns. CPython's `mmap` keeps a duplicate of the
    descriptor for the life of the map unless told not to (`trackfd=False`, Python 3.13+), so
    on older Pythons each live map holds one descriptor: `mixer.store.reader` bounds how many
    shards stay mapped.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return np.zeros(0, np.uint8)
        extra = {"trackfd": False} if sys.version_info >= (3, 13) else {}
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ, **extra)
    return np.frombuffer(mapped, dtype=np.uint8)


@dataclass(frozen=True)
class Index:
    """A parsed .idx file; arrays are read-only views of one memory map of the file."""

    dtype: np.dtype
    lengths: np.ndarray  # int32 tokens per document
    pointers: np.ndarray  # int64 byte offset of each document in the .bin
    documents: np.ndarray  # int64 document indices 0..N
    raw: np.ndarray  # the whole file, uint8

    @property
    def num_documents(self) -> int:
        return len(self.lengths)


def read_index_header(path: str | os.PathLike) -> tuple[np.dtype, int]:
    """(dtype, documents) of a .idx file, every header field and the file size checked.

    Reads 34 bytes and closes the file: what `TokenStore.open` does for every shard.
    """
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header = f.read(IDX_HEADER.size)
    if len(header) < IDX_HEADER.size:
        raise StoreError(
            f"{path}: index is {size} bytes, shorter than its {IDX_HEADER.size}-byte header"
        )
    magic, version, code, n_seq, n_doc = IDX_HEADER.unpack(header)
    if magic != IDX_MAGIC:
        raise StoreError(f"{path}: not a Megatron index (magic {magic!r}, expected {IDX_MAGIC!r})")
    if version != IDX_VERSION:
        raise StoreError(f"{path}: index version {version} is not supported (expected 1)")
    if code not in CODE_DTYPES:
        raise StoreError(f"{path}: dtype code {code} is not one mixer writes (8=uint16, 4=int32)")
    if n_doc != n_seq + 1:
        raise StoreError(f"{path}: {n_seq} sequences but {n_doc} document indices (expected N+1)")
    expected = index_size(n_seq)
    if size != expected:
        raise StoreError(
            f"{path}: index is {size} bytes, expected {expected} for {n_seq} documents"
        )
    return CODE_DTYPES[code], n_seq


def read_index(path: str | os.PathLike) -> Index:
    """Parse a .idx file (header checked as in `read_index_header`), mapped once."""
    dtype, n = read_index_header(path)
    data = map_file(path)
    if len(data) != index_size(n):  # replaced between the two reads
        raise StoreError(f"{path}: index changed while it was being opened")
    head = IDX_HEADER.size
    return Index(
        dtype,
        np.frombuffer(data, "<i4", n, head),
        np.frombuffer(data, "<i8", n, head + 4 * n),
        np.frombuffer(data, "<i8", n + 1, head + 12 * n),
        data,
    )


def check_index(index: Index, path: str | os.PathLike, dtype: np.dtype, tokens: int) -> None:
    """Refuse an index that could serve tokens other than its shard's documents.

    Lengths are non-negative and add up to the shard's `tokens`, byte offsets are exactly the
    running sums of the lengths (so documents tile the .bin, none overlaps another or reaches
    past the end), document indices are 0..N, and the dtype is the manifest's. O(documents).
    """
    if index.dtype != dtype:
        raise StoreError(f"{path}: dtype {index.dtype} but the manifest says {dtype}")
    lengths = index.lengths
    if len(lengths) and int(lengths.min()) < 0:
        bad = int(np.flatnonzero(lengths < 0)[0])
        raise StoreError(f"{path}: document {bad} has negative length {int(lengths[bad])}")
    ends = np.cumsum(lengths, dtype=np.int64)
    total = int(ends[-1]) if len(ends) else 0
    if total != tokens:
        raise StoreError(
            f"{path}: document lengths add up to {total} tokens, the shard has {tokens}"
        )
    starts = (ends - lengths) * dtype.itemsize
    if not np.array_equal(index.pointers, starts):
        bad = int(np.flatnonzero(index.pointers != starts)[0])
        raise StoreError(
            f"{path}: document {bad} starts at byte {int(index.pointers[bad])}, but the lengths "
            f"before it put it at {int(starts[bad])}"
        )
    if not np.array_equal(index.documents, np.arange(len(lengths) + 1)):
        raise StoreError(f"{path}: document indices are not 0..{len(lengths)}")


# Counts are stored as JSON integers and summed in int64: anything at or past this is refused.
MAX_COUNT = 1 << 62


def _require(path: object, where: str, key: str, value: object, kind: str) -> None:
    ok = {
        "count": isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_COUNT,
        "text": isinstance(value, str) and bool(value),
        "sha256": isinstance(value, str) and len(value) == 64,
    }[kind]
    if not ok:
        wanted = {
            "count": "an integer in [0, 2**62)",
            "text": "a non-empty string",
            "sha256": "a 64-character sha256 hex digest",
        }[kind]
        raise StoreError(f"{path}: {where}{key} is {_show(value)}, expected {wanted}")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_manifest(manifest: Any, path: str | os.PathLike) -> dict[str, Any]:
    """Validate a parsed manifest strictly; `path` names it in errors (a file or a URL).

    Every field a reader uses has its exact JSON type (an integer is not `1.0`, `"1"` or
    `true`), counts are in [0, 2**62), file names are plain and used once, and the totals, when
    present, are the sums over the shards. What needs the files is checked by
    `TokenStore.open`.
    """
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise StoreError(f"{path}: not a mixer token store manifest")
    version = manifest.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise StoreError(
            f"{path}: format_version {version!r} is not supported "
            f"(this mixer reads {FORMAT_VERSION})"
        )
    dtype = manifest.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPE_NAMES:
        raise StoreError(f"{path}: dtype {_show(dtype)} is not one of {list(DTYPE_NAMES)}")
    tokenizer = manifest.get("tokenizer")
    if not isinstance(tokenizer, dict):
        raise StoreError(f"{path}: tokenizer is {_show(tokenizer)}, expected an object")
    _require(path, "tokenizer.", "sha256", tokenizer.get("sha256"), "text")
    _require(path, "tokenizer.", "vocab_size", tokenizer.get("vocab_size"), "count")
    if tokenizer["vocab_size"] < 1 or dtype_for_vocab(tokenizer["vocab_size"]).name != dtype:
        raise StoreError(
            f"{path}: tokenizer.vocab_size {tokenizer['vocab_size']} does not go with dtype "
            f"{dtype} (uint16 holds vocabularies up to 65536, int32 larger ones)"
        )
    eos_id = manifest.get("eos_id")
    if eos_id is not None:
        _require(path, "", "eos_id", eos_id, "count")
        if eos_id >= tokenizer["vocab_size"]:
            raise StoreError(
                f"{path}: eos_id {eos_id} is not below vocab_size {tokenizer['vocab_size']}"
            )
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise StoreError(f"{path}: 'shards' must be a list")
    itemsize = DTYPE_NAMES[dtype].itemsize
    names: set[str] = set()
    files: set[str] = set()
    for number, entry in enumerate(shards):
        where = f"shards[{number}]."
        if not isinstance(entry, dict):
            raise StoreError(f"{path}: shards[{number}] is {_show(entry)}, expected an object")
        _require(path, where, "documents", entry.get("documents"), "count")
        _require(path, where, "tokens", entry.get("tokens"), "count")
        if "name" in entry:
            _require(path, where, "name", entry["name"], "text")
            if entry["name"] in names:
                raise StoreError(f"{path}: shard name {entry['name']!r} is listed twice")
            names.add(entry["name"])
        expected = {
            "bin": entry["tokens"] * itemsize,
            "idx": index_size(entry["documents"]),
            "rec": None,
        }
        for kind in shard_files(entry):
            if not _is_plain_name(entry.get(kind)):
                raise StoreError(
                    f"{path}: file name {entry.get(kind)!r} is not a plain name inside the store"
                )
            if entry[kind] in files:
                raise StoreError(f"{path}: file {entry[kind]!r} is listed twice")
            files.add(entry[kind])
            for key, check in ((f"{kind}_bytes", "count"), (f"{kind}_sha256", "sha256")):
                if key in entry or kind == "rec":
                    _require(path, where, key, entry.get(key), check)
            size = entry.get(f"{kind}_bytes")
            if size is not None and expected[kind] is not None and size != expected[kind]:
                raise StoreError(
                    f"{path}: {where}{kind}_bytes is {size}, but {entry['documents']} documents "
                    f"of {entry['tokens']} {dtype} tokens need {expected[kind]}"
                )
    for key, field in (("num_documents", "documents"), ("num_tokens", "tokens")):
        if key in manifest:
            total = sum(entry[field] for entry in shards)
            _require(path, "", key, manifest[key], "count")
            if manifest[key] != total:
                raise StoreError(f"{path}: {key} is {manifest[key]}, the shards hold {total}")
    if "file" in tokenizer or "file_bytes" in tokenizer:
        if not _is_plain_name(tokenizer.get("file")):
            raise StoreError(
                f"{path}: tokenizer.file {_show(tokenizer.get('file'))} is not a plain name "
                "inside the store"
            )
        if tokenizer["file"] in files or tokenizer["file"] == MANIFEST:
            raise StoreError(f"{path}: file {tokenizer['file']!r} is listed twice")
        _require(path, "tokenizer.", "file_bytes", tokenizer.get("file_bytes"), "count")
        _require(path, "tokenizer.", "sha256", tokenizer["sha256"], "sha256")
    if "num_shards" in manifest and manifest["num_shards"] != len(shards):
        raise StoreError(
            f"{path}: num_shards is {_show(manifest['num_shards'])}, {len(shards)} are listed"
        )
    for field in ("documents", "tokens"):
        if sum(entry[field] for entry in shards) >= MAX_COUNT:
            raise StoreError(f"{path}: the shards' {field} add up past 2**62")
    return manifest
