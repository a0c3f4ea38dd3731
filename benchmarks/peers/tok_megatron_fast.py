"""Megatron-LM's fast preprocessing path, for benchmarks/bench_tokenize_peers.py.

What `tools/preprocess_data_fast.py` does (NVIDIA/Megatron-LM #6514): gigatoken's
`encode_files` reads, decompresses and parses every .jsonl.zst file and encodes the documents
on its own thread pool (all cores), then megatron-core's `IndexedDatasetBuilder` writes one
`.bin/.idx` pair, one `add_document` per document with the EOS appended. Runs inside
benchmarks/.venvs/megatron (megatron-core, torch CPU, gigatoken; no mixer).

Argument: one JSON object {"files", "tokenizer", "eos_id", "out"} (out: the path prefix).
Prints one JSON line: timings, versions and the documents written.
"""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import version

STARTED = time.perf_counter()


def main() -> None:
    cfg = json.loads(sys.argv[1])
    import gigatoken
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    imported = time.perf_counter()
    tokenizer = gigatoken.Tokenizer(cfg["tokenizer"])
    source = gigatoken.JsonlFileSource(cfg["files"], field="text")
    layout = tokenizer.encode_files(source).layout  # all documents of all files, in order
    offsets = np.asarray(layout.offsets.data, dtype=np.int64)
    ids = np.asarray(layout.content.data)
    encoded = time.perf_counter()

    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.int32
    builder = IndexedDatasetBuilder(cfg["out"] + ".bin", dtype=dtype)
    eos = np.array([cfg["eos_id"]], dtype=dtype)
    for start, end in zip(offsets[:-1], offsets[1:], strict=True):
        document = np.concatenate([ids[start:end], eos])
        builder.add_document(document, [len(document)])
    builder.finalize(cfg["out"] + ".idx")
    finished = time.perf_counter()
    result = {
        "import_s": imported - STARTED,
        "encode_files_s": encoded - imported,
        "write_s": finished - encoded,
        "documents": len(offsets) - 1,
        "dtype": np.dtype(dtype).str,
        "gigatoken": version("gigatoken"),
        "megatron_core": version("megatron-core"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
