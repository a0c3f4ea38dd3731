"""A small GPT trained on the mix (MixedDataLoader) next to the same model fed synthetic tensors
already on the device: tokens/s of both, and the fraction of step time spent waiting for data.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_train_gpu.py            # GPU, ~100M params
    PYTHONPATH=. .venv/bin/python benchmarks/bench_train_gpu.py --device cpu --tiny --steps 5

Two random stores (web 90%, proofpile 10%, ~1000-token documents) are written to a temp dir.
The mixed run reads them through ``MixedDataLoader(MixedIterableDataset(..., documents=True,
int32=True), num_workers=4, pin_memory=True)`` (pin_memory on CUDA only) and attends within
documents: ``flash_attn_varlen_func`` on ``cu_seqlens``/``max_seqlen`` when flash-attn is
installed, else SDPA with a block-diagonal causal mask from the document ids. The synthetic
run trains the same model (same initial weights, same attention path, with cu_seqlens of the
first mixed batch) on one fixed batch created on the device: its tokens/s is the ceiling.

"data wait" is the time from the end of one step to the moment the next batch is on the device
(``next(loader)`` plus the host-to-device copy), over the whole step time, after --warmup steps;
on CUDA each step ends with a synchronize so the step time is the GPU's. Goal (issue #12): data
wait < 1% of step time at batch 8 x 2048 on one GPU. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from bench_sampler import VOCAB, mix_spec, write_random_store  # noqa: E402

from mixer.mix.sampler import MixSampler  # noqa: E402
from mixer.mix.torch import MixedDataLoader, MixedIterableDataset  # noqa: E402

try:  # optional: varlen attention straight on cu_seqlens
    from flash_attn import flash_attn_varlen_func
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_varlen_func = None

CONFIGS = {  # (layers, width, heads, seq_len, batch)
    "gpt-100m": (12, 768, 12, 2048, 8),  # GPT-2 small's shape
    "tiny": (2, 64, 2, 128, 2),
}


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor, docs: dict) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, c // self.heads).unbind(2)
        if docs["flash"]:
            flat = [z.reshape(b * t, self.heads, c // self.heads) for z in (q, k, v)]
            cu, longest = docs["cu_seqlens"], docs["max_seqlen"]
            y = flash_attn_varlen_func(*flat, cu, cu, longest, longest, causal=True)
            y = y.reshape(b, t, c)
        else:
            q, k, v = (z.transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=docs["mask"])
            y = y.transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, layers: int, width: int, heads: int, seq_len: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(seq_len, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied, as GPT-2: 124M parameters at gpt-100m
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, x: torch.Tensor, docs: dict) -> torch.Tensor:
        h = self.embed(x) + self.pos(docs["positions"])
        for block in self.blocks:
            h = block(h, docs)
        return self.head(self.ln(h))


def documents(cu: torch.Tensor, b: int, t: int, flash: bool) -> dict:
    """What attention needs from cu_seqlens (on the device): positions, and the mask or cu."""
    device = cu.device
    starts = torch.zeros(b * t + 1, dtype=torch.int64, device=device)
    starts[cu.long()] = 1
    doc = torch.cumsum(starts[:-1], 0)  # document id of each flattened position
    offsets = torch.arange(b * t, device=device)
    begin = torch.zeros(b * t, dtype=torch.int64, device=device)
    begin[cu[:-1].long()] = cu[:-1].long()
    positions = (offsets - torch.cummax(begin, 0).values).view(b, t)
    out: dict = {"positions": positions, "flash": flash}
    if flash:
        out["cu_seqlens"], out["max_seqlen"] = cu, int(torch.diff(cu).max())
    else:
        ids = doc.view(b, t)
        causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()
        out["mask"] = ((ids[:, :, None] == ids[:, None, :]) & causal)[:, None]
    return out


def run(model, opt, batches, steps: int, warmup: int, device: torch.device, flash: bool) -> dict:
    """Train `steps` steps on `batches` (an iterator of (tokens, cu_seqlens)); time after warmup."""
    cuda = device.type == "cuda"
    wait = total = 0.0
    tokens = 0
    end = time.perf_counter()
    for step in range(steps + warmup):
        tok, cu = next(batches)
        tok = tok.to(device, non_blocking=True)
        cu = cu.to(device, non_blocking=True)
        if cuda:
            torch.cuda.synchronize()
        got = time.perf_counter()
        x, y = tok[:, :-1], tok[:, 1:].long()
        b, t = x.shape
        docs = documents(cu, b, t, flash)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = model(x.long(), docs)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        if step >= warmup:
            wait += got - end
            total += now - end
            tokens += b * t
        end = now
    return {
        "tokens_per_s": round(tokens / total, 1),
        "data_wait_fraction": round(wait / total, 5),
        "step_ms": round(1000 * total / steps, 3),
        "final_loss": round(loss.item(), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model at 2 x 128 (CPU)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=None, help="default: min(20, steps)")
    parser.add_argument("--num-workers", type=int, default=4)
    args = parser.parse_args()
    device = torch.device(args.device)
    warmup = min(20, args.steps) if args.warmup is None else args.warmup
    layers, width, heads, seq_len, batch = CONFIGS["tiny" if args.tiny else "gpt-100m"]
    flash = flash_attn_varlen_func is not None and device.type == "cuda"
    steps_total = args.steps + warmup + 2
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokens = max(4 * steps_total * batch * seq_len, 2_000_000)
        write_random_store(root / "web", int(tokens * 0.9), seed=1)
        write_random_store(root / "proofpile", int(tokens * 0.1), seed=2)
        sampler = MixSampler(mix_spec(root, seq_len, steps_total * batch * seq_len, (0.9, 0.1)))
        dataset = MixedIterableDataset(sampler, batch, documents=True, int32=True)
        loader = MixedDataLoader(
            dataset, num_workers=args.num_workers, pin_memory=device.type == "cuda"
        )

        def make():
            torch.manual_seed(0)
            model = GPT(VOCAB, layers, width, heads, seq_len).to(device)
            return model, torch.optim.AdamW(
                model.parameters(), lr=3e-4, fused=device.type == "cuda"
            )

        model, opt = make()
        params = sum(p.numel() for p in model.parameters())
        mixed_batches = ((b["tokens"], b["cu_seqlens"]) for b in loader)
        mixed = run(model, opt, mixed_batches, args.steps, warmup, device, flash)
        first = next(iter(MixedDataLoader(MixedIterableDataset(sampler, batch, documents=True))))
        fixed_tok = torch.randint(0, VOCAB, (batch, seq_len + 1), device=device, dtype=torch.int32)
        fixed_cu = first["cu_seqlens"].to(device)

        def synthetic():
            while True:
                yield fixed_tok, fixed_cu

        model, opt = make()
        ceiling = run(model, opt, synthetic(), args.steps, warmup, device, flash)
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "config": {
                    "params": params,
                    "layers": layers,
                    "width": width,
                    "batch": f"{batch} x {seq_len}",
                    "steps": args.steps,
                    "warmup": warmup,
                    "num_workers": args.num_workers,
                    "attention": "flash_attn_varlen" if flash else "sdpa + document mask",
                },
                "mixed": mixed,
                "synthetic": ceiling,
                "mixed_vs_synthetic": round(mixed["tokens_per_s"] / ceiling["tokens_per_s"], 4),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
