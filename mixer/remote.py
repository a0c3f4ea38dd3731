"""Token stores at fsspec URLs (s3://, gs://, ...): upload after tokenizing, read through a cache.

Writing (`mixer tokenize --out s3://bucket/prefix`, see mixer.ingest): each task writes its shard
into a staging directory on the node that runs it (named after a hash of the URL), uploads the
.bin and .idx (`upload_files`), then a done record (`put_bytes`), and deletes its copy; the
driver uploads `manifest.json` LAST: a reader that finds the manifest at the URL finds every
shard it lists. `upload_store` uploads a finished local store in the same order. Transient errors
are retried with exponential backoff a bounded number of times, then reported as a `MixerError`
naming the URL.

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
emptied halfway is never taken for complete, and keeps the lock files.

Retries: botocore (5 attempts, exponential backoff), s3fs (5 for throttling, dropped
connections and truncated bodies) and aiohttp (once, for a stale pooled connection) retry each
request below `with_retries`, so against an endpoint that stays down the layers multiply: about
25 requests and 30-45 s per attempt measured against a 503-only endpoint, some minutes before the
final `MixerError`. Set ``AWS_MAX_ATTEMPTS`` or s3fs's `retries` to shorten that.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from mixer.errors import MixerError, StoreError

MANIFEST = "manifest.json"  # same as mixer.store.MANIFEST; store imports this module lazily
CACHE_ENV = "MIXER_CACHE_DIR"
MAX_BYTES_ENV = "MIXER_CACHE_MAX_BYTES"
INCOMING = f".{MANIFEST}.incoming"  # the manifest a fetch in progress follows
USE_LOCK = ".use"  # shared flock: a process has this store open (see module docstring)
LAST_USED = ".used"  # mtime: when the store was last opened
LOCK_FILES = (".lock", USE_LOCK)  # kept by eviction: a waiter may hold them open
RETRY_ATTEMPTS = 5
RETRY_BASE_DELAY = 0.5  # seconds; doubled after every failed attempt
CHUNK = 8 << 20

T = TypeVar("T")


def is_remote(path: str | os.PathLike) -> bool:
    """True for a URL other than file://, i.e. a store that needs fsspec to reach."""
    text = os.fspath(path)
    return isinstance(text, str) and "://" in text and not text.startswith("file://")


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


def url_key(url: str) -> str:
    """Stable short name for a URL (trailing slashes ignored)."""
    return hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:24]


def staging_dir(url: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `mixer tokenize --out URL` builds the store before uploading it."""
    return Path(cache_dir or default_cache_dir()) / "staging" / url_key(url)


def cached_store_dir(url: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where `fetch_store` keeps the local copy of the store at `url`."""
    return Path(cache_dir or default_cache_dir()) / "stores" / url_key(url)


def _filesystem(url: str, storage_options: dict | None):
    import fsspec

    try:
        return fsspec.core.url_to_fs(url.rstrip("/"), **(storage_options or {}))
    except (ImportError, ValueError) as e:
        raise MixerError(f"{url}: cannot open this URL ({e})") from None


def _transient_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, ConnectionError, TimeoutError]
    try:  # a body cut short reaches us as aiohttp's ClientPayloadError once s3fs gives up
        import aiohttp

        errors.append(aiohttp.ClientError)
    except ImportError:  # pragma: no cover - only without the s3 extras
        pass
    try:
        import botocore.exceptions

        errors.append(botocore.exceptions.BotoCoreError)
        errors.append(botocore.exceptions.ClientError)
    except ImportError:  # pragma: no cover - only without the s3 extras
        pass
    return tuple(errors)


# Errors that no retry will fix: fail at once.
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def with_retries(
    action: Callable[[], T],
    what: str,
    attempts: int | None = None,
    base_delay: float | None = None,
) -> T:
    """Run `action`, retrying transient I/O errors with exponential backoff; then MixerError."""
    attempts = RETRY_ATTEMPTS if attempts is None else attempts
    delay = RETRY_BASE_DELAY if base_delay is None else base_delay
    transient = _transient_errors()
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except _PERMANENT as e:
            raise MixerError(f"{what}: {type(e).__name__}: {e}") from e
        except transient as e:
            if attempt == attempts:
                raise MixerError(
                    f"{what}: failed after {attempts} attempts ({type(e).__name__}: {e})"
                ) from e
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")  # pragma: no cover


# ---------------------------------------------------------------------------- writing


def read_remote_manifest(url: str, storage_options: dict | None = None) -> dict | None:
    """The manifest at `url` parsed as JSON, or None when there is none (not a finished store)."""
    fs, root = _filesystem(url, storage_options)
    path = f"{root}/{MANIFEST}"

    def get() -> bytes | None:
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            return None

    data = with_retries(get, f"{url}/{MANIFEST}: download")
    if data is None:
        return None
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{url}/{MANIFEST}: manifest is not valid JSON ({e})") from None


def upload_store(
    local: str | os.PathLike,
    url: str,
    storage_options: dict | None = None,
    attempts: int | None = None,
) -> None:
    """Upload a finished local store to `url`: every shard file first, `manifest.json` last."""
    from mixer.store import read_manifest, safe_member

    local = Path(local)
    manifest = read_manifest(local)
    names = [name for entry in manifest["shards"] for name in (entry["bin"], entry["idx"])]
    for name in names:
        safe_member(local, name)
    upload_files(local, [*names, MANIFEST], url, storage_options, attempts)


def upload_files(
    local: Path,
    names: list[str],
    url: str,
    storage_options: dict | None = None,
    attempts: int | None = None,
) -> None:
    """Upload `local/NAME` to `url/NAME` for each name, in order, each with retries."""
    fs, root = _filesystem(url, storage_options)
    for name in names:
        with_retries(
            lambda s=str(local / name), t=f"{root}/{name}": fs.put_file(s, t),
            f"{url}/{name}: upload",
            attempts,
        )


def put_bytes(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write one small object (a manifest, a done record) whole, with retries."""
    fs, path = _filesystem(url, storage_options)
    with_retries(lambda: fs.pipe_file(path, data), f"{url}: upload")


def object_sizes(url: str, storage_options: dict | None = None) -> dict[str, int]:
    """Size of every object directly under `url`, by name (empty when there is none)."""
    fs, root = _filesystem(url, storage_options)

    def listing() -> list[dict]:
        fs.invalidate_cache(root)
        try:
            return fs.ls(root, detail=True)
        except FileNotFoundError:
            return []

    found = with_retries(listing, f"{url}: list")
    return {e["name"].rsplit("/", 1)[-1]: e["size"] for e in found if e.get("type") == "file"}


def read_json_objects(url: str, storage_options: dict | None = None) -> dict[str, Any]:
    """Every JSON object directly under `url`, parsed, by name; unreadable ones are left out."""
    fs, root = _filesystem(url, storage_options)
    found = {}
    for name in object_sizes(url, storage_options):
        data = with_retries(lambda n=name: fs.cat_file(f"{root}/{n}"), f"{url}/{name}: download")
        try:
            found[name] = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # a record is written whole or not at all; ignore anything else
    return found


def remove_prefix(url: str, storage_options: dict | None = None) -> None:
    """Delete everything under `url` (done records after the manifest is up); best effort."""
    fs, root = _filesystem(url, storage_options)
    try:
        fs.rm(root, recursive=True)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------------------- reading


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


def _download_checked(fs, source: str, target: Path, entry: dict, kind: str, url: str) -> None:
    """Download `source` to `target` via a temporary name, checking size and sha256 first."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{threading.get_ident()}")
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
        size = tmp.stat().st_size
        expected_size = entry.get(f"{kind}_bytes")
        if expected_size is not None and size != expected_size:
            raise StoreError(
                f"{url}/{name}: shard {entry.get('name', name)} is {size} bytes, "
                f"manifest says {expected_size} (truncated or replaced)"
            )
        expected = entry.get(f"{kind}_sha256")
        if expected is None:
            raise StoreError(f"{url}: shard {entry.get('name', name)} has no {kind}_sha256")
        if actual != expected:
            raise StoreError(
                f"{url}/{name}: shard {entry.get('name', name)} has sha256 {actual[:12]}…, "
                f"manifest says {str(expected)[:12]}… (corrupted in storage or in transit)"
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
    return sum(
        int(entry.get("bin_bytes") or 0) + int(entry.get("idx_bytes") or 0)
        for entry in manifest.get("shards", ())
        if isinstance(entry, dict)
    )


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
            f"(--cache-max-bytes / ${MAX_BYTES_ENV})"
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
            f"(--cache-max-bytes / ${MAX_BYTES_ENV})"
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
    from mixer.store import check_manifest, safe_member, write_bytes_atomic

    fs, root = _filesystem(url, storage_options)
    local = cached_store_dir(url, cache_dir)
    bound = cache_max_bytes() if max_bytes is None else max_bytes
    _hold(local)
    with _locked(local):

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
            for entry in manifest["shards"]:
                if not isinstance(entry, dict):
                    raise StoreError(f"{url}/{MANIFEST}: malformed shard entry {entry!r}")
                for kind in ("bin", "idx"):
                    target = safe_member(local, entry.get(kind))
                    if target.exists() and target.stat().st_size == entry.get(f"{kind}_bytes"):
                        continue  # verified before it was renamed into place by an earlier fetch
                    _download_checked(fs, f"{root}/{target.name}", target, entry, kind, url)
            write_bytes_atomic(local_manifest, manifest_bytes)
            incoming.unlink()
        now = time.time_ns()  # exact stamp: the filesystem's own clock ticks too coarsely
        (local / LAST_USED).touch()
        os.utime(local / LAST_USED, ns=(now, now))
    return local


def open_store(
    url: str,
    cache_dir: str | os.PathLike | None = None,
    storage_options: dict | None = None,
    max_bytes: int | None = None,
) -> Any:
    """`TokenStore` over the cached copy of the store at `url`."""
    from mixer.store import TokenStore

    return TokenStore.open(fetch_store(url, cache_dir, storage_options, max_bytes))
