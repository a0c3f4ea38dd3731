"""Where a store is written: a local directory or an fsspec URL, behind one interface.

`open_output(out)` gives a `LocalOutput` or a `UrlOutput`; the tokenize driver and its workers
use only the methods below, so local disk and object stores take the same code path (the way
datatrove's `DataFolder` serves both).

Writing a store, on either:

1. the driver takes an exclusive `claim` on the output (below) and removes temporaries that
   dead processes left (`mixer.store.format.remove_dead_temporaries`);
2. each worker writes its shard into `staging` (the store directory itself locally, a
   node-local directory for a URL) and `commit_shard` publishes it: the .bin and .idx under
   their final names (a rename, or an upload), then a done record in ``.mixer-partial/`` holding
   the shard's manifest entry and its task key. A record therefore means its shard is complete;
3. the driver checks every record is the one its own worker wrote (`done_records`), and
   `publish` writes ``manifest.json`` last, then removes the records. Until the manifest exists
   the output is not a store.

Claims, so that two jobs never mix their shards in one output:

- locally a lock file, ``.mixer-lock``, held with ``fcntl.flock`` for the job's lifetime and
  holding the job's identity (its fingerprint, host, pid). Another job is refused at once with
  one line; a second run of the same job waits for the first and then finds it complete.
- on object stores a claim is a marker object, ``.mixer-claim``, created only if none exists
  (S3's conditional put), holding the job's identity and a run id; it goes when the run ends.
  Another job is refused in one line while the marker is there (a job killed without cleaning up
  leaves it: delete it by hand once sure). A run of the same job takes the marker over, since
  its shards are the same bytes; every worker checks the marker before it uploads a shard and
  the driver before the manifest goes up, so the run that was taken over stops with one line.
  The driver finally re-reads the done records and publishes only shards whose records are its
  own.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixer.errors import MixerError
from mixer.store import cache, remote
from mixer.store.format import (
    MANIFEST,
    check_manifest,
    json_bytes,
    remove_dead_temporaries,
    shard_files,
    wait_for_writers,
    write_bytes_atomic,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

PARTIAL_DIR = ".mixer-partial"  # done records of finished shards, until the manifest is written


LOCK = ".mixer-lock"  # local claim: flock held by the driver, with its identity inside


CLAIM = ".mixer-claim"  # URL claim: the run id of the run that owns the output


@dataclass(frozen=True)
class Claimant:
    """Who writes an output: `job` fingerprints what is built, `run` this one execution, `kind`
    what writes it (a tokenize job or an export), for messages."""

    job: str
    run: str
    host: str
    pid: int
    started: float
    kind: str = "tokenize"

    @classmethod
    def for_job(cls, job: str, kind: str = "tokenize") -> Claimant:
        return cls(job, uuid.uuid4().hex, socket.gethostname(), os.getpid(), time.time(), kind)

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host}, started {when}"

    @classmethod
    def parse(cls, data: bytes) -> Claimant | None:
        try:
            return cls(**json.loads(data))
        except (ValueError, TypeError):
            return None


class Output(ABC):
    """A store being written (see the module docstring); pickled to workers as is."""

    where: str  # the output as named in messages

    @property
    @abstractmethod
    def staging(self) -> Path:
        """The local directory a worker writes its shard files into."""

    @abstractmethod
    def exists(self) -> bool:
        """Whether anything is there yet (a store, or one being written)."""

    @abstractmethod
    def check_usable(self) -> None:
        """Raise when the output exists and is not a store or a store being written."""

    @abstractmethod
    def read_manifest(self) -> dict | None:
        """The published manifest, or None when the output holds no finished store."""

    @abstractmethod
    def claim(self, claimant: Claimant) -> None:
        """Take the output for `claimant`, or raise naming who holds it."""

    @abstractmethod
    def check_claim(self) -> None:
        """Raise unless this output is still claimed by the run that claimed it."""

    @abstractmethod
    def release(self) -> None:
        """Give up the claim (after publishing, or on failure)."""

    @abstractmethod
    def done_records(self) -> tuple[dict[str, Any], Callable[[str], int | None]]:
        """(done records by shard name, size of a file in the output or None)."""

    @abstractmethod
    def commit_shard(self, name: str, record: dict[str, Any]) -> None:
        """Publish the shard files of `record['entry']` (`shard_files`) from `staging`, then
        the record."""

    @abstractmethod
    def restart(self, records: dict[str, dict[str, Any]]) -> None:
        """Turn a finished store back into one being written: records first, manifest gone."""

    @abstractmethod
    def remove_temporaries(self, wait_s: float = 0.0) -> None:
        """Remove every half-written file of this run, first waiting up to `wait_s` for the
        processes writing them (workers told to stop) to be gone."""

    @abstractmethod
    def write_file(self, name: str, data: bytes) -> None:
        """Write a small file of the store whole (the tokenizer's copy): all or nothing, under
        its final name, before `publish` lists it."""

    @abstractmethod
    def publish(self, manifest: dict[str, Any]) -> None:
        """Write the manifest last, then remove the done records and any staging."""

    def check_visible(self, entry: dict[str, Any], node: str) -> None:  # noqa: B027
        """Raise when a shard a worker on Ray node `node` committed cannot be seen here; a URL
        is seen alike from every node."""


class LocalOutput(Output):
    """A store directory on a filesystem the driver (and every worker) can reach."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.where = str(self.root)
        self._lock: Any = None  # the open lock file while claimed; never pickled

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_lock": None}

    @property
    def staging(self) -> Path:
        return self.root

    def exists(self) -> bool:
        return self.root.exists()

    def check_usable(self) -> None:
        if not self.root.exists() or (self.root / MANIFEST).exists():
            return
        if not self.root.is_dir():
            raise MixerError(f"{self.root} exists and is not a directory")
        strays = [
            p.name
            for p in self.root.iterdir()
            if p.name != PARTIAL_DIR and not p.name.startswith(".")
        ]
        if strays and not (self.root / PARTIAL_DIR).is_dir():
            raise MixerError(
                f"{self.root} is a non-empty directory that is not a mixer store "
                f"(holds {strays[0]!r}); choose an empty or new directory"
            )

    def read_manifest(self) -> dict | None:
        from mixer.store.reader import read_manifest  # the reader's checks, one copy

        if not (self.root / MANIFEST).exists():
            return None
        return read_manifest(self.root)

    def claim(self, claimant: Claimant) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK
        while True:
            handle = open(path, "a+b")  # noqa: SIM115 - held until release()
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(path)
                if holder is not None and holder.job != claimant.job:
                    handle.close()
                    raise MixerError(
                        f"{self.root} is being written by another {holder.kind} job "
                        f"({holder.describe()}); wait for it to finish or choose another output"
                    ) from None
                logger.warning(
                    "%s: the same job is already running (%s); waiting for it",
                    self.root,
                    holder.describe() if holder else "starting",
                )
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                same = os.fstat(handle.fileno()).st_ino == path.stat().st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()  # the holder removed this lock file as it finished: lock the new one
        handle.truncate(0)
        handle.write(json_bytes(claimant.__dict__))
        handle.flush()
        self._lock = handle
        removed = remove_dead_temporaries(self.root) + remove_dead_temporaries(
            self.root / PARTIAL_DIR
        )
        if removed:
            logger.info("%s: removed %d temporary files of dead processes", self.root, len(removed))

    def check_claim(self) -> None:
        if self._lock is None:
            raise AssertionError("check_claim before claim")  # pragma: no cover

    def release(self) -> None:
        if self._lock is not None:
            (self.root / LOCK).unlink(missing_ok=True)  # while locked: waiters re-check inodes
            self._lock.close()
            self._lock = None

    def done_records(self) -> tuple[dict[str, Any], Callable[[str], int | None]]:
        records = {}
        partial = self.root / PARTIAL_DIR
        for path in partial.glob("*.json") if partial.is_dir() else ():
            try:
                records[path.stem] = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue  # written whole or not at all; anything else is not a record

        def size_of(name: str) -> int | None:
            path = self.root / name
            return path.stat().st_size if path.is_file() else None

        return records, size_of

    def commit_shard(self, name: str, record: dict[str, Any]) -> None:
        # The shard files are already in place: ShardWriter renamed them into the store.
        (self.root / PARTIAL_DIR).mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.root / PARTIAL_DIR / f"{name}.json", record)

    def restart(self, records: dict[str, dict[str, Any]]) -> None:
        for name, record in records.items():
            self.commit_shard(name, record)
        (self.root / MANIFEST).unlink(missing_ok=True)

    def remove_temporaries(self, wait_s: float = 0.0) -> None:
        # This process's (its writers have stopped) and those of dead ones: its Ray workers
        # cancelled mid-shard, or any killed run's.
        directories = [self.root, self.root / PARTIAL_DIR]
        if live := wait_for_writers(directories, wait_s) if wait_s else []:
            logger.warning("%s: %d files are still being written: %s", self.root, len(live), live)
        for directory in directories:
            remove_dead_temporaries(directory, own=True)

    def write_file(self, name: str, data: bytes) -> None:
        write_bytes_atomic(self.root / name, data)

    def publish(self, manifest: dict[str, Any]) -> None:
        write_json_atomic(self.root / MANIFEST, manifest)
        shutil.rmtree(self.root / PARTIAL_DIR, ignore_errors=True)
        self.remove_temporaries()  # e.g. of a Ray worker killed mid-shard (and retried)

    def check_visible(self, entry: dict[str, Any], node: str) -> None:
        path = self.root / entry["bin"]
        if not path.is_file() or path.stat().st_size != entry["bin_bytes"]:
            raise MixerError(
                f"{entry['name']} was written on Ray node {node[:12]} but is not at {path} on "
                "the driver: on a multi-node cluster the output must be a shared filesystem or "
                "a URL"
            )


def _holder(path: Path) -> Claimant | None:
    """The identity in a lock file; its holder writes it right after locking, so wait briefly."""
    for _ in range(50):
        holder = Claimant.parse(path.read_bytes()) if path.exists() else None
        if holder is not None:
            return holder
        time.sleep(0.02)
    return None


class UrlOutput(Output):
    """A store at an fsspec URL: shards staged on the worker's node, uploaded, then removed."""

    def __init__(self, url: str, storage_options: dict | None, cache_dir: str | None):
        self.url = url.rstrip("/")
        self.where = self.url
        self.storage_options = dict(storage_options or {})
        self.cache_dir = cache_dir
        self.run: str | None = None  # set by claim(), checked by every worker

    @property
    def staging(self) -> Path:
        # One directory per run: two runs on one node never rename over each other's shards.
        path = cache.staging_dir(self.url, self.cache_dir) / (self.run or "unclaimed")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def exists(self) -> bool:
        return bool(remote.object_sizes(self.url, self.storage_options))

    def check_usable(self) -> None:
        remote.filesystem(self.url, self.storage_options)  # a URL fsspec cannot open fails here

    def read_manifest(self) -> dict | None:
        manifest = remote.read_remote_manifest(self.url, self.storage_options)
        return None if manifest is None else check_manifest(manifest, f"{self.url}/{MANIFEST}")

    def _claimant(self) -> Claimant | None:
        data = remote.read_object(f"{self.url}/{CLAIM}", self.storage_options)
        return None if data is None else Claimant.parse(data)

    def claim(self, claimant: Claimant) -> None:
        marker, data = f"{self.url}/{CLAIM}", json_bytes(claimant.__dict__)
        if not remote.create_object(marker, data, self.storage_options):
            holder = self._claimant()
            if holder is not None and holder.job != claimant.job:
                raise MixerError(
                    f"{self.url} is being written by another {holder.kind} job "
                    f"({holder.describe()}); wait for it to finish, or if it is dead delete "
                    f"{marker}"
                )
            # The same job (a rerun after a crash, or a second copy): its shards are the same
            # bytes, so this run takes over and an earlier one still going stops.
            remote.put_bytes(marker, data, self.storage_options)
        self.run = claimant.run

    def check_claim(self) -> None:
        holder = self._claimant()
        if holder is None or holder.run != self.run:
            who = f" ({holder.describe()})" if holder else ""
            raise MixerError(
                f"{self.url}: another run of this job{who} took over this output; this run "
                "stopped without publishing (the other one finishes the store)"
            )

    def release(self) -> None:
        if self.run is None:
            return
        shutil.rmtree(self.staging, ignore_errors=True)
        try:
            cache.staging_dir(self.url, self.cache_dir).rmdir()  # once no other run stages here
        except OSError:
            pass
        holder = self._claimant()
        if holder is not None and holder.run == self.run:  # failed: let another job start
            remote.remove_object(f"{self.url}/{CLAIM}", self.storage_options)
        self.run = None

    def done_records(self) -> tuple[dict[str, Any], Callable[[str], int | None]]:
        records = remote.read_json_objects(f"{self.url}/{PARTIAL_DIR}", self.storage_options)
        sizes = remote.object_sizes(self.url, self.storage_options)
        return {name.removesuffix(".json"): r for name, r in records.items()}, sizes.get

    def commit_shard(self, name: str, record: dict[str, Any]) -> None:
        self.check_claim()  # a run that lost the output must not overwrite the owner's shards
        entry = record["entry"]
        files = [entry[kind] for kind in shard_files(entry)]
        remote.upload_files(self.staging, files, self.url, self.storage_options)
        remote.put_bytes(
            f"{self.url}/{PARTIAL_DIR}/{name}.json", json_bytes(record), self.storage_options
        )
        for file in files:
            (self.staging / file).unlink(missing_ok=True)

    def restart(self, records: dict[str, dict[str, Any]]) -> None:
        self.check_claim()  # the store may be another run's, finished since this one started
        for name, record in records.items():
            remote.put_bytes(
                f"{self.url}/{PARTIAL_DIR}/{name}.json", json_bytes(record), self.storage_options
            )
        remote.remove_object(f"{self.url}/{MANIFEST}", self.storage_options)

    def remove_temporaries(self, wait_s: float = 0.0) -> None:
        if wait_s and (live := wait_for_writers([self.staging], wait_s)):
            logger.warning(
                "%s: %d files are still being written: %s", self.staging, len(live), live
            )
        shutil.rmtree(self.staging, ignore_errors=True)  # only this run stages there

    def write_file(self, name: str, data: bytes) -> None:
        self.check_claim()
        remote.put_bytes(f"{self.url}/{name}", data, self.storage_options)

    def publish(self, manifest: dict[str, Any]) -> None:
        self.check_claim()
        remote.put_bytes(f"{self.url}/{MANIFEST}", json_bytes(manifest), self.storage_options)
        remote.remove_prefix(f"{self.url}/{PARTIAL_DIR}", self.storage_options)


def open_output(
    out: str, storage_options: dict | None = None, cache_dir: str | None = None
) -> Output:
    """The output named by `out`: a URL (s3://, gs://, ...) or a local path (or file://)."""
    if remote.is_remote(out):
        return UrlOutput(out, storage_options, cache_dir)
    return LocalOutput(out.removeprefix("file://"))
