"""The progress bar of `mixer tokenize`."""

from __future__ import annotations

import sys


class Progress:
    """tqdm over input bytes with documents/tokens in the postfix; silent when not a TTY."""

    def __init__(self, total_bytes: int, total_shards: int, enabled: bool | None):
        from tqdm import tqdm

        if enabled is None:
            enabled = sys.stderr.isatty()
        self.documents = self.tokens = self.shards = 0
        self.total_shards = total_shards
        self.bar = tqdm(
            total=total_bytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc="tokenize",
            disable=not enabled,
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def reused(self, nbytes: int, shards: int) -> None:
        self.shards += shards
        self.bar.update(nbytes)

    def update(self, nbytes: int, entry: dict) -> None:
        self.shards += 1
        self.documents += entry["documents"]
        self.tokens += entry["tokens"]
        self.bar.set_postfix_str(
            f"tasks {self.shards}/{self.total_shards} docs {self.documents:,} "
            f"tokens {self.tokens:,}",
            refresh=False,
        )
        self.bar.update(nbytes)

    def close(self) -> None:
        self.bar.close()
