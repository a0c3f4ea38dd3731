"""megatron-core's BlendedMegatronDatasetBuilder over mixer's shards (Megatron IndexedDatasets).

Runs in benchmarks/.venvs/megatron (no mixer there). One GPTDataset per shard path prefix, weights
split over a store's shards by tokens, blended by BlendedDataset. A sample is seq_len + 1 tokens
cut from one prefix's documents concatenated in a shuffled document order (crossing document
boundaries), and the samples are shuffled; BlendedDataset picks the prefix of each global index
greedily (largest deficit first). Its index cache goes to a fresh directory, so every run builds.
"""

import importlib
import os

import numpy as np
from mix_common import emit_run, memory_after_read_mb, peak_rss_mb, read_config, sample_rate, timed


class StubTokenizer:
    """What GPTDataset needs of a tokenizer: vocab size, end-of-document and pad ids (no hub)."""

    def __init__(self, vocab_size: int, eod: int):
        self.vocab_size = vocab_size
        self.eod = self.eos = eod
        self.pad = vocab_size  # an id no document holds
        self.unique_identifiers = {"class": "StubTokenizer", "vocab_size": vocab_size, "eod": eod}


def helpers_compile_seconds() -> float:
    """0 when the wheel ships the compiled C++ helpers; else the time to compile them."""
    try:
        from megatron.core.datasets import helpers_cpp  # noqa: F401

        return 0.0
    except ImportError:
        from megatron.core.datasets.utils import compile_helpers

        return timed(compile_helpers)[1]


def start_single_process_group(work_dir: str) -> None:
    """BlendedDataset asks torch.distributed for the rank when it writes its cache."""
    import torch.distributed as dist

    store = os.path.join(work_dir, "dist-store")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)


def main() -> None:
    config = read_config()
    builder_module = "megatron.core.datasets.blended_megatron_dataset_builder"
    _, import_seconds = timed(lambda: importlib.import_module(builder_module))
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    compile_seconds = helpers_compile_seconds()
    start_single_process_group(config["work_dir"])
    rss_before = peak_rss_mb()

    prefixes, weights, source_of_prefix = [], [], []
    for s, source in enumerate(config["sources"]):
        total = sum(source["shard_tokens"])
        for prefix, tokens in zip(source["prefixes"], source["shard_tokens"], strict=True):
            prefixes.append(prefix)
            weights.append(source["weight"] * tokens / total)
            source_of_prefix.append(s)
    plan_samples = config["plan_tokens"] // config["seq_len"]

    def build():
        dataset_config = GPTDatasetConfig(
            random_seed=config["seed"],
            sequence_length=config["seq_len"],
            blend_per_split=[(prefixes, weights), None, None],
            path_to_cache=os.path.join(config["work_dir"], "megatron-cache"),
            tokenizer=StubTokenizer(config["vocab_size"], config["eos_id"]),
            reset_position_ids=False,
            reset_attention_mask=False,
            eod_mask_loss=False,
            create_attention_mask=False,
        )
        builder = BlendedMegatronDatasetBuilder(
            GPTDataset, [plan_samples, None, None], lambda: True, dataset_config
        )
        return builder.build()[0]

    blended, build_seconds = timed(build)
    rss_built = peak_rss_mb()
    count = min(config["samples"], len(blended))

    def raw_tokens(i: int) -> np.ndarray:
        """The token ids alone, without GPTDataset's tensors, labels and masks."""
        dataset = blended.datasets[blended.dataset_index[i]]
        return dataset._query_document_sample_shuffle_indices(blended.dataset_sample_index[i])[0]

    def with_label(sample: dict) -> np.ndarray:
        return np.append(sample["tokens"].numpy(), sample["labels"][-1].item())

    rates = {
        "dataset[i] (dict of tensors)": sample_rate(
            (blended[i] for i in range(len(blended))), count, with_label
        ),
        "tokens only": sample_rate((raw_tokens(i) for i in range(len(blended))), count),
    }
    rss_read = memory_after_read_mb()  # before the mix statistics, not the tool's work
    sources = np.asarray(source_of_prefix)[np.asarray(blended.dataset_index)]
    rss = (rss_before, rss_built, *rss_read)
    extra = {"import_s": import_seconds, "helpers_compile_s": compile_seconds}
    emit_run("megatron", config, build_seconds, len(blended), rss, rates, sources, **extra)


if __name__ == "__main__":
    main()
