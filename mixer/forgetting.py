"""The forgetting law of finetuning with pretraining data injection, and the smallest injection.

"Scaling Laws for Forgetting during Finetuning with Pretraining Data Injection" (Bethune et al.,
2025, arXiv 2502.06042) predicts the pretraining loss of a model of N parameters after
finetuning on D_ft tokens of which a fraction p is pretraining data injected into the mix:

    L_pt(N, D_ft, p) = L0(N) + A * D_ft^beta / ((1 + B p) N)^alpha

L0(N) is the pretraining loss before finetuning; the second term is the forgetting, growing
with the finetuning data and shrinking with the model's size, which injection multiplies by an
effective (1 + B p). N and D_ft are in billions (`UNIT`): the constants are only meaningful with
that unit.

What we could check, and what differs from the issue's formula. The paper's own equation was
not readable with the tools here. Two summaries of it were: a paper digest
(papers.lunadong.com/paper/11939: "a multiplicative scaling law", "effective parameters for the
pretraining task scale with (1 + Bp)N", coefficients fit with a Huber loss) and a review
(aiwithmike.substack.com, "Finetuning is a Memory Wipe": the baseline is the model's pretraining
loss before finetuning, plus a forgetting fraction with the amount of unique finetuning data in
its numerator and the factors that prevent forgetting in its denominator). They agree with the
structure above. Two differences from `L_pt = L0 + A * D_ft^beta / ((1 + B*p) * N)^alpha` as
the issue writes it:

- L0 is the loss of *each* pretrained model, so it is one constant per distinct model size in
  the pilot runs (rows with `finetune_tokens = 0` measure it directly), not one shared constant.
- One digest calls the law "multiplicative"; if the paper writes the forgetting relative to L0,
  i.e. L0(N) (1 + A D^beta / ...), the two forms differ only by the factor L0(N) folded into A,
  a few percent across the model sizes of a pilot sweep. We fit the additive form.

The fit is least squares (not Huber, so that it has the same standard errors and refusal rules
as the SPT law in `mixer.plan`): bounded, with random restarts, on log A, log B, alpha, beta
and L0 of each size. It refuses data that cannot identify the law: too few points, a single
model size (alpha), a single finetuning size (beta), no injected run (B), a model size whose
L0 cannot be separated from its forgetting, or a singular Jacobian.

The recommendation is the smallest p whose predicted forgetting at the target (N, D_ft) is at
most the tolerance: 1 + B p = (A D^beta / tol)^(1/alpha) / N, in closed form.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mixer.errors import MixerError
from mixer.extras import require
from mixer.fitting import best_fit, conditioning, read_pilot_rows
from mixer.units import human_count, percent

UNIT = 1e9  # N and D_ft are in billions
COLUMNS = ("model_params", "finetune_tokens", "injection_fraction", "pretrain_loss")
REPORT_FRACTIONS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1)
SINGULAR_CONDITION = 1e8
ILL_CONDITION = 1e5

# internal parameter: (lower, upper, start low, start high); L0 of each size follows
_INTERNAL = {
    "log A": (-30.0, 30.0, -5.0, 2.0),
    "log B": (-20.0, 20.0, 0.0, 7.0),
    "alpha": (1e-4, 5.0, 0.1, 1.5),
    "beta": (1e-4, 5.0, 0.1, 1.5),
}
NAMES = ("A", "B", "alpha", "beta")


@dataclass(frozen=True)
class ForgettingLaw:
    """The law's constants; `L0` maps each model size (parameters, raw count) to its loss."""

    A: float
    B: float
    alpha: float
    beta: float
    L0: dict[float, float] = field(default_factory=dict)

    def forgetting(self, model_params, finetune_tokens, fractions) -> np.ndarray:
        """The predicted rise of the pretraining loss, A D^beta / ((1 + B p) N)^alpha."""
        n = np.asarray(model_params, dtype=np.float64) / UNIT
        d = np.asarray(finetune_tokens, dtype=np.float64) / UNIT
        p = np.asarray(fractions, dtype=np.float64)
        with np.errstate(divide="ignore"):
            return self.A * np.power(d, self.beta) / np.power((1 + self.B * p) * n, self.alpha)

    def predict(self, model_params, finetune_tokens, fractions) -> np.ndarray:
        """Pretraining loss after finetuning, for model sizes whose L0 was fitted."""
        sizes = np.atleast_1d(np.asarray(model_params, dtype=np.float64))
        unknown = sorted({float(s) for s in sizes.ravel()} - set(self.L0))
        if unknown:
            raise MixerError(
                f"no pretraining loss L0 is known for a model of {unknown[0]:g} parameters; "
                "the forgetting alone needs none (forgetting())"
            )
        base = np.vectorize(self.L0.__getitem__, otypes=[np.float64])(np.asarray(model_params))
        return base + self.forgetting(model_params, finetune_tokens, fractions)

    def injection_for(self, model_params: float, finetune_tokens: float, tolerance: float) -> float:
        """The smallest p >= 0 whose forgetting is at most `tolerance` (may be >= 1: none is
        small enough)."""
        if not tolerance > 0:
            raise MixerError(f"tolerance={tolerance}: must be positive", params=("tolerance",))
        if float(self.forgetting(model_params, finetune_tokens, 0.0)) <= tolerance:
            return 0.0
        n, d = model_params / UNIT, finetune_tokens / UNIT
        needed = (self.A * d**self.beta / tolerance) ** (1 / self.alpha) / n  # (1 + B p)
        return (needed - 1) / self.B

    def to_dict(self) -> dict[str, Any]:
        return {
            "A": self.A,
            "B": self.B,
            "alpha": self.alpha,
            "beta": self.beta,
            "L0": {f"{k:g}": v for k, v in sorted(self.L0.items())},
        }


@dataclass
class ForgettingFit:
    law: ForgettingLaw
    stderr: dict[str, float]
    rmse: float
    n_points: int
    warnings: list[str]
    covariance: np.ndarray = field(repr=False)  # of log A, log B, alpha, beta (internal)

    def forgetting_stderr(self, model_params, finetune_tokens, fractions) -> np.ndarray:
        """Delta-method standard error of the predicted forgetting."""
        f = self.law.forgetting(model_params, finetune_tokens, fractions)
        g = _forgetting_gradient(self.law, model_params, finetune_tokens, fractions, f)
        var = np.einsum("...i,ij,...j->...", g, self.covariance, g)
        return np.sqrt(np.maximum(var, 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "constants": self.law.to_dict(),
            "stderr": self.stderr,
            "rmse": self.rmse,
            "n_points": self.n_points,
            "warnings": self.warnings,
        }


def _forgetting_gradient(law, model_params, finetune_tokens, fractions, f) -> np.ndarray:
    """d forgetting / d (log A, log B, alpha, beta), stacked on the last axis."""
    n = np.asarray(model_params, dtype=np.float64) / UNIT
    d = np.asarray(finetune_tokens, dtype=np.float64) / UNIT
    p = np.asarray(fractions, dtype=np.float64)
    n, d, p, f = np.broadcast_arrays(n, d, p, f)
    bp = law.B * p
    with np.errstate(divide="ignore", invalid="ignore"):
        log_d = np.where(d > 0, np.log(np.where(d > 0, d, 1.0)), 0.0)
    return np.stack(
        [f, -law.alpha * f * bp / (1 + bp), -f * np.log((1 + bp) * n), f * log_d], axis=-1
    )


def fit_forgetting_law(
    model_params, finetune_tokens, fractions, losses, restarts: int = 16, seed: int = 0
) -> ForgettingFit:
    """Least-squares fit of the forgetting law to pilot runs, refusing unidentifiable data."""
    require("scipy.optimize", "the forgetting-law fit", "plan")
    if restarts < 1:
        raise MixerError(f"restarts must be at least 1, got {restarts}")
    n, d, p, y = _check_points(model_params, finetune_tokens, fractions, losses)
    sizes = np.unique(n)
    size_of = np.searchsorted(sizes, n)
    k = len(sizes)
    params = 4 + k
    lower = np.array([v[0] for v in _INTERNAL.values()] + [-np.inf] * k)
    upper = np.array([v[1] for v in _INTERNAL.values()] + [np.inf] * k)

    def law_of(theta: np.ndarray) -> ForgettingLaw:
        return ForgettingLaw(
            math.exp(theta[0]),
            math.exp(theta[1]),
            float(theta[2]),
            float(theta[3]),
            {float(s): float(v) for s, v in zip(sizes, theta[4:], strict=True)},
        )

    def residuals(theta: np.ndarray) -> np.ndarray:
        law = law_of(theta)
        return theta[4:][size_of] + law.forgetting(n, d, p) - y

    def jacobian(theta: np.ndarray) -> np.ndarray:
        law = law_of(theta)
        f = law.forgetting(n, d, p)
        j = np.zeros((len(y), params))
        j[:, :4] = _forgetting_gradient(law, n, d, p, f)
        j[np.arange(len(y)), 4 + size_of] = 1.0
        return j

    rng = np.random.default_rng(seed)
    best = best_fit(
        residuals,
        jacobian,
        lambda: np.concatenate(
            [
                [rng.uniform(v[2], v[3]) for v in _INTERNAL.values()],
                [y[size_of == i].min() for i in range(k)],
            ]
        ),
        (lower, upper),
        restarts,
        max_nfev=2000,
        failure="the forgetting law fit failed from every starting point",
    )
    theta = best.x
    law = law_of(theta)
    ssr = float(np.sum(best.fun**2))
    shape = conditioning(jacobian(theta))
    condition = shape.condition
    labels = ["A", "B", "alpha", "beta"] + [f"L0({s:g})" for s in sizes]
    if condition > SINGULAR_CONDITION:
        worst = shape.trading_off(labels)
        raise MixerError(
            f"the pilot runs cannot identify the forgetting law: its Jacobian is singular "
            f"(condition number {condition:.3g}); {', '.join(worst)} trade off against each "
            "other. Vary model size, finetuning tokens and injection fraction"
        )
    inv = shape.normalized_inverse()
    covariance = (ssr / max(len(y) - params, 1)) * inv
    internal_se = np.sqrt(np.maximum(np.diag(covariance), 0.0))
    values = [law.A, law.B, law.alpha, law.beta, *theta[4:]]
    scale = [law.A, law.B, 1.0, 1.0] + [1.0] * k  # log-parametrized A, B
    stderr = {label: float(se * s) for label, se, s in zip(labels, internal_se, scale, strict=True)}
    warnings = []
    if condition > ILL_CONDITION:
        warnings.append(
            f"the fit is ill-conditioned (condition number {condition:.3g}): constants trade off;"
            " trust predictions near the pilot runs, not single constants"
        )
    weak = [lab for lab, v in zip(labels, values, strict=True) if stderr[lab] > abs(v)]
    if weak:
        warnings.append(f"weakly identified (stderr > |value|): {', '.join(weak)}")
    at_bound = [labels[i] for i in np.flatnonzero(best.active_mask)]
    if at_bound:
        warnings.append(f"at the edge of the allowed range: {', '.join(at_bound)}")
    return ForgettingFit(law, stderr, math.sqrt(ssr / len(y)), len(y), warnings, covariance[:4, :4])


def _check_points(model_params, finetune_tokens, fractions, losses):
    """Arrays (N, D_ft, p, loss), or a MixerError saying why the law cannot be fit to them."""
    n, d, p, y = (
        np.asarray(a, dtype=np.float64).ravel()
        for a in (model_params, finetune_tokens, fractions, losses)
    )
    if not len(n) == len(d) == len(p) == len(y):
        raise MixerError("model_params, finetune_tokens, fractions and losses differ in length")
    if not (np.all(np.isfinite(n)) and np.all(n > 0)):
        raise MixerError("pilot model_params must be positive numbers")
    if not (np.all(np.isfinite(d)) and np.all(d >= 0)):
        raise MixerError("pilot finetune_tokens must be numbers >= 0")
    if not (np.all(np.isfinite(p)) and np.all((p >= 0) & (p < 1))):
        raise MixerError("pilot injection fractions must lie in [0, 1)")
    if not np.all(np.isfinite(y)):
        raise MixerError("pilot losses must be finite numbers")
    sizes = np.unique(n)
    params = 4 + len(sizes)
    if len(y) <= params:
        raise MixerError(
            f"{len(y)} pilot runs cannot fit the forgetting law's {params} constants (A, B, "
            f"alpha, beta and L0 of {len(sizes)} model size(s)): need at least {params + 1}"
        )
    if len(sizes) < 2:
        raise MixerError(
            "pilot runs of a single model size cannot separate alpha from A: use 2 or more sizes"
        )
    if len(np.unique(d[d > 0])) < 2:
        raise MixerError("pilot runs need 2 or more distinct finetune_tokens > 0 to identify beta")
    if len(np.unique(p[d > 0])) < 2:
        raise MixerError(
            "pilot runs need finetuning runs at 2 or more injection fractions (one may be 0) "
            "to identify B"
        )
    for size in sizes:
        mine = n == size
        if not (np.any(d[mine] == 0) or len(np.unique(d[mine])) >= 2):
            raise MixerError(
                f"the model of {size:g} parameters has a single finetuning size and no row with "
                "finetune_tokens = 0: its L0 cannot be told apart from its forgetting; add its "
                "pretraining loss before finetuning as a row with finetune_tokens 0"
            )
    return n, d, p, y


def load_injection_csv(path: str | os.PathLike):
    """(model_params, finetune_tokens, injection_fraction, pretrain_loss) arrays from a CSV
    whose header names those columns (any order, extra columns ignored, '#' comments)."""
    rows = []
    for number, values, cells in read_pilot_rows(path, COLUMNS):
        if not values[0] > 0 or not values[1] >= 0:
            raise MixerError(
                f"{path}:{number}: model_params must be positive and finetune_tokens >= 0"
            )
        if not 0 <= values[2] < 1:
            raise MixerError(
                f"{path}:{number}: injection_fraction {cells[2]} is not in [0, 1); write 1% as 0.01"
            )
        rows.append(values)
    if not rows:
        raise MixerError(f"{path}: no pilot runs; expected a header {','.join(COLUMNS)} and rows")
    return tuple(np.array(rows, dtype=np.float64).T)


def injection_report(
    fit: ForgettingFit, model_params: float, finetune_tokens: float, tolerance: float
) -> dict[str, Any]:
    """The smallest injection fraction within the tolerance, and the forgetting at a few p."""
    p = fit.law.injection_for(model_params, finetune_tokens, tolerance)
    out: dict[str, Any] = {
        "model_params": model_params,
        "finetune_tokens": finetune_tokens,
        "tolerance": tolerance,
        "fraction": p if p < 1 else None,
        "at_fractions": [
            {
                "fraction": f,
                "forgetting": float(fit.law.forgetting(model_params, finetune_tokens, f)),
                "stderr": float(fit.forgetting_stderr(model_params, finetune_tokens, f)),
            }
            for f in REPORT_FRACTIONS
        ],
        "warnings": [],
    }
    if p >= 1:
        out["warnings"].append(
            f"no injection fraction below 100% keeps the predicted forgetting within "
            f"{tolerance:g}: finetune on fewer tokens or a larger model, or accept more"
        )
    else:
        out["forgetting"] = float(fit.law.forgetting(model_params, finetune_tokens, p))
        out["stderr"] = float(fit.forgetting_stderr(model_params, finetune_tokens, p))
    if model_params in fit.law.L0:
        out["L0"] = fit.law.L0[model_params]
    return out


def format_injection(fit: ForgettingFit, source: str, rec: dict[str, Any]) -> str:
    law = fit.law
    lines = [
        f"forgetting law fit to {fit.n_points} pilot runs from {source}, rmse {fit.rmse:.4g}:",
        "  L_pt = L0(N) + A * D_ft^beta / ((1 + B p) N)^alpha   (N, D_ft in billions)",
    ]
    for name, value in (("A", law.A), ("B", law.B), ("alpha", law.alpha), ("beta", law.beta)):
        lines.append(f"  {name:<10} {value:>11.5g} ± {fit.stderr[name]:.3g}")
    for size, value in sorted(law.L0.items()):
        label = f"L0({human_count(size)})"
        lines.append(f"  {label:<10} {value:>11.5g} ± {fit.stderr[f'L0({size:g})']:.3g}")
    lines += [f"warning: {w}" for w in fit.warnings]
    target = f"{human_count(rec['model_params'])} parameters, {human_count(rec['finetune_tokens'])}"
    lines.append(f"predicted forgetting (L_pt - L0) for {target} finetuning tokens:")
    lines += [
        f"  p = {percent(row['fraction']):>6}  {row['forgetting']:.4f} ± {row['stderr']:.2g}"
        for row in rec["at_fractions"]
    ]
    if rec["fraction"] is not None:
        lines.append(
            f"smallest injection within {rec['tolerance']:g} of L0: {percent(rec['fraction'])} "
            f"(predicted forgetting {rec['forgetting']:.4f} ± {rec['stderr']:.2g})"
        )
    lines += [f"warning: {w}" for w in rec["warnings"]]
    return "\n".join(lines)
