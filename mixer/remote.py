"""Token stores at fsspec URLs (s3://, gs://, ...): upload after tokenizing, read through a cache.

Writing (`mixer tokenize --out s3://bucket/prefix`): the job tokenizes into a local staging
directory named after a hash of the URL (so a rerun after a crash resumes from the staged shards),
then `upload_store` puts every shard file and `manifest.json` LAST: a reader that finds the
manifest at the URL finds every shard it lists. Transient errors are retried with exponential
backoff a bounded number of times, then reported as a `MixerError` naming the URL.

Reading (`TokenStore.open("s3://...")`, and so `MixSampler` over such specs): `fetch_store`
copies the store into ``CACHE/stores/<hash of the URL>/`` once per node. A lock file
(``fcntl.flock``) serialises concurrent readers, so each file is downloaded once; each shard file
is written under a temporary name, checked against the manifest's size and sha256, and only then
renamed into place; the manifest is written last. The result is a plain local store that is
memory-mapped as usual. A changed manifest at the URL empties the cached copy first.

The cache directory is `cache_dir` when given, else ``$MIXER_CACHE_DIR``, else
``~/.cache/mixer``. Credentials and endpoints come from the usual environment (AWS_* variables,
AWS_ENDPOINT_URL) and from `storage_options`, passed to ``fsspec.core.url_to_fs``. Nothing is
ever evicted from the cache (no size bound).

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


def fetch_store(
    url: str,
    cache_dir: str | os.PathLike | None = None,
    storage_options: dict | None = None,
) -> Path:
    """Make a verified local copy of the store at `url` (once per node) and return its path."""
    from mixer.store import check_manifest, safe_member, write_bytes_atomic

    fs, root = _filesystem(url, storage_options)
    local = cached_store_dir(url, cache_dir)
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
        incoming = local / f".{MANIFEST}.incoming"  # the manifest a fetch in progress follows
        if local_manifest.exists() and local_manifest.read_bytes() == manifest_bytes:
            return local
        if not (incoming.exists() and incoming.read_bytes() == manifest_bytes):
            # No copy, or one of another build of the store at the URL (rebuilt since): shard
            # files here were checked against another manifest, so start from nothing.
            for child in local.iterdir():
                if child.name != ".lock":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        try:
            manifest = check_manifest(json.loads(manifest_bytes), f"{url}/{MANIFEST}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StoreError(f"{url}/{MANIFEST}: manifest is not valid JSON ({e})") from None
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
    return local


def open_store(
    url: str,
    cache_dir: str | os.PathLike | None = None,
    storage_options: dict | None = None,
) -> Any:
    """`TokenStore` over the cached copy of the store at `url`."""
    from mixer.store import TokenStore

    return TokenStore.open(fetch_store(url, cache_dir, storage_options))
