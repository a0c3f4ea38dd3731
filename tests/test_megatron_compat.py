"""megatron-core's own IndexedDataset reads mixer shards unchanged (skipped without it).

megatron-core pulls torch and is not a test dependency; to run this:
  python -m venv /tmp/mc && /tmp/mc/bin/pip install torch==2.13.0 megatron-core pytest numpy
  PYTHONPATH=. /tmp/mc/bin/python -m pytest tests/test_megatron_compat.py -p no:cacheprovider
"""

import numpy as np
import pytest

from mixer import TokenStore
from mixer.store import write_store


@pytest.mark.parametrize("vocab_size", [1000, 100_000])
def test_megatron_indexed_dataset_reads_our_shards(tmp_path, vocab_size):
    indexed = pytest.importorskip("megatron.core.datasets.indexed_dataset")
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, vocab_size, size=rng.integers(1, 50)) for _ in range(40)]
    write_store(tmp_path, docs, vocab_size=vocab_size, docs_per_shard=25)
    store = TokenStore.open(tmp_path)
    first = 0
    for shard in store.shards:
        prefix = str(shard.bin_path)[: -len(".bin")]
        dataset = indexed.IndexedDataset(prefix, mmap=True)
        assert len(dataset) == shard.entry["documents"]
        assert dataset.document_indices.tolist() == list(range(len(dataset) + 1))
        for i in range(len(dataset)):
            assert dataset[i].tolist() == docs[first + i].tolist()
        first += len(dataset)
