"""Open an input URL as a byte stream: formats by extension, gzip/zstd decompression.

A damaged or truncated compressed file is always an `InputError` naming the file: a silent
partial read would quietly drop data from a training mix.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import io
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

import fsspec
import zstandard

from mixer.errors import InputError, MixerError

if TYPE_CHECKING:  # imported where parquet is read, not at every start-up (BENCHMARKS.md)
    import pyarrow.parquet as pq

    from mixer.ingest.readers import ReadStats

FORMATS: tuple[str, ...] = ("jsonl", "jsonl.gz", "jsonl.zst", "parquet", "txt", "txt.gz", "txt.zst")


# Longest suffixes first, so ".jsonl.gz" wins over a shorter match.
_EXTENSIONS: dict[str, str] = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".jsonl.gz": "jsonl.gz",
    ".json.gz": "jsonl.gz",
    ".jsonl.zst": "jsonl.zst",
    ".jsonl.zstd": "jsonl.zst",
    ".json.zst": "jsonl.zst",
    ".json.zstd": "jsonl.zst",
    ".parquet": "parquet",
    ".txt": "txt",
    ".md": "txt",
    ".txt.gz": "txt.gz",
    ".md.gz": "txt.gz",
    ".txt.zst": "txt.zst",
    ".txt.zstd": "txt.zst",
}


_SUFFIXES = sorted(_EXTENSIONS, key=len, reverse=True)


IO_CHUNK = 1 << 20  # buffered reads from storage


_ZSTD_FEED = 128 << 10  # compressed bytes fed per zstd call: bounds each decompressed burst


def detect_format(url: str) -> str:
    """Format from the file name's extension."""
    name = url.rstrip("/").rsplit("/", 1)[-1].lower()
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return _EXTENSIONS[suffix]
    raise MixerError(
        f"unknown format for {url}; pass format= one of {', '.join(FORMATS)}", params=("format",)
    )


@contextlib.contextmanager
def arrow_errors(url: str) -> Iterator[None]:
    import pyarrow as pa

    try:
        yield
    except (pa.ArrowException, OSError, UnicodeDecodeError) as e:  # corrupt pages surface
        reason = " ".join(str(e).split())  # as bare OSError or bad UTF-8 in a string column
        raise InputError(f"{url}: cannot read parquet: {reason}") from None


@contextlib.contextmanager
def open_input(url: str, storage_options: dict) -> Iterator[BinaryIO]:
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    try:
        f = fs.open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{url}: file not found") from None
    with f:
        yield f


class CountingReader(io.RawIOBase):
    """Adapts any fsspec file to `io.BufferedReader` (fast readline), counting bytes if asked.

    With `empty_error`, a file that holds no byte at all raises `InputError(empty_error)`.
    """

    def __init__(self, f: BinaryIO, stats: ReadStats | None, empty_error: str | None = None):
        self._f, self._stats = f, stats
        self._empty_error = empty_error

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._f.read(len(b))
        n = len(data)
        b[:n] = data
        if self._stats is not None:
            self._stats.bytes_read += n
        if self._empty_error is not None:
            if n == 0 and len(b):
                raise InputError(self._empty_error)
            if n:
                self._empty_error = None
        return n


SNIFF_BYTES = 4096  # what `check_text` looks at


# File signatures of formats that are never text (the first bytes of the file).
_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PAR1": "parquet",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"PK\x03\x04": "zip",
    b"\x04\x22\x4d\x18": "lz4",
}


def check_text(head: bytes, url: str, format: str) -> None:
    """Refuse, in both on_error modes, a file whose first bytes are not text at all.

    A compressed file under a text extension would otherwise be thousands of "bad lines", and
    skip mode would count them and write a store without the file's documents. Not text: a
    known binary signature; for JSON lines also a NUL byte (never valid in JSON) or more than
    a tenth of `head` not decoding as UTF-8.
    """
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            raise InputError(
                f"{url}: holds {kind} data, not {format} text; give the file its real "
                "extension or pass format=",
                params=("format",),
            )
    if not format.startswith("jsonl") or not head:
        return
    if b"\x00" in head:
        raise InputError(
            f"{url}: binary data, not JSON lines (a NUL byte at offset {head.index(0)}); "
            "check the file, or pass format=",
            params=("format",),
        )
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(head, final=False)
    if text.count("\ufffd") * 10 > len(text):
        raise InputError(
            f"{url}: binary data, not UTF-8 JSON lines; check the file, or pass format=",
            params=("format",),
        )


def decompressed(raw: BinaryIO, url: str, format: str, stats: ReadStats) -> BinaryIO:
    """A buffered stream of decompressed bytes; compressed bytes consumed go to `stats`."""
    # gzip and zstd themselves call an empty file truncated: a download that never arrived
    kind = "gzip" if format.endswith(".gz") else "zstd"
    empty = f"{url}: 0 bytes, a truncated {kind} file (an empty {kind} stream has a header)"
    counted = CountingReader(raw, stats, empty_error=empty)
    if format.endswith(".gz"):
        return gzip.GzipFile(fileobj=io.BufferedReader(counted, IO_CHUNK), mode="rb")
    return io.BufferedReader(_Zstd(counted, url), IO_CHUNK)


def decompress_errors(read: Any, url: str) -> Any:
    """Wrap a read function so that damaged gzip data names the file."""

    def wrapped(*args: Any) -> bytes:
        try:
            return read(*args)
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise InputError(f"{url}: corrupt or truncated gzip data ({e})") from None

    return wrapped


class _Zstd(io.RawIOBase):
    """Decompresses concatenated zstd frames, and raises when the last frame is cut short.

    `zstandard`'s stream_reader returns a truncated frame's prefix without complaint, so this
    feeds one decompressobj per frame and checks at the end of the input that none is open.
    """

    def __init__(self, raw: io.RawIOBase, url: str) -> None:
        self._raw, self._url = raw, url
        self._dctx = zstandard.ZstdDecompressor(max_window_size=1 << 31)
        self._obj = self._dctx.decompressobj()
        self._open_frame = False
        self._out = memoryview(b"")
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._out:
            if self._done:
                return 0
            self._fill()
        n = min(len(b), len(self._out))
        b[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _fill(self) -> None:
        data = self._raw.read(_ZSTD_FEED)
        if not data:
            self._done = True
            if self._open_frame:
                raise InputError(f"{self._url}: truncated zstd data (the last frame is incomplete)")
            return
        out = []
        while data:
            try:
                out.append(self._obj.decompress(data))
            except zstandard.ZstdError as e:
                raise InputError(f"{self._url}: corrupt zstd data ({e})") from None
            self._open_frame = True
            data = b""
            if self._obj.eof:
                data = self._obj.unused_data
                self._obj = self._dctx.decompressobj()
                self._open_frame = False
        self._out = memoryview(b"".join(out))


def check_text_column(url: str, pf: pq.ParquetFile, text_field: str) -> None:
    names = pf.schema_arrow.names
    column = text_field if text_field in names else text_field.split(".")[0]
    if column not in names:
        raise InputError(
            f"{url}: no column {column!r} for text field {text_field!r}; "
            f"columns are {', '.join(names)}"
        )
