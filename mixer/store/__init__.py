"""Token stores: the on-disk format, writing, reading, and stores at URLs."""

from mixer.store.reader import TokenStore
from mixer.store.writer import ShardWriter, write_store

__all__ = ["ShardWriter", "TokenStore", "write_store"]
