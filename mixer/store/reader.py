"""`TokenStore`: open a store (local or URL), check it, read documents and token ranges."""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import os
import stat
import sys
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
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
    check_index,
    check_manifest,
    entry_inputs,
    index_size,
    map_file,
    read_index,
    read_index_header,
    record_base,
    safe_member,
    sha256_file,
    tokenizer_copy,
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


def _mapped_shard_bound() -> int:
    """How many shards may stay mapped at once in this process (all stores together).

    A map holds no file descriptor on Python 3.13+ (`map_file`); before that each holds one,
    and a mapped shard has up to three (.bin, .idx, .rec), so the bound keeps them to 3/8 of
    the soft RLIMIT_NOFILE: 128 shards under `ulimit -n 1024`. 8192 at most either way, so the
    maps stay far below Linux's default vm.max_map_count (65530).
    """
    if sys.version_info >= (3, 13):
        return 8192
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        soft = 1024
    if soft == getattr(sys.modules.get("resource"), "RLIM_INFINITY", -1) or soft < 0:
        soft = 1 << 16
    return max(8, min(8192, soft // 8))


class MappedShards:
    """Process-wide LRU of the shards whose files are memory-mapped.

    `TokenStore.open` maps nothing; a shard's files are mapped on first use and unmapped (their
    arrays dropped) when more than `capacity` shards are mapped, least recently used first. So
    a store of any number of shards, and a mix of any number of stores, opens, mixes, inspects
    and verifies under a default `ulimit -n`. Arrays already handed out keep their map (and, on
    Python < 3.13, its descriptor) alive until they are released.
    """

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self._lru: OrderedDict[int, weakref.ref] = OrderedDict()
        self._lock = threading.Lock()
        self._serial = itertools.count()
        self._last = -1  # key of the most recently touched shard

    def __len__(self) -> int:
        return len(self._lru)

    def serial(self) -> int:
        return next(self._serial)

    def touch(self, shard: Shard) -> None:
        """Mark `shard` used now; evict the least recently used beyond the capacity."""
        key = shard.serial
        # Already the most recent: nothing to move. Read without the lock (single lookups are
        # ~2 us, the lock a tenth of that): a stale answer only leaves the shard where it was
        # in the order, and never unmaps an array a caller holds.
        if self._last == key:
            return
        with self._lock:
            self._last = key
            if key in self._lru:
                self._lru.move_to_end(key)
                return
            self._lru[key] = weakref.ref(shard, lambda _, key=key: self._lru.pop(key, None))
            if self.capacity is None:
                self.capacity = _mapped_shard_bound()
            while len(self._lru) > self.capacity:
                _, ref = self._lru.popitem(last=False)
                old = ref()
                if old is not None:
                    old.unmap()


MAPPED_SHARDS = MappedShards()


@dataclass(eq=False)
class Shard:
    """One shard's files; `tokens`, `index` and `records` map them lazily (see `MappedShards`).

    The first use of `index` in a process checks it against the manifest entry: its sha256
    (when the entry has one) and `check_index`, once per shard, O(documents).
    """

    name: str
    bin_path: Path
    idx_path: Path
    entry: dict[str, Any]
    rec_path: Path | None = None
    dtype: np.dtype = field(default=np.dtype(np.uint16))

    def __post_init__(self) -> None:
        self.serial = MAPPED_SHARDS.serial()
        self._maps: dict[str, Any] = {}
        self._index_checked = False

    def unmap(self) -> None:
        self._maps = {}

    def mapped(self, kind: str) -> Any:
        """The array of `kind` ("tokens", "index" or "records"), mapping it on first use: what
        the properties return, without a property's call overhead (the sampler's hot path)."""
        maps = self._maps
        value = maps.get(kind)
        if value is None:
            value = maps[kind] = self._map(kind)
        if MAPPED_SHARDS._last != self.serial:  # touch's first check, without the call
            MAPPED_SHARDS.touch(self)
        return value

    def _map(self, kind: str) -> Any:
        documents, tokens = self.entry["documents"], self.entry["tokens"]
        if kind == "index":
            index = read_index(self.idx_path)
            if not self._index_checked:
                self._check(index)
                self._index_checked = True
            return index
        if kind == "records":
            dtype = RECORD_DTYPES[self.entry["rec_dtype"]]
            data = map_file(self.rec_path)
            if len(data) != documents * dtype.itemsize:
                raise StoreError(f"{self.rec_path}: changed since the store was opened")
            return np.frombuffer(data, dtype, documents)
        data = map_file(self.bin_path)
        if len(data) != tokens * self.dtype.itemsize:
            raise StoreError(f"{self.bin_path}: changed since the store was opened")
        return np.frombuffer(data, self.dtype.newbyteorder("<"), tokens)

    def _check(self, index: Index) -> None:
        want = self.entry.get("idx_sha256")
        if want is not None and hashlib.sha256(index.raw).hexdigest() != want:
            raise StoreError(
                f"{self.idx_path}: sha256 does not match the manifest (replaced or swapped?)"
            )
        check_index(index, self.idx_path, self.dtype, self.entry["tokens"])

    @property
    def records(self) -> np.ndarray | None:
        """Each document's record number within its task (NAME.rec), or None without one."""
        return None if self.rec_path is None else self.mapped("records")

    @property
    def index(self) -> Index:
        """The parsed .idx, checked on first use (see the class docstring)."""
        return self.mapped("index")

    @property
    def tokens(self) -> np.ndarray:
        """The shard's tokens in the manifest's dtype, a read-only view of the mapped .bin."""
        return self.mapped("tokens")


class TokenStore:
    """Read-only view of a token store: documents and a concatenated token stream, memory-mapped.

    `open` checks the manifest strictly (`check_manifest`), every file's size, that no file
    is a symlink leaving the store or aliasing another, and every .idx header (dtype and
    document count against the manifest); it maps nothing. Each shard's index is checked in
    full on first use; `verify` recomputes every checksum.
    """

    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root = root
        self.manifest = manifest
        self.dtype = DTYPE_NAMES[manifest["dtype"]]
        self.shards: list[Shard] = []
        seen: dict[str, str] = {}
        for entry in manifest["shards"]:
            bin_path = safe_member(root, entry["bin"])
            idx_path = safe_member(root, entry["idx"])
            documents, tokens = entry["documents"], entry["tokens"]
            rec_path = self._check_records(root, entry, documents)
            name = str(entry.get("name", entry["bin"]))
            self.shards.append(Shard(name, bin_path, idx_path, entry, rec_path, self.dtype))
            paths = ((bin_path, "bin_bytes"), (idx_path, "idx_bytes"))
            if rec_path is not None:
                paths += ((rec_path, "rec_bytes"),)
            for path, key in paths:
                size = self._file_size(path, seen)
                if key in entry and size != entry[key]:
                    raise StoreError(
                        f"{path}: {size} bytes on disk, manifest says {entry[key]} "
                        "(truncated or replaced)"
                    )
                if key == "bin_bytes" and tokens * self.dtype.itemsize != size:
                    raise StoreError(f"{path}: size does not match {tokens} tokens of {self.dtype}")
                if key == "idx_bytes" and index_size(documents) != size:
                    raise StoreError(f"{path}: size does not match {documents} documents")
            dtype, count = read_index_header(idx_path)
            if dtype != self.dtype:
                raise StoreError(f"{idx_path}: dtype {dtype} but the manifest says {self.dtype}")
            if count != documents:
                raise StoreError(f"{idx_path}: {count} documents, the manifest says {documents}")
        self.tokenizer_path: Path | None = None
        """The store's copy of its tokenizer.json (`tokenizer_json`), None in older stores."""
        if (copy := tokenizer_copy(manifest)) is not None:
            name, size, _ = copy
            path = safe_member(root, name)
            on_disk = self._file_size(path, seen)
            if on_disk != size:
                raise StoreError(
                    f"{path}: {on_disk} bytes on disk, manifest says {size} (truncated or replaced)"
                )
            self.tokenizer_path = path
        # Cumulative offsets: shard s holds documents [doc_offsets[s], doc_offsets[s+1]) etc.
        self.doc_offsets = np.cumsum([0] + [s.entry["documents"] for s in self.shards])
        self.token_offsets = np.cumsum([0] + [s.entry["tokens"] for s in self.shards])
        self._ends: dict[int, np.ndarray] = {}  # grouped shard -> its files' record ends

    def _file_size(self, path: Path, seen: dict[str, str]) -> int:
        """Size of a listed file; a symlink must stay inside the store and alias no other file."""
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            raise StoreError(f"{path}: file listed in the manifest is missing") from None
        if not seen:
            seen[""] = os.path.realpath(self.root)
        root = seen[""]
        real = os.path.join(root, path.name)
        if stat.S_ISLNK(info.st_mode):
            real = os.path.realpath(path)
            if os.path.commonpath([root, real]) != root:
                raise StoreError(
                    f"{path}: a symlink to {real}, outside the store; copy the file in instead"
                )
            try:
                info = os.stat(real)
            except FileNotFoundError:
                raise StoreError(f"{path}: a symlink to {real}, which is missing") from None
        if real in seen:
            raise StoreError(f"{path}: the same file as {seen[real]}, listed twice")
        seen[real] = str(path)
        if not stat.S_ISREG(info.st_mode):
            raise StoreError(f"{path}: not a regular file")
        return info.st_size

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
        """Open a local store, or one at an fsspec URL via the node cache (`mixer.store.cache`).

        `path`: a store directory (or file:// URL), or an fsspec URL such as s3://bucket/store,
        which is first copied into the cache and verified there. `cache_dir`: that cache
        (default ``$MIXER_CACHE_DIR`` or ~/.cache/mixer). `storage_options`: passed to fsspec
        for a URL. Opening checks the manifest and every shard's file sizes; `verify` reads
        every byte.
        """
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

    def tokenizer_json(self) -> str | None:
        """The text of the tokenizer.json the store was built with, from the store's copy
        (checked against the manifest's sha256); None for a store that holds no copy."""
        if self.tokenizer_path is None:
            return None
        raw = self.tokenizer_path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != self.tokenizer_sha256:
            raise StoreError(
                f"{self.tokenizer_path}: sha256 does not match the manifest's tokenizer.sha256"
            )
        return raw.decode("utf-8")

    @cached_property
    def identity(self) -> str:
        """sha256 of the manifest's content: equal for two copies of one store wherever they are
        (the manifest lists every file's sha256), so a mix can tell a store listed twice."""
        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()

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
        if start == stop:  # also for a store of no shards: an empty range, not a shard lookup
            return np.zeros(0, self.dtype.newbyteorder("<"))
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
            # a copy: a view would keep every shard's map (and descriptor) alive at once
            parts.append(self.shards[s].tokens[start - base : take - base].copy())
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
        record = base + int(shard.records[i - int(self.doc_offsets[s])])
        files = entry_inputs(shard.entry)
        if len(files) == 1:
            return files[0]["url"], record
        ends = self._group_ends(s)  # a group: records count across its files in order
        f = int(np.searchsorted(ends, record, side="right"))
        if f == len(files):
            raise StoreError(f"{shard.name}: record {record} is past its inputs' record counts")
        return files[f]["url"], record - (int(ends[f - 1]) if f else 0)

    def _group_ends(self, s: int) -> np.ndarray:
        """Cumulative record counts of the files of grouped shard s (computed once)."""
        if s not in self._ends:
            self._ends[s] = np.cumsum([f["records"] for f in entry_inputs(self.shards[s].entry)])
        return self._ends[s]

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
            index = read_index(shard.idx_path)
            check_index(index, shard.idx_path, self.dtype, shard.entry["tokens"])
        if self.tokenizer_path is not None:
            actual = sha256_file(self.tokenizer_path)
            if actual != self.tokenizer_sha256:
                raise StoreError(
                    f"{self.tokenizer_path}: sha256 {actual[:12]}… does not match the manifest"
                )
