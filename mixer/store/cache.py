"""The per-node cache of stores read from URLs.

Reading (`TokenStore.open("s3://...")`, and so `MixSampler` over such specs): `fetch_store`
copies the store into ``CACHE/stores/<hash of the URL>/`` once per node. A lock file
(``fcntl.flock``) serialises concurrent readers, so each file is downloaded once; each shard file
is written under a temporary name, checked against the manifest's size and sha256, and only then
renamed into place; the manifest is written last. The result is a plain local store that is
memory-mapped as usual. A changed manifest at the URL empties the cached copy first.

The cache directory is `cache_dir` when given, else ``$MIXER_CACHE_DIR``, else
``~/.cache/mixer``. Credentials and endpoints come from the usual environment (AWS_* variables,
AWS_ENDPOINT_URL) and from `storage_options`, passed to ``fsspec.core.url_to_fs``.

Size bound: with `max_bytes` (else ``$MIXER_CACHE_MAX_BYTES``, e.g. ``200e9``, which
``mixer --cache-max-bytes`` sets; unset means no bound), a fetch first evicts whole cached
stores, least recently opened first (each open stamps ``.used``), until the cached stores plus
the one to fetch fit. A store that alone exceeds the bound is an error before anything is
downloaded or evicted, and so is a bound that only stores in use could make room for: no
thrashing, no silent overshoot. Fetches in progress count at their full size (their
``.manifest.json.incoming``), and room is made under one lock per cache (``stores/.lock``), so
concurrent fetches of different stores respect the bound together. Staging directories of
``tokenize --out URL`` are neither counted nor evicted: each task deletes its shard once it is
uploaded (a rerun resumes from the done records at the URL, not from staging).

In use means held: a process that fetches or opens a store takes a shared ``flock`` on its
``.use`` file and keeps it until it exits (or calls `release_store`), and eviction takes that
lock exclusively without waiting and skips the store when it cannot. A lock held only while
opening would not do: `TokenStore` maps shard files lazily, on first read, and `MixSampler`
reopens cached paths in DataLoader workers. (Where a cached file is unlinked anyway, because the
store at the URL was rebuilt or a process released its hold, Linux keeps an existing memory map
of it valid; only later opens see the new state.) Eviction deletes the manifest first, so a store
emptied halfway is never taken for complete, and keeps the lock files."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mixer.errors import MixerError, StoreError
from mixer.store.format import (
    MANIFEST,
    check_manifest,
    listed_files,
    remove_dead_temporaries,
    safe_member,
    temporary_path,
    write_bytes_atomic,
)
from mixer.store.remote import CHUNK, filesystem, url_key, with_retries

CACHE_ENV = "MIXER_CACHE_DIR"


MAX_BYTES_ENV = "MIXER_CACHE_MAX_BYTES"


INCOMING = f".{MANIFEST}.incoming"  # the manifest a fetch in progress follows


USE_LOCK = ".use"  # shared flock: a process has this store open (see module docstring)


LAST_USED = ".used"  # mtime: when the store was last opened


LOCK_FILES = (".lock", USE_LOCK)  # kept by eviction: a waiter may hold them open


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mixer")


def cache_max_bytes() -> int | None:
    """The cache bound from ``$MIXER_CACHE_MAX_BYTES`` (plain or 1e9 notation), None if unset."""
    text = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not text:
        return None
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value <= 0:
        raise MixerError(f"${MAX_BYTES_ENV}={text!r} is not a positive number of bytes")
    return value


def staging_dir(url: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `mixer tokenize --out URL` builds the store before uploading it."""
    return Path(cache_dir or default_cache_dir()) / "staging" / url_key(url)


def cached_store_dir(url: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `fetch_store` keeps the local copy of the store at `url`."""
    return Path(cache_dir or default_cache_dir()) / "stores" / url_key(url)


_thread_locks: dict[str, threading.Lock] = {}


_thread_locks_guard = threading.Lock()


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Exclusive lock on `directory` for threads of this process and other processes alike."""
    directory.mkdir(parents=True, exist_ok=True)
    with _thread_locks_guard:
        thread_lock = _thread_locks.setdefault(str(directory), threading.Lock())
    with thread_lock, open(directory / ".lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _download_checked(
    fs, source: str, target: Path, size: int | None, sha256: str | None, what: str, url: str
) -> None:
    """Download `source` to `target` via a temporary name, checking size and sha256 first;
    `what` names the file's role in messages (`mixer.store.format.listed_files`)."""
    tmp = temporary_path(target, thread=True)
    name = target.name

    def fetch() -> str:
        digest = hashlib.sha256()
        with fs.open(source, "rb") as remote, open(tmp, "wb") as out:
            while block := remote.read(CHUNK):
                out.write(block)
                digest.update(block)
            out.flush()
            os.fsync(out.fileno())
        return digest.hexdigest()

    try:
        actual = with_retries(fetch, f"{url}/{name}: download")
        got = tmp.stat().st_size
        if size is not None and got != size:
            raise StoreError(
                f"{url}/{name}: {what} is {got} bytes, manifest says {size} (truncated or replaced)"
            )
        if sha256 is None:
            raise StoreError(f"{url}: {what} has no sha256 for {name}")
        if actual != sha256:
            raise StoreError(
                f"{url}/{name}: {what} has sha256 {actual[:12]}…, manifest says "
                f"{str(sha256)[:12]}… (corrupted in storage or in transit)"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


_pins: dict[str, Any] = {}  # cached store directory -> open .use file holding a shared flock


_pins_guard = threading.Lock()


def _hold(local: Path) -> None:
    """Mark `local` in use by this process until it exits (shared lock on its .use file)."""
    with _pins_guard:
        if str(local) in _pins:
            return
        local.mkdir(parents=True, exist_ok=True)
        handle = open(local / USE_LOCK, "a+b")
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)  # waits only for an eviction under way
        _pins[str(local)] = handle


def release_store(url: str, cache_dir: str | os.PathLike | None = None) -> None:
    """Let other processes evict the cached copy of `url` again (see the module docstring).

    Only once this process no longer reads the store: its shard files may then be deleted.
    """
    with _pins_guard:
        handle = _pins.pop(str(cached_store_dir(url, cache_dir)), None)
    if handle is not None:
        handle.close()


def _planned_bytes(manifest: dict) -> int:
    """Bytes of the files a manifest lists; 0 for what is not a checked manifest."""
    try:
        return sum(int(size or 0) for _, size, _, _ in listed_files(manifest))
    except (KeyError, TypeError, AttributeError):
        return 0


def _store_bytes(directory: Path) -> int:
    """Bytes a cached store takes, or will take once the fetch under way there finishes."""
    on_disk = planned = 0
    for child in directory.iterdir():
        try:
            on_disk += child.stat().st_size if child.is_file() else 0
            if child.name in (MANIFEST, INCOMING):
                planned = max(planned, _planned_bytes(json.loads(child.read_bytes())))
        except (OSError, ValueError, TypeError, AttributeError):
            continue  # deleted meanwhile, or not a manifest: its bytes on disk still count
    return max(on_disk, planned)


def _last_used(directory: Path) -> int:
    try:
        return (directory / LAST_USED).stat().st_mtime_ns
    except OSError:
        return 0  # never opened to the end (an interrupted fetch): evict first


def _evict(directory: Path) -> bool:
    """Empty a cached store unless some process holds it; True when emptied."""
    with open(directory / USE_LOCK, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        (directory / MANIFEST).unlink(missing_ok=True)  # first: no manifest over missing shards
        for child in directory.iterdir():
            if child.name not in LOCK_FILES:
                shutil.rmtree(child) if child.is_dir() else child.unlink(missing_ok=True)
    return True


def _make_room(local: Path, need: int, bound: int, url: str) -> None:
    """Evict least recently used stores other than `local` until `need` more bytes fit."""
    if need > bound:
        raise MixerError(
            f"{url}: store is {need:,} bytes, more than the cache bound of {bound:,} bytes "
            f"(${MAX_BYTES_ENV})"
        )
    others = [d for d in local.parent.iterdir() if d.is_dir() and d != local]
    sizes = {d: _store_bytes(d) for d in others}
    used = sum(sizes.values())
    for victim in sorted(others, key=_last_used):
        if used + need <= bound:
            return
        if sizes[victim] and _evict(victim):
            used -= sizes[victim]
    if used + need > bound:
        raise MixerError(
            f"{url}: store is {need:,} bytes and the cache bound is {bound:,} bytes, but "
            f"{used:,} bytes of cached stores are in use by running processes "
            f"(${MAX_BYTES_ENV})"
        )


def fetch_store(
    url: str,
    cache_dir: str | os.PathLike | None = None,
    storage_options: dict | None = None,
    max_bytes: int | None = None,
) -> Path:
    """Make a verified local copy of the store at `url` (once per node) and return its path.

    `max_bytes` bounds the cache (default ``$MIXER_CACHE_MAX_BYTES``; see the module docstring).
    """
    fs, root = filesystem(url, storage_options)
    local = cached_store_dir(url, cache_dir)
    bound = cache_max_bytes() if max_bytes is None else max_bytes
    _hold(local)
    with _locked(local):
        remove_dead_temporaries(local)  # left by a fetch that was killed

        def get_manifest() -> bytes:
            try:
                return fs.cat_file(f"{root}/{MANIFEST}")
            except FileNotFoundError:
                raise StoreError(
                    f"{url}: not a token store (no {MANIFEST}; unfinished or wrong path?)"
                ) from None

        manifest_bytes = with_retries(get_manifest, f"{url}/{MANIFEST}: download")
        local_manifest = local / MANIFEST
        incoming = local / INCOMING
        if not (local_manifest.exists() and local_manifest.read_bytes() == manifest_bytes):
            if not (incoming.exists() and incoming.read_bytes() == manifest_bytes):
                # No copy, or one of another build of the store at the URL (rebuilt since):
                # shard files here were checked against another manifest, so start from nothing.
                for child in local.iterdir():
                    if child.name not in LOCK_FILES:
                        shutil.rmtree(child) if child.is_dir() else child.unlink()
            try:
                manifest = check_manifest(json.loads(manifest_bytes), f"{url}/{MANIFEST}")
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise StoreError(f"{url}/{MANIFEST}: manifest is not valid JSON ({e})") from None
            if bound is None:
                write_bytes_atomic(incoming, manifest_bytes)
            else:  # room and reservation (the incoming manifest) in one step per cache
                with _locked(local.parent):
                    need = _planned_bytes(manifest) + len(manifest_bytes)
                    _make_room(local, need, bound, url)
                    write_bytes_atomic(incoming, manifest_bytes)
            for name, size, sha256, what in listed_files(manifest):
                target = safe_member(local, name)
                if target.exists() and target.stat().st_size == size:
                    continue  # verified before it was renamed into place by an earlier fetch
                _download_checked(fs, f"{root}/{name}", target, size, sha256, what, url)
            write_bytes_atomic(local_manifest, manifest_bytes)
            incoming.unlink()
        now = time.time_ns()  # exact stamp: the filesystem's own clock ticks too coarsely
        (local / LAST_USED).touch()
        os.utime(local / LAST_USED, ns=(now, now))
    return local
