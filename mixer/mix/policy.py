"""Online mixing policies: per-source training losses in, new weights every K steps out.

A policy is a deterministic function of the loss history it was fed: the same per-source losses
give the same proposals on every rank and after every resume, and its whole state is a small
JSON-serializable dict (`state_dict`). Proposals are applied through the loaders'
`set_weights(weights, at_step)`, which records them as amendments (new phases from that step),
so a resumed run replays the same mix without re-running the policy.

Feed it the global batch's per-source loss sums and row counts (`observe`): under data
parallelism each rank sees only its rows, so all-reduce the two vectors first, or ranks would
propose different weights. `observe_rows` does the bincount for one process.

`ExcessLossPolicy` is DoReMi's domain-weight update (Xie et al. 2023, "DoReMi: Optimizing Data
Mixtures Speeds Up Language Model Pretraining", Algorithm 1), run online on the training loss:

    lambda_s = max(mean loss_s - reference_s, 0)          per-source excess loss (per token)
    alpha'   = alpha * exp(eta * lambda)                   exponentiated gradient step
    alpha    = (1 - c) * alpha' / sum(alpha') + c / k      smoothing towards uniform

with the reference losses given (a reference model's, or 0 to up-weight whatever is hardest).
Then the bounds: each weight at least `min_weight`, changed by at most `max_change` per update,
and at most what the source's `max_repeats` allows for the rest of the run (`MixSampler.
weight_caps`); the result is rounded to multiples of 1/`resolution` (so the sampler's period
stays small), which can move a weight by less than 1/`resolution` against the first two bounds
but never above a `max_repeats` cap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mixer.errors import MixerError


class ExcessLossPolicy:
    """DoReMi-style exponentiated gradient on per-source excess loss, every `every` steps."""

    def __init__(
        self,
        sources: Sequence[str],
        weights: Mapping[str, float],
        every: int,
        reference_losses: Mapping[str, float] | None = None,
        eta: float = 1.0,
        smoothing: float = 1e-3,
        min_weight: float = 0.0,
        max_change: float = 1.0,
        resolution: int = 1000,
    ):
        self.sources = tuple(sources)
        k = len(self.sources)
        if every < 1:
            raise MixerError(f"every: must be a positive number of steps, got {every}")
        if not 0 <= min_weight * k <= 1:
            raise MixerError(f"min_weight: {min_weight} x {k} sources exceeds 1")
        if not 0 < max_change <= 1 or not 0 <= smoothing <= 1 or not eta > 0:
            raise MixerError(
                f"need 0 < max_change <= 1, 0 <= smoothing <= 1 and eta > 0; got "
                f"{max_change}, {smoothing}, {eta}"
            )
        if resolution < k:
            raise MixerError(f"resolution: {resolution} is coarser than 1/{k} sources")
        unknown = set(weights) | set(reference_losses or {})
        unknown -= set(self.sources)
        if unknown:
            raise MixerError(
                f"unknown source {sorted(unknown)[0]!r} (sources: {', '.join(sources)})"
            )
        self.every = every
        self.eta, self.smoothing = float(eta), float(smoothing)
        self.min_weight, self.max_change, self.resolution = min_weight, max_change, resolution
        self.reference = np.array([float((reference_losses or {}).get(s, 0.0)) for s in sources])
        self.weights = np.array([float(weights.get(s, 0.0)) for s in self.sources])
        self.loss_sums = np.zeros(k)
        self.counts = np.zeros(k, dtype=np.int64)
        self.updates = 0
        self.observed_until = -1  # last step observed

    # -- feeding
    def observe(self, step: int, loss_sums: Sequence[float], counts: Sequence[int]) -> None:
        """Add one global step's per-source loss sums and row counts (in `sources` order)."""
        if step <= self.observed_until:
            raise MixerError(f"step {step}: already observed up to step {self.observed_until}")
        sums, n = np.asarray(loss_sums, dtype=np.float64), np.asarray(counts, dtype=np.int64)
        if sums.shape != (len(self.sources),) or n.shape != sums.shape:
            raise MixerError(f"observe: expected {len(self.sources)} sums and counts")
        if not np.isfinite(sums).all():
            raise MixerError(f"step {step}: a per-source loss is not finite ({sums.tolist()})")
        self.loss_sums += sums
        self.counts += n
        self.observed_until = step

    def observe_rows(self, step: int, sources: Any, losses: Any) -> None:
        """`observe` from per-row source ids (`batch["source"]`) and per-row mean losses."""
        ids = np.asarray(sources, dtype=np.int64).ravel()
        loss = np.asarray(losses, dtype=np.float64).ravel()
        k = len(self.sources)
        self.observe(step, np.bincount(ids, loss, minlength=k), np.bincount(ids, minlength=k))

    # -- proposing
    def due(self, step: int) -> bool:
        """Whether a proposal is due after observing `step` (every `every` steps)."""
        return (step + 1) % self.every == 0

    def propose(self, caps: Mapping[str, float] | None = None) -> dict[str, float]:
        """New weights from the losses observed since the last proposal; resets the window.

        `caps` (from `MixSampler.weight_caps(at_block)`) bound each weight so the source's
        `max_repeats` holds for the rest of the run."""
        seen = self.counts > 0
        mean = np.divide(self.loss_sums, self.counts, out=np.zeros_like(self.loss_sums), where=seen)
        excess = np.where(seen, np.maximum(mean - self.reference, 0.0), 0.0)
        k = len(self.sources)
        logits = np.log(np.maximum(self.weights, 1e-300)) + self.eta * excess
        step = np.exp(logits - logits.max())
        target = (1 - self.smoothing) * step / step.sum() + self.smoothing / k
        upper = np.array([float((caps or {}).get(s, 1.0)) for s in self.sources])
        proposed = _bounded(target, self.weights, self.min_weight, self.max_change, upper)
        self.weights = _quantized(proposed, self.resolution, upper)
        self.loss_sums[:] = 0.0
        self.counts[:] = 0
        self.updates += 1
        return {s: float(w) for s, w in zip(self.sources, self.weights, strict=True)}

    # -- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "excess_loss",
            "weights": self.weights.tolist(),
            "loss_sums": self.loss_sums.tolist(),
            "counts": self.counts.tolist(),
            "updates": self.updates,
            "observed_until": self.observed_until,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != "excess_loss" or len(state.get("weights", ())) != len(self.sources):
            raise MixerError(
                f"policy state is not an excess_loss state for {len(self.sources)} sources"
            )
        self.weights = np.array(state["weights"], dtype=np.float64)
        self.loss_sums = np.array(state["loss_sums"], dtype=np.float64)
        self.counts = np.array(state["counts"], dtype=np.int64)
        self.updates = int(state["updates"])
        self.observed_until = int(state["observed_until"])


def _bounded(
    target: np.ndarray, previous: np.ndarray, floor: float, change: float, cap: np.ndarray
) -> np.ndarray:
    """The weights closest to `target` (a common shift, clipped per source) that sum to 1 inside
    [max(floor, previous - change), min(cap, previous + change)]; the change bound is dropped
    when it cannot be met together with the others (a cap that fell below the previous weight)."""
    upper = np.minimum(cap, previous + change)
    lower = np.minimum(np.maximum(floor, previous - change), upper)
    if lower.sum() > 1 or upper.sum() < 1:
        upper = cap.copy()
        lower = np.minimum(floor, upper)
    if upper.sum() < 1 - 1e-12:
        raise MixerError(
            f"max_repeats: the sources' caps {cap.round(6).tolist()} sum to less than 1, so no "
            "mix fits the rest of the run; raise max_repeats or shorten the run"
        )
    lo, hi = -1.0 - target.max(), 1.0 + target.max()
    for _ in range(200):  # bisection on the shift: deterministic, exact to float precision
        mid = (lo + hi) / 2
        if np.clip(target + mid, lower, upper).sum() > 1:
            hi = mid
        else:
            lo = mid
    return np.clip(target + lo, lower, upper)


def _quantized(weights: np.ndarray, resolution: int, cap: np.ndarray) -> np.ndarray:
    """Multiples of 1/resolution summing to exactly 1 by largest remainder, none above its cap."""
    scaled = weights / weights.sum() * resolution
    ceiling = np.floor(cap * resolution + 1e-9)
    counts = np.minimum(np.floor(scaled), ceiling)
    order = sorted(range(len(scaled)), key=lambda s: (counts[s] - scaled[s], s))
    left = resolution - int(counts.sum())
    while left > 0:
        room = [s for s in order if counts[s] < ceiling[s]]
        if not room:
            raise MixerError("max_repeats: the caps leave no room for a whole mix")
        for s in room[:left]:
            counts[s] += 1
        left = resolution - int(counts.sum())
    return counts / resolution
