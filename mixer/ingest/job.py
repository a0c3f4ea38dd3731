"""What `mixer tokenize` is asked to do: a `TokenizeJob`, one for the CLI, recipes and the API."""

from __future__ import annotations

from dataclasses import dataclass, field

from mixer.ingest.readers import MAX_DOCUMENT_BYTES, check_max_document_bytes

BACKENDS = ("auto", "hf", "fast", "giga")


@dataclass(frozen=True)
class TokenizeJob:
    """Everything `mixer tokenize` was asked to do; the CLI and the API both build one."""

    inputs: tuple[str, ...]
    tokenizer: str
    out: str
    format: str | None = None
    text_field: str = "text"
    txt_mode: str = "document"
    on_error: str = "fail"
    where: tuple[str, ...] = ()
    eos_token: str | None = None
    no_eos: bool = False
    workers: int | None = None
    ray_address: str | None = None
    chunk_bytes: int = 32 << 20
    backend: str = "auto"
    storage_options: dict = field(default_factory=dict, hash=False)
    cache_dir: str | None = None  # staging for a URL --out (default: mixer.store.cache's)
    include: tuple[str, ...] = ()  # globs relative to each input root (mixer.ingest.select)
    exclude: tuple[str, ...] = ()
    all_splits: bool = False  # also read val/validation/dev/test/sample folders
    max_document_bytes: int = MAX_DOCUMENT_BYTES
    """Longest record read (a jsonl line, a txt document or line, a parquet text value):
    longer ones are an error naming file:line, or counted as `too_large` with on_error="skip".
    Bounds memory for any input (see `mixer.ingest.readers.MAX_DOCUMENT_BYTES`)."""

    def __post_init__(self) -> None:
        check_max_document_bytes(self.max_document_bytes)
