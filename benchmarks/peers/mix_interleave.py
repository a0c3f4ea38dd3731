"""Hugging Face datasets: interleave_datasets(probabilities=weights, seed=...) over Arrow datasets.

Runs in benchmarks/.venvs/datasets (no mixer there). `convert` first saves each source as an
Arrow dataset (save_to_disk) with one row per block of seq_len + 1 tokens, exactly mixer's blocks:
done once, timed apart, not part of the build. A sample is one whole row. The build loads them
(memory-mapped), adds a `source` id column (for the mix statistics), shuffles each source afresh
per pass (`shuffle(seed + pass)`) and concatenates enough passes to cover its share of the plan
with room for chance; interleave_datasets then draws the source of every row independently at
random with the given probabilities, and the plan is its first N rows (no source runs out
before that, so stopping_strategy="first_exhausted" never cuts the plan short). The realized
fractions are therefore binomially random around the weights.

    python mix_interleave.py convert CONFIG   # writes the Arrow directories named in CONFIG
    python mix_interleave.py CONFIG           # builds and reads the plan
"""

import math

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


def convert(config: dict) -> None:
    import pyarrow as pa
    from datasets import Dataset

    def write(blocks, directory):
        blocks = np.ascontiguousarray(blocks)
        rows = pa.FixedSizeListArray.from_arrays(pa.array(blocks.ravel()), blocks.shape[1])
        Dataset.from_dict({"tokens": rows}).save_to_disk(directory)

    convert_sources("interleave", config, "arrow", write)


def passes_needed(draws: float, rows: int) -> int:
    """Passes over a source that cover `draws` expected draws with room for chance (10 sigma)."""
    return max(1, math.ceil((draws + 10 * math.sqrt(draws) + 10) / rows))


def bench(config: dict) -> None:
    from datasets import concatenate_datasets, interleave_datasets, load_from_disk

    rss_before = peak_rss_mb()
    plan_samples = config["plan_tokens"] // config["seq_len"]
    weights = [s["weight"] for s in config["sources"]]
    seed = config["seed"]

    def build():
        sources = []
        for s, source in enumerate(config["sources"]):
            rows = load_from_disk(source["arrow"])
            rows = rows.add_column("source", np.full(len(rows), s, dtype=np.int8))
            passes = passes_needed(plan_samples * source["weight"], len(rows))
            sources.append(
                concatenate_datasets(
                    [rows.shuffle(seed + p, keep_in_memory=True) for p in range(passes)]
                )
            )
        mixed = interleave_datasets(
            sources, probabilities=weights, seed=seed, stopping_strategy="first_exhausted"
        )
        return mixed.select(range(plan_samples)).with_format("numpy")

    dataset, build_seconds = timed(build)
    rss_built = peak_rss_mb()
    count = min(config["samples"], len(dataset))
    batch_size = config["batch_size"]
    batches = dataset.iter(batch_size=batch_size)
    rates = {
        "iter(dataset)": sample_rate(iter(dataset), count, lambda row: row["tokens"]),
        f"dataset.iter(batch_size={batch_size})": sample_rate(
            (row for batch in batches for row in batch["tokens"]), count
        ),
    }
    rss_read = memory_after_read_mb()  # before the mix statistics, not the tool's work
    sources = dataset.select_columns(["source"])[:]["source"]
    rss = (rss_before, rss_built, *rss_read)
    emit_run("interleave", config, build_seconds, len(dataset), rss, rates, sources)


if __name__ == "__main__":
    convert_or_bench(convert, bench)
