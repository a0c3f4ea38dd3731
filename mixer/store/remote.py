"""Token stores at fsspec URLs (s3://, gs://, ...): upload after tokenizing, read through a cache.

Writing (`mixer tokenize --out s3://bucket/prefix`, see mixer.ingest): each task writes its shard
into a staging directory on the node that runs it (named after a hash of the URL), uploads the
.bin and .idx (`upload_files`), then a done record (`put_bytes`), and deletes its copy; the
driver uploads `manifest.json` LAST: a reader that finds the manifest at the URL finds every
shard it lists. `upload_store` uploads a finished local store in the same order. Transient errors
are retried with exponential backoff a bounded number of times, then reported as a `MixerError`
naming the URL.

Retries: botocore, s3fs and aiohttp each retry a request below `with_retries`, so against an
endpoint that stays down the layers multiply and the final `MixerError` can take minutes (see
BENCHMARKS.md, "Retries against an endpoint that stays down"). Set ``AWS_MAX_ATTEMPTS`` or
s3fs's `retries` to shorten that.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mixer.errors import MixerError, StoreError
from mixer.store.format import MANIFEST, listed_files, safe_member

RETRY_ATTEMPTS = 5


RETRY_BASE_DELAY = 0.5  # seconds; doubled after every failed attempt


CHUNK = 8 << 20


T = TypeVar("T")


def is_remote(path: str | os.PathLike) -> bool:
    """True for a URL other than file://, i.e. a store that needs fsspec to reach."""
    text = os.fspath(path)
    return isinstance(text, str) and "://" in text and not text.startswith("file://")


def url_key(url: str) -> str:
    """Stable short name for a URL (trailing slashes ignored)."""
    return hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:24]


def filesystem(url: str, storage_options: dict | None):
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


def read_object(url: str, storage_options: dict | None = None) -> bytes | None:
    """The bytes of one object, or None when there is none."""
    fs, path = filesystem(url, storage_options)

    def get() -> bytes | None:
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            return None

    return with_retries(get, f"{url}: download")


def read_remote_manifest(url: str, storage_options: dict | None = None) -> dict | None:
    """The manifest at `url` parsed as JSON, or None when there is none (not a finished store)."""
    data = read_object(f"{url}/{MANIFEST}", storage_options)
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
    """Upload a finished local store to `url`: every file it lists first (`listed_files`),
    `manifest.json` last."""
    from mixer.store.reader import read_manifest  # reader reads URLs through this module

    local = Path(local)
    manifest = read_manifest(local)
    names = [name for name, *_ in listed_files(manifest)]
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
    fs, root = filesystem(url, storage_options)
    for name in names:
        with_retries(
            lambda s=str(local / name), t=f"{root}/{name}": fs.put_file(s, t),
            f"{url}/{name}: upload",
            attempts,
        )


def put_bytes(url: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write one small object (a manifest, a done record) whole, with retries."""
    fs, path = filesystem(url, storage_options)
    with_retries(lambda: fs.pipe_file(path, data), f"{url}: upload")


def create_object(url: str, data: bytes, storage_options: dict | None = None) -> bool:
    """Write one small object only if none exists (S3 If-None-Match); False when one does.

    Where the filesystem has no exclusive create, an existence check comes first: a narrow
    race between two creators, where S3 itself has none.
    """
    fs, path = filesystem(url, storage_options)

    def create() -> bool:
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except (TypeError, NotImplementedError):  # no exclusive create here
            if fs.exists(path):
                return False
            fs.pipe_file(path, data)
        return True

    try:
        return with_retries(create, f"{url}: upload")
    except MixerError as e:
        if isinstance(e.__cause__, FileExistsError):
            return False
        raise


def object_sizes(url: str, storage_options: dict | None = None) -> dict[str, int]:
    """Size of every object directly under `url`, by name (empty when there is none)."""
    fs, root = filesystem(url, storage_options)

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
    fs, root = filesystem(url, storage_options)
    found = {}
    for name in object_sizes(url, storage_options):
        data = with_retries(lambda n=name: fs.cat_file(f"{root}/{n}"), f"{url}/{name}: download")
        try:
            found[name] = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # a record is written whole or not at all; ignore anything else
    return found


def remove_object(url: str, storage_options: dict | None = None) -> None:
    """Delete one object; none there is fine."""
    fs, path = filesystem(url, storage_options)

    def remove() -> None:
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass

    with_retries(remove, f"{url}: delete")


def remove_prefix(url: str, storage_options: dict | None = None) -> None:
    """Delete everything under `url` (done records after the manifest is up); best effort."""
    fs, root = filesystem(url, storage_options)
    try:
        fs.rm(root, recursive=True)
    except FileNotFoundError:
        pass
