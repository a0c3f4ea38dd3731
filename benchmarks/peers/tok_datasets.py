"""The do-it-yourself tokenization path with HF `datasets`, for benchmarks/bench_tokenize_peers.py.

Runs inside benchmarks/.venvs/datasets (standard library and that venv's packages; no mixer):
load_dataset("json") on the .jsonl.zst files (datasets decompresses .zst itself), a batched
`.map(num_proc=N)` with a `tokenizers.Tokenizer` (ids + EOS per document), then the flat token
file nanoGPT-style: a numpy memmap filled batch by batch, plus the per-document lengths so the
driver can check the ids document by document.

Argument: one JSON object {"files", "tokenizer", "eos_id", "out", "num_proc", "batch_size"}.
Writes OUT.bin (uint16 or uint32 ids) and OUT.lengths.npy; prints one JSON line of timings.
The datasets cache lives in a temporary directory that is removed, and the hub is never asked.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

STARTED = time.perf_counter()
CACHE = tempfile.mkdtemp(prefix="tok-datasets-cache-")
# Before datasets is imported: it reads these once, at import.
os.environ.update(
    HF_HOME=CACHE,
    HF_DATASETS_CACHE=CACHE,
    HF_DATASETS_OFFLINE="1",
    HF_HUB_OFFLINE="1",
)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    try:
        print(json.dumps(tokenize(cfg)), flush=True)
    finally:
        shutil.rmtree(CACHE, ignore_errors=True)


def tokenize(cfg: dict) -> dict:
    import datasets
    import numpy as np
    import tokenizers
    from tokenizers import Tokenizer

    datasets.disable_progress_bars()
    imported = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=cfg["files"], split="train", cache_dir=CACHE)
    loaded = time.perf_counter()

    tokenizer = Tokenizer.from_file(cfg["tokenizer"])
    eos = cfg["eos_id"]

    def encode(batch: dict) -> dict:
        encodings = tokenizer.encode_batch(batch["text"], add_special_tokens=False)
        ids = [e.ids + [eos] for e in encodings]
        return {"ids": ids, "len": [len(x) for x in ids]}

    ds = ds.map(encode, batched=True, num_proc=cfg["num_proc"], remove_columns=ds.column_names)
    mapped = time.perf_counter()

    lengths = np.asarray(ds.with_format("numpy")["len"], dtype=np.int64)
    dtype = np.uint16 if tokenizer.get_vocab_size() <= 1 << 16 else np.uint32
    tokens = np.memmap(cfg["out"] + ".bin", dtype=dtype, mode="w+", shape=(int(lengths.sum()),))
    at = 0
    for batch in ds.select_columns(["ids"]).with_format("numpy").iter(cfg["batch_size"]):
        chunk = np.concatenate(batch["ids"])
        tokens[at : at + len(chunk)] = chunk
        at += len(chunk)
    tokens.flush()
    np.save(cfg["out"] + ".lengths.npy", lengths)
    written = time.perf_counter()
    return {
        "import_s": imported - STARTED,
        "load_s": loaded - imported,
        "map_s": mapped - loaded,
        "write_s": written - mapped,
        "wall_s": written - STARTED,
        "documents": len(lengths),
        "tokens": at,
        "dtype": np.dtype(dtype).name,
        "datasets": datasets.__version__,
        "tokenizers": tokenizers.__version__,
    }


if __name__ == "__main__":
    main()
