"""Write shards and stores: temporary names, then an atomic rename."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from mixer.errors import StoreError
from mixer.store.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    RECORD_DTYPES,
    dtype_for_vocab,
    encode_index,
    temporary_path,
    write_bytes_atomic,
    write_error,
    write_json_atomic,
)


class ShardWriter:
    """Streams documents into NAME.bin/NAME.idx under temporary names; `close` publishes them.

    Until `close` returns, nothing under the final names exists, so a crash leaves only hidden
    temporaries that a rerun overwrites.
    """

    def __init__(self, root: str | os.PathLike, name: str, dtype: np.dtype):
        self.root = Path(root)
        self.name = name
        self.dtype = np.dtype(dtype)
        self._bin_tmp = temporary_path(self.root / f"{name}.bin")
        try:
            self._file = open(self._bin_tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        except OSError as e:
            raise write_error(self._bin_tmp, e) from None
        self._digest = hashlib.sha256()
        self._lengths: list[np.ndarray] = []
        self._records: list[np.ndarray] = []
        self.num_tokens = 0
        self.num_documents = 0

    def add_documents(
        self, lengths: np.ndarray, tokens: np.ndarray, records: np.ndarray | None = None
    ) -> None:
        """Append documents given as their lengths and their concatenated token ids, and
        optionally each one's record number (provenance: written to NAME.rec on close); a
        shard gets records for all of its documents or for none."""
        if (records is None) != (not self._records) and self.num_documents:
            raise StoreError(f"{self.name}: record numbers given for some documents only")
        if records is not None:
            records = np.asarray(records, dtype=np.int64)
            if records.shape != np.shape(lengths) or (records.size and records.min() < 0):
                raise StoreError(f"{self.name}: need one record number >= 0 per document")
            self._records.append(records)
        tokens = np.asarray(tokens)
        if len(tokens) and (tokens.min() < 0 or tokens.max() > np.iinfo(self.dtype).max):
            # A cast would wrap silently and corrupt the store; refuse instead.
            raise StoreError(
                f"{self.name}: token id {int(tokens.max())} does not fit {self.dtype.name} "
                "(tokenizer vocab_size smaller than its ids?)"
            )
        data = np.ascontiguousarray(tokens, dtype=self.dtype.newbyteorder("<")).tobytes()
        try:
            self._file.write(data)
        except OSError as e:
            raise write_error(self._bin_tmp, e) from None
        self._digest.update(data)
        self._lengths.append(np.asarray(lengths, dtype=np.int32))
        self.num_tokens += len(tokens)
        self.num_documents += len(lengths)

    def close(self) -> dict[str, Any]:
        """Publish the shard and return its manifest entry (names, counts, sizes, checksums)."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as e:
            raise write_error(self._bin_tmp, e) from None
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        idx_bytes = encode_index(lengths, self.dtype)
        bin_name, idx_name = f"{self.name}.bin", f"{self.name}.idx"
        try:
            provenance = self._write_records() if self._records else {}
            write_bytes_atomic(self.root / idx_name, idx_bytes)
            os.replace(self._bin_tmp, self.root / bin_name)
        except BaseException:  # a shard is published whole or not at all (a full disk)
            for name in (f"{self.name}.rec", idx_name):
                (self.root / name).unlink(missing_ok=True)
            raise
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
            **provenance,
        }

    def _write_records(self) -> dict[str, Any]:
        records = np.concatenate(self._records)
        name = "uint32" if not records.size or records.max() < 1 << 32 else "uint64"
        data = records.astype(RECORD_DTYPES[name]).tobytes()
        write_bytes_atomic(self.root / f"{self.name}.rec", data)
        return {
            "rec": f"{self.name}.rec",
            "rec_dtype": name,
            "rec_bytes": len(data),
            "rec_sha256": hashlib.sha256(data).hexdigest(),
        }

    def abort(self) -> None:
        """Drop the unfinished shard (closing may fail again on a full disk: ignored)."""
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
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
