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

Token ids are uint16 when every id fits (vocab <= 65536) and int32 otherwise: Megatron has no
uint32 code, and int32 holds any real vocabulary.

``manifest.json`` holds the format version, the tokenizer fingerprint (sha256 of its
tokenizer.json) and vocab size, the EOS id, the dtype, and per shard its file names, document
and token counts, byte sizes and sha256 of both files and the input it came from. Names in the
manifest are plain file names inside the store; anything else is rejected.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from functools import cached_property
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


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """Smallest Megatron dtype that holds every id below `vocab_size`."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


# ---------------------------------------------------------------------------- files


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


# ---------------------------------------------------------------------------- index


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


# ---------------------------------------------------------------------------- writing


class ShardWriter:
    """Streams documents into NAME.bin/NAME.idx under temporary names; `close` publishes them.

    Until `close` returns, nothing under the final names exists, so a crash leaves only hidden
    temporaries that a rerun overwrites.
    """

    def __init__(self, root: str | os.PathLike, name: str, dtype: np.dtype):
        self.root = Path(root)
        self.name = name
        self.dtype = np.dtype(dtype)
        self._bin_tmp = self.root / f".{name}.bin.tmp-{os.getpid()}"
        self._file = open(self._bin_tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._digest = hashlib.sha256()
        self._lengths: list[np.ndarray] = []
        self.num_tokens = 0
        self.num_documents = 0

    def add_documents(self, lengths: np.ndarray, tokens: np.ndarray) -> None:
        """Append documents given as their lengths and their concatenated token ids."""
        tokens = np.asarray(tokens)
        if len(tokens) and (tokens.min() < 0 or tokens.max() > np.iinfo(self.dtype).max):
            # A cast would wrap silently and corrupt the store; refuse instead.
            raise StoreError(
                f"{self.name}: token id {int(tokens.max())} does not fit {self.dtype.name} "
                "(tokenizer vocab_size smaller than its ids?)"
            )
        data = np.ascontiguousarray(tokens, dtype=self.dtype.newbyteorder("<")).tobytes()
        self._file.write(data)
        self._digest.update(data)
        self._lengths.append(np.asarray(lengths, dtype=np.int32))
        self.num_tokens += len(tokens)
        self.num_documents += len(lengths)

    def close(self) -> dict[str, Any]:
        """Publish the shard and return its manifest entry (names, counts, sizes, checksums)."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        idx_bytes = encode_index(lengths, self.dtype)
        bin_name, idx_name = f"{self.name}.bin", f"{self.name}.idx"
        write_bytes_atomic(self.root / idx_name, idx_bytes)
        os.replace(self._bin_tmp, self.root / bin_name)
        return {
            "name": self.name,
            "bin": bin_name,
            "idx": idx_name,
            "documents": self.num_documents,
            "tokens": self.num_tokens,
            "bin_bytes": self.num_tokens * self.dtype.itemsize,
            "idx_bytes": len(idx_bytes),
            "bin_sha256": self._digest.hexdigest(),
            "idx_sha256": hashlib.sha256(idx_bytes).hexdigest(),
        }

    def abort(self) -> None:
        self._file.close()
        self._bin_tmp.unlink(missing_ok=True)


def build_manifest(
    shards: list[dict[str, Any]],
    *,
    tokenizer: dict[str, Any],
    eos_id: int | None,
    dtype: np.dtype,
    **extra: Any,
) -> dict[str, Any]:
    """Assemble a manifest from shard entries; totals are derived, never passed in."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "tokenizer": tokenizer,
        "eos_id": eos_id,
        "dtype": np.dtype(dtype).name,
        "num_documents": sum(s["documents"] for s in shards),
        "num_tokens": sum(s["tokens"] for s in shards),
        "num_shards": len(shards),
        **extra,
        "shards": shards,
    }


def write_store(
    root: str | os.PathLike,
    documents: list[np.ndarray] | list[list[int]],
    *,
    vocab_size: int,
    tokenizer_sha256: str = "0" * 64,
    eos_id: int | None = None,
    docs_per_shard: int | None = None,
) -> Path:
    """Write already-tokenized documents as a store (tests, exports and small tools)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    dtype = dtype_for_vocab(vocab_size)
    per_shard = docs_per_shard or max(len(documents), 1)
    shards = []
    for number, start in enumerate(range(0, max(len(documents), 1), per_shard)):
        chunk = [np.asarray(d, dtype=np.int64) for d in documents[start : start + per_shard]]
        writer = ShardWriter(root, f"shard-{number:05d}", dtype)
        if chunk:
            writer.add_documents(np.array([len(d) for d in chunk]), np.concatenate(chunk))
        shards.append(writer.close())
    tokenizer = {"sha256": tokenizer_sha256, "vocab_size": vocab_size}
    write_json_atomic(
        root / MANIFEST, build_manifest(shards, tokenizer=tokenizer, eos_id=eos_id, dtype=dtype)
    )
    return root


# ---------------------------------------------------------------------------- reading


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(
            f"{root}: not a token store (no {MANIFEST}; unfinished or wrong path?)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path}: manifest is not valid JSON ({e})") from None
    return check_manifest(manifest, path)


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


@dataclass
class Shard:
    name: str
    bin_path: Path
    idx_path: Path
    entry: dict[str, Any]

    @cached_property
    def index(self) -> Index:
        return read_index(self.idx_path)

    @cached_property
    def tokens(self) -> np.ndarray:
        n, dtype = self.entry["tokens"], self.index.dtype
        if n == 0:
            return np.zeros(0, dtype)
        return np.memmap(self.bin_path, dtype=dtype.newbyteorder("<"), mode="r", shape=(n,))


class TokenStore:
    """Read-only view of a token store: documents and a concatenated token stream, memory-mapped.

    `open` checks the manifest and the file sizes (cheap); `verify` recomputes checksums.
    """

    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root = root
        self.manifest = manifest
        self.dtype = DTYPE_NAMES[manifest["dtype"]]
        self.shards: list[Shard] = []
        for entry in manifest["shards"]:
            try:
                bin_path = safe_member(root, entry["bin"])
                idx_path = safe_member(root, entry["idx"])
                documents, tokens = int(entry["documents"]), int(entry["tokens"])
            except (KeyError, TypeError, ValueError) as e:
                raise StoreError(
                    f"{root / MANIFEST}: malformed shard entry {entry!r} ({e})"
                ) from None
            self.shards.append(
                Shard(str(entry.get("name", entry["bin"])), bin_path, idx_path, entry)
            )
            for path, key in ((bin_path, "bin_bytes"), (idx_path, "idx_bytes")):
                if not path.exists():
                    raise StoreError(f"{path}: shard file listed in the manifest is missing")
                if key in entry and path.stat().st_size != entry[key]:
                    raise StoreError(
                        f"{path}: {path.stat().st_size} bytes on disk, manifest says {entry[key]} "
                        "(truncated or replaced)"
                    )
            if tokens * self.dtype.itemsize != bin_path.stat().st_size:
                raise StoreError(f"{bin_path}: size does not match {tokens} tokens of {self.dtype}")
            if index_size(documents) != idx_path.stat().st_size:
                raise StoreError(f"{idx_path}: size does not match {documents} documents")
        # Cumulative offsets: shard s holds documents [doc_offsets[s], doc_offsets[s+1]) etc.
        self.doc_offsets = np.cumsum([0] + [int(s.entry["documents"]) for s in self.shards])
        self.token_offsets = np.cumsum([0] + [int(s.entry["tokens"]) for s in self.shards])

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        cache_dir: str | os.PathLike | None = None,
        storage_options: dict | None = None,
    ) -> TokenStore:
        """Open a local store, or one at an fsspec URL through the local cache (mixer.remote)."""
        from mixer import remote

        if remote.is_remote(path):
            path = remote.fetch_store(os.fspath(path), cache_dir, storage_options)
        root = Path(os.fspath(path).removeprefix("file://"))
        return cls(root, read_manifest(root))

    # -- summary
    @property
    def num_documents(self) -> int:
        return int(self.doc_offsets[-1])

    @property
    def num_tokens(self) -> int:
        return int(self.token_offsets[-1])

    @property
    def tokenizer_sha256(self) -> str:
        return str(self.manifest["tokenizer"]["sha256"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    @property
    def eos_id(self) -> int | None:
        return self.manifest.get("eos_id")

    def __repr__(self) -> str:
        return (
            f"TokenStore({str(self.root)!r}, documents={self.num_documents}, "
            f"tokens={self.num_tokens}, shards={len(self.shards)}, dtype={self.dtype.name})"
        )

    # -- access
    def document(self, i: int) -> np.ndarray:
        """Tokens of document i (EOS included) as a read-only view: no copy."""
        if not -self.num_documents <= i < self.num_documents:
            raise IndexError(f"document {i} out of range for {self.num_documents} documents")
        i %= max(self.num_documents, 1)
        s = bisect.bisect_right(self.doc_offsets, i) - 1
        shard = self.shards[s]
        local = i - int(self.doc_offsets[s])
        start = int(shard.index.pointers[local]) // self.dtype.itemsize
        return shard.tokens[start : start + int(shard.index.lengths[local])]

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the stream of all documents; a view when inside one shard."""
        if not 0 <= start <= stop <= self.num_tokens:
            raise IndexError(f"token range [{start}, {stop}) outside [0, {self.num_tokens})")
        s = bisect.bisect_right(self.token_offsets, start) - 1
        s = min(s, len(self.shards) - 1)
        base = int(self.token_offsets[s])
        if stop <= int(self.token_offsets[s + 1]) or start == stop:
            return self.shards[s].tokens[start - base : stop - base]
        parts = []
        while start < stop:
            while int(self.token_offsets[s + 1]) <= start:
                s += 1
            base, end = int(self.token_offsets[s]), int(self.token_offsets[s + 1])
            take = min(stop, end)
            parts.append(self.shards[s].tokens[start - base : take - base])
            start = take
        return np.concatenate(parts)

    def document_starts(self, start: int, stop: int) -> np.ndarray:
        """Stream offsets of the documents that begin inside [start, stop), ascending."""
        found = []
        s = max(bisect.bisect_right(self.token_offsets, start) - 1, 0)
        while s < len(self.shards) and int(self.token_offsets[s]) < stop:
            base = int(self.token_offsets[s])
            pointers = self.shards[s].index.pointers
            lo_hi = np.array([start - base, stop - base]) * self.dtype.itemsize
            lo, hi = np.searchsorted(pointers, lo_hi, side="left")
            found.append(np.asarray(pointers[lo:hi]) // self.dtype.itemsize + base)
            s += 1
        return np.concatenate(found) if found else np.zeros(0, np.int64)

    # -- integrity
    def verify(self) -> None:
        """Recompute checksums and re-check every index; raise StoreError on the first fault."""
        for shard in self.shards:
            for path, key in ((shard.bin_path, "bin_sha256"), (shard.idx_path, "idx_sha256")):
                if key not in shard.entry:
                    raise StoreError(f"{self.root}: shard {shard.name} has no {key}")
                actual = sha256_file(path)
                if actual != shard.entry[key]:
                    raise StoreError(f"{path}: sha256 {actual[:12]}… does not match the manifest")
            index = shard.index
            if index.dtype != self.dtype:
                raise StoreError(
                    f"{shard.idx_path}: dtype {index.dtype} but manifest says {self.dtype}"
                )
            if index.num_documents != int(shard.entry["documents"]):
                raise StoreError(
                    f"{shard.idx_path}: {index.num_documents} documents, manifest says "
                    f"{shard.entry['documents']}"
                )
            expected = encode_index(np.asarray(index.lengths), self.dtype)
            if shard.idx_path.read_bytes() != expected:
                raise StoreError(f"{shard.idx_path}: byte offsets do not follow the lengths")
            if int(np.asarray(index.lengths, dtype=np.int64).sum()) != int(shard.entry["tokens"]):
                raise StoreError(f"{shard.idx_path}: lengths do not add up to the shard's tokens")
