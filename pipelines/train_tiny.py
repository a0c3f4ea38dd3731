"""Train a tiny GPT on a mix, stop at a checkpoint, resume, and check the resumed run is exact.

    .venv/bin/python pipelines/train_tiny.py                       # synthetic stores, CPU < 1 min
    .venv/bin/python pipelines/train_tiny.py --spec my-mix.toml    # your stores

Without --spec it writes two small synthetic stores and trains on pipelines/example-mix.toml
with its sources pointed at them. The run:

1. trains every step of the mix, saving model, optimizer and loader state at --checkpoint-step;
2. starts again from that checkpoint (fresh model and loader objects) and trains to the end;
3. prints the largest difference between the two runs' losses after the checkpoint: with the
   loader resuming at exactly the right batch (and deterministic kernels), it is 0.

Loss is logged per source (the loader gives each row's source), and position ids restart at
each document start (the loader's `positions`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    import torch
    from torch import nn
    from torch.nn import functional as F
except ImportError:
    raise SystemExit("train_tiny.py needs torch: pip install torch (CPU-only is enough)") from None

from mixer.mix.sampler import MixSampler
from mixer.mix.spec import MixSpec
from mixer.mix.torch import MixedDataLoader, MixedIterableDataset
from mixer.store.writer import write_store

EXAMPLE = Path(__file__).with_name("example-mix.toml")
LOG_EVERY = 25  # steps per line of loss by source
VOCAB = 128
EOS = 0


# ---------------------------------------------------------------------------- data


def synthetic_documents(kind: str, num_tokens: int, seed: int) -> list[np.ndarray]:
    """'counting': progressions a, a+d, a+2d, ... (mod 127); 'cycles': a short random pattern
    repeated (predictable only by attending one period back)."""
    rng = np.random.default_rng(seed)
    docs, total = [], 0
    while total < num_tokens:
        if kind == "counting":
            n = int(rng.integers(20, 200))
            body = (int(rng.integers(0, 127)) + int(rng.integers(1, 4)) * np.arange(n)) % 127 + 1
        else:
            pattern = rng.integers(1, VOCAB, int(rng.integers(2, 7)))
            body = np.resize(pattern, int(rng.integers(30, 150)))
        docs.append(np.append(body, EOS))
        total += len(docs[-1])
    return docs


def synthetic_spec(workdir: Path) -> MixSpec:
    """The example spec with its sources pointed at freshly written synthetic stores."""
    spec = MixSpec.from_toml(EXAMPLE)
    sizes = {"counting": 200_000, "cycles": 50_000}
    sources = []
    for k, source in enumerate(spec.sources):
        root = workdir / source.name
        docs = synthetic_documents(source.name, sizes[source.name], seed=k)
        write_store(root, docs, vocab_size=VOCAB, eos_id=EOS, docs_per_shard=500)
        sources.append(dataclasses.replace(source, store=str(root)))
    return dataclasses.replace(spec, sources=tuple(sources))


# ---------------------------------------------------------------------------- model


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int, seq_len: int, dim: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(seq_len, dim)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.tokens(tokens) + self.positions(positions)
        return self.head(self.norm(self.blocks(x)))


# ---------------------------------------------------------------------------- training


def train(
    sampler: MixSampler,
    batch_size: int,
    device: torch.device,
    workers: int,
    checkpoint: Path,
    checkpoint_step: int,
    resume: bool,
) -> dict[int, float]:
    """Train to the end of the mix (from the checkpoint when `resume`); return loss per step."""
    torch.manual_seed(0)
    vocab = int(sampler.stores[0].vocab_size)
    model = TinyGPT(vocab, sampler.seq_len).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = MixedDataLoader(
        MixedIterableDataset(sampler, batch_size, positions=True), num_workers=workers
    )
    if resume:
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["loader"])
    losses, per_source = {}, {name: [] for name in sampler.source_names}
    first = sampler.num_batches(batch_size)  # first step of the current logging window
    for batch in loader:
        step = batch["step"]
        tokens = batch["tokens"].to(device)
        positions = batch["positions"][:, :-1].to(device)
        logits = model(tokens[:, :-1], positions)
        row_loss = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none").mean(1)
        loss = row_loss.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses[step] = loss.item()
        if not resume and step + 1 == checkpoint_step:  # batches 0..step are consumed
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
            torch.save({**state, "loader": loader.state_dict()}, checkpoint)
            print(f"  after step {step}: checkpoint saved, loader state {loader.state_dict()}")
        for s, value in zip(batch["source"].tolist(), row_loss.tolist(), strict=True):
            per_source[sampler.source_names[s]].append(value)
        first = min(first, step)
        # Windows of LOG_EVERY steps at fixed boundaries, so a resumed run prints the same
        # numbers for the same steps (a window cut by the resume names its shorter range).
        if (step + 1) % LOG_EVERY == 0 or step == sampler.num_batches(batch_size) - 1:
            by_source = "  ".join(
                f"{name} {np.mean(values):.3f}" for name, values in per_source.items() if values
            )
            print(
                f"  step {step:4d}  loss {losses[step]:.3f}  "
                f"by source over steps {first}-{step}: {by_source}"
            )
            per_source = {name: [] for name in sampler.source_names}
            first = step + 1
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", help="mix spec TOML (default: the example on synthetic stores)")
    parser.add_argument("--batch-size", type=int, help="default: the spec's global_batch_size")
    parser.add_argument("--checkpoint-step", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--workdir", help="where stores and the checkpoint go (default: temp)")
    args = parser.parse_args()

    torch.use_deterministic_algorithms(True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(
            1
        )  # a model this small gains nothing; spinning threads stall a busy box
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        spec = MixSpec.from_toml(args.spec) if args.spec else synthetic_spec(workdir / "stores")
        sampler = MixSampler(spec)
        batch_size = args.batch_size or spec.global_batch_size or 16
        steps = sampler.num_batches(batch_size)
        if not 0 < args.checkpoint_step < steps:
            parser.error(f"--checkpoint-step must be inside (0, {steps})")
        print(f"{steps} steps of {batch_size} x {spec.seq_len} tokens on {device}")
        checkpoint = workdir / "checkpoint.pt"
        started = time.perf_counter()
        print("run 1: from scratch")
        full = train(
            sampler, batch_size, device, args.workers, checkpoint, args.checkpoint_step, False
        )
        print(f"run 2: resumed from the step-{args.checkpoint_step} checkpoint")
        resumed = train(
            sampler, batch_size, device, args.workers, checkpoint, args.checkpoint_step, True
        )
        assert sorted(resumed) == list(range(args.checkpoint_step, steps)), "resumed wrong steps"
        diff = max(abs(full[step] - loss) for step, loss in resumed.items())
        print(
            f"resumed steps {args.checkpoint_step}..{steps - 1}: max |loss difference| = {diff:.3g}"
            f"; first loss {full[0]:.3f} (ln vocab = {math.log(sampler.stores[0].vocab_size):.3f})"
            f", last {full[steps - 1]:.3f}; {time.perf_counter() - started:.1f} s"
        )


if __name__ == "__main__":
    main()
