"""datatrove's DocumentTokenizer on the local executor, for benchmarks/bench_tokenize_peers.py.

Runs inside benchmarks/.venvs/datatrove (standard library and that venv's packages; no mixer):
JsonlReader (zstd inferred from the .zst suffix) -> DocumentTokenizer(shuffle_documents=False)
under LocalPipelineExecutor(tasks, workers). The tokenizer is a local tokenizer.json path, which
datatrove loads with Tokenizer.from_file; the hub is switched off in case anything asks it.

Argument: one JSON object {"data", "tokenizer", "eos_token", "out", "tasks", "workers",
"logs"}. Prints one JSON line: timings plus, per task, its .ds token file, its .ds.index
(uint64 document ends) and the input files it read in order, so that the driver can put the
documents back in corpus order and check the ids.
"""

from __future__ import annotations

import json
import os
import sys
import time
from importlib.metadata import version

STARTED = time.perf_counter()
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
GLOB = "*.jsonl.zst"


def main() -> None:
    cfg = json.loads(sys.argv[1])
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.io import get_datafolder
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    imported = time.perf_counter()
    tokenizer = DocumentTokenizer(
        output_folder=cfg["out"],
        tokenizer_name_or_path=cfg["tokenizer"],
        eos_token=cfg["eos_token"],
        shuffle_documents=False,
    )
    executor = LocalPipelineExecutor(
        pipeline=[JsonlReader(cfg["data"], glob_pattern=GLOB), tokenizer],
        tasks=cfg["tasks"],
        workers=cfg["workers"],
        logging_dir=cfg["logs"],
    )
    executor.run()
    finished = time.perf_counter()

    folder = get_datafolder(cfg["data"])
    outputs = []
    for rank in range(cfg["tasks"]):
        ds = os.path.join(cfg["out"], f"{rank:05d}_unshuffled.ds")
        files = folder.get_shard(rank, cfg["tasks"], glob_pattern=GLOB)
        outputs.append({"ds": ds, "index": ds + ".index", "files": files})
    result = {
        "import_s": imported - STARTED,
        "run_s": finished - imported,
        "wall_s": finished - STARTED,
        "token_bytes": tokenizer.token_size,
        "datatrove": version("datatrove"),
        "tokenizers": version("tokenizers"),
        "outputs": outputs,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
