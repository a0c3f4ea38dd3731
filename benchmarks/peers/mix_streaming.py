"""MosaicML Streaming: StreamingDataset over one local Stream per source, proportion = weight.

Runs in benchmarks/.venvs/streaming (no mixer there). Streaming reads its own MDS format, so
`convert` first writes each source as MDS records of seq_len + 1 tokens, exactly mixer's blocks
(record k = tokens [k seq_len, k seq_len + seq_len + 1) of the store's stream, the usual
llm-foundry "concat tokens" layout): done once, timed apart, not part of the build. A sample is
one whole record, so the block length is fixed at conversion time. Per epoch, Streaming takes
`proportion * epoch_size` records of each stream (whole copies of a small stream, plus a random
subset for the remainder) and shuffles them (py1e, the default).

    python mix_streaming.py convert CONFIG   # writes the MDS directories named in CONFIG
    python mix_streaming.py CONFIG           # builds and reads the plan
"""

import glob
import importlib.util
import itertools
import os
import sys

import numpy as np
from mix_common import (
    convert_or_bench,
    convert_sources,
    emit_run,
    memory_after_read_mb,
    peak_rss_mb,
    sample_rate,
    timed,
)


def let_torchvision_import_without_its_ops() -> None:
    """`import streaming` imports torchvision (for streaming.vision). PyPI's torchvision 0.28.0
    is built against CUDA torch, so with the CPU torch 2.13.0 its C extension fails to load
    (OSError: libc10_cuda.so: cannot open shared object file) and its import then dies with
    "RuntimeError: operator torchvision::nms does not exist". Declaring the two ops it registers
    fake kernels for lets it import; nothing here runs a torchvision op."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        return
    try:
        for library in glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so")):
            torch.ops.load_library(library)
        return
    except OSError:
        pass
    schemas = torch.library.Library("torchvision", "DEF")
    schemas.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    schemas.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    sys.modules[__name__].torchvision_schemas = schemas  # a Library unregisters when collected


def convert(config: dict) -> None:
    from streaming import MDSWriter

    def write(blocks, directory):
        column = f"ndarray:{blocks.dtype.name}:{blocks.shape[1]}"
        with MDSWriter(out=directory, columns={"tokens": column}, size_limit="64mb") as out:
            for block in blocks:
                out.write({"tokens": block})

    convert_sources("streaming", config, "mds", write)


def bench(config: dict) -> None:
    from streaming import Stream, StreamingDataset
    from streaming.base.batching import generate_work
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    rss_before = peak_rss_mb()
    plan_samples = config["plan_tokens"] // config["seq_len"]

    def make_dataset():
        streams = [Stream(local=s["mds"], proportion=s["weight"]) for s in config["sources"]]
        return StreamingDataset(
            streams=streams,
            epoch_size=plan_samples,
            shuffle=True,
            shuffle_seed=config["seed"],
            batch_size=config["batch_size"],
        )

    dataset, init_seconds = timed(make_dataset)
    samples = iter(dataset)
    first, first_seconds = timed(lambda: next(samples))  # the epoch's sample order is made here
    rss_built = peak_rss_mb()
    count = min(config["samples"], len(dataset))
    rates = {
        "iter(dataset)": sample_rate(
            itertools.chain([first], samples), count, lambda s: s["tokens"]
        )
    }
    samples.close()
    rss_read = memory_after_read_mb()  # before the mix statistics, not the tool's work

    # The plan's sample order again (as iteration made it), to see how it splits over streams.
    world = dataset._parallel_worker_world
    ids = generate_work(dataset.batching_method, dataset, world, 0, 0)[0, 0, 0].ravel()
    ids = ids[ids >= 0]
    streams = np.searchsorted(dataset.sample_offset_per_stream, ids, side="right") - 1
    rss = (rss_before, rss_built, *rss_read)
    build = init_seconds + first_seconds
    extra = {"init_s": init_seconds, "first_sample_s": first_seconds}
    emit_run("streaming", config, build, len(dataset), rss, rates, streams, **extra)


if __name__ == "__main__":
    let_torchvision_import_without_its_ops()
    convert_or_bench(convert, bench)
