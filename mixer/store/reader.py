"""`TokenStore`: open a store (local or URL), check it, read documents and token ranges."""

from __future__ import annotations

import bisect
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from mixer.errors import StoreError
from mixer.store import cache, remote
from mixer.store.format import (
    DTYPE_NAMES,
    MANIFEST,
    RECORD_DTYPES,
    Index,
    check_manifest,
    encode_index,
    index_size,
    read_index,
    record_base,
    safe_member,
    sha256_file,
)


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(
            f"{root}: not a token store (no {MANIFEST}; unfinished or wrong path?)"
        ) from None
    except NotADirectoryError:
        raise StoreError(
            f"{root}: is a file, not a token store (a store is a directory holding {MANIFEST}; "
            "mixer tokenize makes one)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path}: manifest is not valid JSON ({e})") from None
    return check_manifest(manifest, path)


@dataclass
class Shard:
    name: str
    bin_path: Path
    idx_path: Path
    entry: dict[str, Any]
    rec_path: Path | None = None

    @cached_property
    def records(self) -> np.ndarray | None:
        """Each document's record number within its task (NAME.rec), or None without one."""
        if self.rec_path is None:
            return None
        n, dtype = int(self.entry["documents"]), RECORD_DTYPES[self.entry["rec_dtype"]]
        if n == 0:
            return np.zeros(0, dtype)
        return np.memmap(self.rec_path, dtype=dtype, mode="r", shape=(n,))

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
            rec_path = self._check_records(root, entry, documents)
            self.shards.append(
                Shard(str(entry.get("name", entry["bin"])), bin_path, idx_path, entry, rec_path)
            )
            paths = ((bin_path, "bin_bytes"), (idx_path, "idx_bytes"))
            if rec_path is not None:
                paths += ((rec_path, "rec_bytes"),)
            for path, key in paths:
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

    @staticmethod
    def _check_records(root: Path, entry: dict[str, Any], documents: int) -> Path | None:
        """The shard's provenance file, its manifest fields checked (None when it has none)."""
        if "rec" not in entry:
            return None
        rec_path = safe_member(root, entry["rec"])
        dtype = RECORD_DTYPES.get(entry.get("rec_dtype"))
        if dtype is None:
            raise StoreError(
                f"{root / MANIFEST}: shard {entry.get('name')!r} rec_dtype "
                f"{entry.get('rec_dtype')!r} is not one of {list(RECORD_DTYPES)}"
            )
        if entry.get("rec_bytes") != documents * dtype.itemsize:
            raise StoreError(
                f"{root / MANIFEST}: shard {entry.get('name')!r} rec_bytes "
                f"{entry.get('rec_bytes')!r} is not {documents} documents of {entry['rec_dtype']}"
            )
        return rec_path

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        cache_dir: str | os.PathLike | None = None,
        storage_options: dict | None = None,
    ) -> TokenStore:
        """Open a local store, or one at an fsspec URL via the node cache (`mixer.store.cache`)."""
        if remote.is_remote(path):
            path = cache.fetch_store(os.fspath(path), cache_dir, storage_options)
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

    # -- provenance
    @cached_property
    def _record_bases(self) -> list[int | None]:
        return record_base([s.entry for s in self.shards])

    @property
    def has_provenance(self) -> bool:
        """Whether every shard records where its documents came from."""
        return all(s.rec_path is not None for s in self.shards) and None not in self._record_bases

    def origin(self, i: int) -> tuple[str, int] | None:
        """(input URL, record) of document i: the 0-based line of the decompressed file for line
        formats (blank and skipped lines counted), the 0-based row for parquet, 0 for a whole
        txt file. None when the store does not record it."""
        if not 0 <= i < self.num_documents:
            raise IndexError(f"document {i} out of range for {self.num_documents} documents")
        s = bisect.bisect_right(self.doc_offsets, i) - 1
        shard, base = self.shards[s], self._record_bases[s]
        if shard.records is None or base is None:
            return None
        return shard.entry["input"]["url"], base + int(shard.records[i - int(self.doc_offsets[s])])

    def documents_at(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """(document, first token, end token) in stream offsets for every non-empty document
        that overlaps tokens [start, stop), in order."""
        if not 0 <= start < stop <= self.num_tokens:
            raise IndexError(f"token range [{start}, {stop}) outside [0, {self.num_tokens})")
        out = []
        size = self.dtype.itemsize
        s = bisect.bisect_right(self.token_offsets, start) - 1
        while s < len(self.shards) and int(self.token_offsets[s]) < stop:
            base, index = int(self.token_offsets[s]), self.shards[s].index
            lo = max(int(np.searchsorted(index.pointers, (start - base) * size, "right")) - 1, 0)
            hi = int(np.searchsorted(index.pointers, (stop - base) * size, "left"))
            for k in range(lo, hi):
                first = base + int(index.pointers[k]) // size
                end = first + int(index.lengths[k])
                if end > start and first < stop and end > first:
                    out.append((int(self.doc_offsets[s]) + k, first, end))
            s += 1
        return out

    # -- integrity
    def verify(self) -> None:
        """Recompute checksums and re-check every index; raise StoreError on the first fault."""
        for shard in self.shards:
            files = [(shard.bin_path, "bin_sha256"), (shard.idx_path, "idx_sha256")]
            if shard.rec_path is not None:
                files.append((shard.rec_path, "rec_sha256"))
            for path, key in files:
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
