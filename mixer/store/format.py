"""The token store: a directory of Megatron-compatible shards plus a manifest.

Layout of a store directory::

    manifest.json        written last, atomically; a store without it is not a store
    NAME.bin             raw little-endian token ids, documents back to back (EOS included)
    NAME.idx             Megatron ``IndexedDataset`` index for NAME.bin (below)

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
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
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


def shard_files(entry: dict[str, Any]) -> tuple[str, ...]:
    """The kinds of file a shard entry lists ("bin", "idx", and "rec" when it has provenance):
    each has `entry[kind]` (its name), `entry[kind + "_bytes"]` and `entry[kind + "_sha256"]`."""
    return ("bin", "idx", "rec") if "rec" in entry else ("bin", "idx")


def record_base(entries: list[dict[str, Any]]) -> list[int | None]:
    """Per shard entry, the record number (in its input file) of its task's first record.

    Tasks of one file own consecutive records in the order of their byte range or first row
    group, and each entry counts what its task read (`input_records`), so the base of a task is
    the sum over the earlier tasks of the same file. None where that is unknown (no `input` or
    a task without `input_records`, e.g. a store written before provenance existed).
    """
    by_url: dict[str, dict[int, int | None]] = {}
    keys = []
    for entry in entries:
        source = entry.get("input")
        if not isinstance(source, dict) or not isinstance(source.get("url"), str):
            keys.append(None)
            continue
        start = (source.get("byte_range") or source.get("row_groups") or [0])[0]
        count = entry.get("input_records")
        by_url.setdefault(source["url"], {})[int(start)] = count if isinstance(count, int) else None
        keys.append((source["url"], int(start)))
    first: dict[tuple[str, int], int | None] = {}
    for url, counts in by_url.items():  # prefix sums over each file's tasks, in range order
        total: int | None = 0
        for start in sorted(counts):
            first[(url, start)] = total
            total = None if total is None or counts[start] is None else total + counts[start]
    return [None if key is None else first[key] for key in keys]


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """Smallest Megatron dtype that holds every id below `vocab_size`."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary sibling, fsync, then rename: readers see all of it or nothing."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def json_bytes(obj: Any) -> bytes:
    """How mixer serialises manifests and records, so local and uploaded copies are identical."""
    return (json.dumps(obj, indent=2) + "\n").encode()


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(path, json_bytes(obj))


def safe_member(root: Path, name: object) -> Path:
    """Resolve a manifest file name, refusing anything that could point outside the store."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
    ):
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


@dataclass(frozen=True)
class Index:
    """A parsed .idx file; arrays are read-only memory maps."""

    dtype: np.dtype
    lengths: np.ndarray  # int32 tokens per document
    pointers: np.ndarray  # int64 byte offset of each document in the .bin

    @property
    def num_documents(self) -> int:
        return len(self.lengths)


def read_index(path: str | os.PathLike) -> Index:
    """Parse and validate every header field of a .idx file (numpy.lib.format style)."""
    path = Path(path)
    size = path.stat().st_size
    if size < IDX_HEADER.size:
        raise StoreError(
            f"{path}: index is {size} bytes, shorter than its {IDX_HEADER.size}-byte header"
        )
    with open(path, "rb") as f:
        magic, version, code, n_seq, n_doc = IDX_HEADER.unpack(f.read(IDX_HEADER.size))
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
    if n_seq == 0:
        empty32, empty64 = np.zeros(0, np.int32), np.zeros(0, np.int64)
        return Index(CODE_DTYPES[code], empty32, empty64)
    lengths = np.memmap(path, dtype="<i4", mode="r", offset=IDX_HEADER.size, shape=(n_seq,))
    pointers = np.memmap(
        path, dtype="<i8", mode="r", offset=IDX_HEADER.size + 4 * n_seq, shape=(n_seq,)
    )
    return Index(CODE_DTYPES[code], lengths, pointers)


def check_manifest(manifest: Any, path: str | os.PathLike) -> dict[str, Any]:
    """Validate a parsed manifest; `path` names it in errors (a file or a URL)."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise StoreError(f"{path}: not a mixer token store manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise StoreError(
            f"{path}: format_version {manifest.get('format_version')!r} is not supported "
            f"(this mixer reads {FORMAT_VERSION})"
        )
    if manifest.get("dtype") not in DTYPE_NAMES:
        raise StoreError(
            f"{path}: dtype {manifest.get('dtype')!r} is not one of {list(DTYPE_NAMES)}"
        )
    if not isinstance(manifest.get("shards"), list):
        raise StoreError(f"{path}: 'shards' must be a list")
    return manifest
