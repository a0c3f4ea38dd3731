"""What `mixer plan` does: how often a domain repeats at a mix fraction, and which fraction to use.

Arithmetic first. A domain of D tokens mixed at fraction f into a budget of N tokens is drawn
f N tokens, i.e. f N / D epochs; its first repeat starts after D / f tokens of the stream; and
a cap of R epochs allows fractions up to R D / N.

Then the overfitting scaling law of specialized pretraining (SPT, "The Finetuner's Fallacy",
arXiv 2603.16177, section 5.1), for the domain's test loss after T tokens at fraction d:

    L(T, d)  = A_train T^b_train(d) + C_train(d)  +  A_gap(d) T^b_gap(d)
    b_x(d)   = d b_x,s + (1 - d) b_x,g                  x in {train, gap}
    A_gap(d) = a1 d^a2 exp(a3 d)
    C(d)     = k0 - k1 log(d + k2) - k3 d

Twelve constants, which the paper does not publish: they are fit to the user's pilot runs.
T is in billions of tokens (`TOKEN_UNIT`). The unit matters: because b_train depends on d,
rescaling T changes the law's family, so the constants are only meaningful with this unit.

The fit is a bounded least-squares fit with random restarts, on internal parameters chosen so
that every constraint is a simple bound and the scales are even: log A_train, log a1, log k1,
log k2 (positive), b_train_g < 0, b_gap_g < 0 < b_gap_s as bounds, and
b_train_s = b_train_g - exp(v), which makes b_train_s < b_train_g < 0, i.e.
|b_train,g| < |b_train,s|: a coupling that bounds alone cannot express. k1 > 0 (more domain
data lowers the loss floor) and k2 > 0 (the log stays finite as d -> 0) are our additions.

What the data identify: C(d) alone has four constants, so four or more distinct fractions are
needed, and loss must be measured at several T per fraction for the exponents. Exact data give
back every constant, but with eval noise of a few thousandths of a nat single constants are
loose (relative stderr 20% to over 100%, worst for a1, a2, a3, k3) while the predicted loss,
and so the recommended fraction, stays well determined near the pilot runs. So the
fit reports each constant's standard error and the standard error of predictions
(`FitResult.predict_stderr`), refuses data whose Jacobian is singular, and warns when the target
budget lies far beyond the pilot runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from mixer.errors import MixerError
from mixer.extras import matplotlib_figure, require
from mixer.fitting import best_fit, conditioning, read_pilot_rows
from mixer.units import human_count as human_tokens
from mixer.units import percent

logger = logging.getLogger(__name__)

TOKEN_UNIT = 1e9  # the law's T is in billions of tokens
PAPER_FRACTIONS = (0.001, 0.01, 0.02, 0.05, 0.1)
SEARCH_FRACTIONS = np.unique(np.concatenate([np.geomspace(1e-5, 0.5, 4001), PAPER_FRACTIONS]))
SINGULAR_CONDITION = 1e8  # of the column-scaled Jacobian: J^T J is singular in float64 beyond
ILL_CONDITION = 1e5  # beyond this, warn that constants trade off against each other
EXTRAPOLATION_WARNING = 2.0  # warn when the target exceeds the largest pilot T by this factor

# The fit's internal parameters, in the order of the law's constants: (lower bound, upper bound)
# and the range random restarts start from. k0 starts near the data instead.
_INTERNAL = {
    "log A_train": (-14.0, 14.0, -2.3, 2.3),
    "b_train_g": (-3.0, -1e-6, -0.5, -0.01),
    "log(b_train_g - b_train_s)": (-14.0, 2.3, -4.6, 0.7),
    "b_gap_g": (-3.0, -1e-6, -1.0, -0.01),
    "b_gap_s": (1e-6, 10.0, 0.1, 5.0),
    "log a1": (-18.0, 9.0, -6.9, 0.0),
    "a2": (-5.0, 5.0, 0.0, 2.0),
    "a3": (-100.0, 100.0, -10.0, 10.0),
    "k0": (-np.inf, np.inf, 0.0, 0.0),
    "log k1": (-18.0, 7.0, -4.6, -0.7),
    "log k2": (-18.0, 2.3, -9.2, -2.3),
    "k3": (-np.inf, np.inf, -2.0, 2.0),
}
_LOWER, _UPPER, _START_LOW, _START_HIGH = np.array(list(_INTERNAL.values())).T


# --------------------------------------------------------------------------------------------
# Repeat arithmetic


def repeat_table(
    domain_tokens: int, total_tokens: int, fractions: list[float], max_repeats: float | None
) -> list[dict]:
    """Per fraction: domain tokens drawn, epochs, stream tokens before the first repeat, and
    whether the epochs exceed the cap."""
    _check_counts(domain_tokens, total_tokens, max_repeats)
    rows = []
    for f in fractions:
        _check_fraction(f)
        epochs = f * total_tokens / domain_tokens
        rows.append(
            {
                "fraction": f,
                "domain_tokens_drawn": round(f * total_tokens),
                "epochs": epochs,
                "tokens_until_first_repeat": round(domain_tokens / f),
                "over_cap": max_repeats is not None and epochs > max_repeats,
            }
        )
    return rows


def max_fraction(domain_tokens: int, total_tokens: int, max_repeats: float) -> float:
    """The largest fraction that keeps the domain within `max_repeats` epochs (at most 1)."""
    _check_counts(domain_tokens, total_tokens, max_repeats)
    return min(1.0, max_repeats * domain_tokens / total_tokens)


def format_repeat_table(rows: list[dict], max_repeats: float | None) -> str:
    """The table for a terminal, then one warning line when fractions exceed the cap."""
    lines = [f"{'fraction':>9}  {'domain tokens':>13}  {'epochs':>9}  {'first repeat after':>18}"]
    for row in rows:
        first = human_tokens(row["tokens_until_first_repeat"]) if row["epochs"] > 1 else "no repeat"
        lines.append(
            f"{percent(row['fraction']):>9}  {human_tokens(row['domain_tokens_drawn']):>13}  "
            f"{row['epochs']:>9.4g}  {first:>18}" + ("  over cap" if row["over_cap"] else "")
        )
    over = [row for row in rows if row["over_cap"]]
    if over:
        largest = max_repeats * over[0]["fraction"] / over[0]["epochs"]
        lines.append(
            f"warning: {', '.join(percent(r['fraction']) for r in over)} would repeat the domain "
            f"more than the cap of {max_repeats:g} times; the largest fraction under the cap "
            f"is {percent(largest)}"
        )
    return "\n".join(lines)


def _check_counts(domain_tokens: int, total_tokens: int, max_repeats: float | None) -> None:
    if domain_tokens <= 0:
        raise MixerError(
            f"domain_tokens={domain_tokens}: must be positive", params=("domain_tokens",)
        )
    if total_tokens <= 0:
        raise MixerError(f"total_tokens={total_tokens}: must be positive", params=("total_tokens",))
    if max_repeats is not None and not max_repeats > 0:
        raise MixerError(f"max_repeats={max_repeats}: must be positive", params=("max_repeats",))


def _check_fraction(f: float) -> None:
    if not 0 < f <= 1:
        raise MixerError(f"fraction {f} is not in (0, 1]; write 2% as 0.02")


# --------------------------------------------------------------------------------------------
# The law


@dataclass(frozen=True)
class SPTLaw:
    """The SPT overfitting law with its twelve constants (T in units of `TOKEN_UNIT`)."""

    A_train: float
    b_train_g: float
    b_train_s: float
    b_gap_g: float
    b_gap_s: float
    a1: float
    a2: float
    a3: float
    k0: float
    k1: float
    k2: float
    k3: float

    def _terms(self, tokens, fractions) -> tuple[np.ndarray, ...]:
        d = np.asarray(fractions, dtype=np.float64)
        log_t = np.log(np.asarray(tokens, dtype=np.float64) / TOKEN_UNIT)
        log_t, d = np.broadcast_arrays(log_t, d)
        train = self.A_train * np.exp((d * self.b_train_s + (1 - d) * self.b_train_g) * log_t)
        b_gap = d * self.b_gap_s + (1 - d) * self.b_gap_g
        gap = np.exp(math.log(self.a1) + self.a2 * np.log(d) + self.a3 * d + b_gap * log_t)
        return d, log_t, train, gap

    def predict(self, tokens, fractions) -> np.ndarray:
        """Domain test loss after `tokens` (raw counts) at `fractions`; numpy broadcasting."""
        d, _, train, gap = self._terms(tokens, fractions)
        return train + gap + self.k0 - self.k1 * np.log(d + self.k2) - self.k3 * d

    def gradient(self, tokens, fractions) -> np.ndarray:
        """d predict / d constant, one column per name in `CONSTANTS` (shape (n, 12))."""
        d, log_t, train, gap = self._terms(tokens, fractions)
        d, log_t, train, gap = (np.ravel(a) for a in (d, log_t, train, gap))
        return np.stack(
            [
                train / self.A_train,
                train * log_t * (1 - d),
                train * log_t * d,
                gap * log_t * (1 - d),
                gap * log_t * d,
                gap / self.a1,
                gap * np.log(d),
                gap * d,
                np.ones_like(d),
                -np.log(d + self.k2),
                -self.k1 / (d + self.k2),
                -d,
            ],
            axis=1,
        )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


CONSTANTS = tuple(f.name for f in fields(SPTLaw))


def _to_law(theta: np.ndarray) -> SPTLaw:
    """Constants from the internal parameters (see the module docstring)."""
    t = [float(x) for x in theta]
    return SPTLaw(
        math.exp(t[0]),
        t[1],
        t[1] - math.exp(t[2]),
        t[3],
        t[4],
        math.exp(t[5]),
        t[6],
        t[7],
        t[8],
        math.exp(t[9]),
        math.exp(t[10]),
        t[11],
    )


def _constants_per_theta(theta: np.ndarray) -> np.ndarray:
    """d constant / d internal parameter (12 x 12), for the chain rule and the covariance."""
    g = np.eye(12)
    for i in (0, 5, 9, 10):  # log-parametrized
        g[i, i] = math.exp(theta[i])
    g[2, 2] = -math.exp(theta[2])  # b_train_s = b_train_g - exp(v)
    g[2, 1] = 1.0
    return g


@dataclass
class FitResult:
    """A fitted law with what the data say about it.

    `covariance` is that of the constants (order of `CONSTANTS`), s^2 (J^T J)^-1 mapped from the
    internal parameters; `stderr` is the square root of its diagonal.
    """

    law: SPTLaw
    stderr: dict[str, float]
    rmse: float
    n_points: int
    warnings: list[str]
    covariance: np.ndarray = field(repr=False)

    def predict_stderr(self, tokens, fractions) -> np.ndarray:
        """Standard error of `law.predict` from the constants' covariance (delta method)."""
        shape = np.broadcast_shapes(np.shape(tokens), np.shape(fractions))
        g = self.law.gradient(tokens, fractions)
        var = np.einsum("ni,ij,nj->n", g, self.covariance, g)
        return np.sqrt(np.maximum(var, 0.0)).reshape(shape)

    def to_dict(self) -> dict[str, Any]:
        return {
            "constants": self.law.to_dict(),
            "stderr": self.stderr,
            "rmse": self.rmse,
            "n_points": self.n_points,
            "warnings": self.warnings,
        }


def fit_spt_law(tokens, fractions, losses, restarts: int = 16, seed: int = 0) -> FitResult:
    """Least-squares fit of the SPT law to pilot points, refusing data that cannot identify it.

    Restarts draw random starting points (from `seed`) and keep the lowest residual; the
    standard errors come from the Jacobian at that optimum.
    """
    require("scipy.optimize", "the scaling-law fit", "plan")

    if restarts < 1:
        raise MixerError(f"restarts must be at least 1, got {restarts}")
    t, d, y = _check_points(tokens, fractions, losses)
    n, p = len(y), len(CONSTANTS)

    def residuals(theta: np.ndarray) -> np.ndarray:
        return _to_law(theta).predict(t, d) - y

    def jacobian(theta: np.ndarray) -> np.ndarray:
        return _to_law(theta).gradient(t, d) @ _constants_per_theta(theta)

    rng = np.random.default_rng(seed)
    low, high = _START_LOW.copy(), _START_HIGH.copy()
    low[8], high[8] = y.min() - 1.0, y.max() + 1.0
    best = best_fit(
        residuals,
        jacobian,
        lambda: rng.uniform(low, high),
        (_LOWER, _UPPER),
        restarts,
        max_nfev=1000,
        failure="the SPT law fit failed from every starting point; check the losses",
    )
    theta = best.x
    law = _to_law(theta)
    ssr = float(np.sum(best.fun**2))
    shape = conditioning(jacobian(theta))
    condition = shape.condition
    if condition > SINGULAR_CONDITION:
        worst = shape.trading_off(list(CONSTANTS))
        raise MixerError(
            f"the pilot points cannot identify the SPT law: its Jacobian is singular (condition "
            f"number {condition:.3g}); {', '.join(worst)} trade off against each other. Measure "
            f"each fraction at several token counts, at 4 or more fractions"
        )
    inv = shape.normalized_inverse()
    g = _constants_per_theta(theta)
    covariance = (ssr / (n - p)) * (g @ inv @ g.T)
    stderr = dict(
        zip(CONSTANTS, np.sqrt(np.maximum(np.diag(covariance), 0.0)).tolist(), strict=True)
    )
    warnings = []
    if condition > ILL_CONDITION:
        warnings.append(
            f"the fit is ill-conditioned (condition number {condition:.3g}): constants trade off"
            " against each other; trust predictions near the pilot runs, not single constants"
        )
    values = law.to_dict()
    weak = [name for name in CONSTANTS if stderr[name] > abs(values[name])]
    if weak:
        warnings.append(f"weakly identified (stderr > |value|): {', '.join(weak)}")
    at_bound = [CONSTANTS[i] for i in np.flatnonzero(best.active_mask)]
    if at_bound:
        warnings.append(
            f"at the edge of the allowed range, stderr not meaningful: {', '.join(at_bound)}"
        )
    return FitResult(
        law=law,
        stderr=stderr,
        rmse=math.sqrt(ssr / n),
        n_points=n,
        warnings=warnings,
        covariance=covariance,
    )


def _check_points(tokens, fractions, losses) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrays of valid points, or a MixerError saying why the law cannot be fit to them."""
    t, d, y = (np.asarray(a, dtype=np.float64).ravel() for a in (tokens, fractions, losses))
    if not len(t) == len(d) == len(y):
        raise MixerError(
            f"tokens, fractions and losses differ in length: {len(t)}, {len(d)}, {len(y)}"
        )
    if not (np.all(np.isfinite(t)) and np.all(t > 0)):
        raise MixerError("pilot token counts must be positive numbers")
    if not (np.all(np.isfinite(d)) and np.all((d > 0) & (d < 1))):
        raise MixerError("pilot fractions must lie in (0, 1)")
    if not np.all(np.isfinite(y)):
        raise MixerError("pilot losses must be finite numbers")
    p = len(CONSTANTS)
    if len(y) <= p:
        raise MixerError(
            f"{len(y)} pilot points cannot fit the SPT law's {p} constants: need at least {p + 1}"
        )
    distinct = np.unique(d)
    if len(distinct) < 4:
        raise MixerError(
            f"pilot runs at {len(distinct)} distinct fraction(s) cannot identify the SPT law: "
            "C_train(d) alone has 4 constants, so measure at 4 or more fractions"
        )
    repeated = sum(len(np.unique(t[d == f])) >= 2 for f in distinct)
    if repeated < 2:
        raise MixerError(
            "the pilot points have a single token count per fraction, which cannot separate "
            "the law's T-exponents: evaluate at least two pilot runs at several checkpoints"
        )
    return t, d, y


PILOT_COLUMNS = ("tokens", "fraction", "loss")


def load_pilot_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, fractions, losses) from a CSV whose header names `tokens,fraction,loss` (in any
    order; other columns are ignored, so run names or notes may stay). Blank lines and lines
    starting with '#' are skipped."""
    rows = []
    for number, (tokens, fraction, loss), cells in read_pilot_rows(path, PILOT_COLUMNS):
        if not tokens > 0:
            raise MixerError(f"{path}:{number}: tokens {cells[0]} must be positive")
        if not 0 < fraction < 1:
            raise MixerError(
                f"{path}:{number}: fraction {cells[1]} is not in (0, 1); write 2% as 0.02"
            )
        rows.append((tokens, fraction, loss))
    if not rows:
        raise MixerError(
            f"{path}: no pilot points; expected a header tokens,fraction,loss and rows"
        )
    tokens, fractions, losses = np.array(rows, dtype=np.float64).T
    return tokens, fractions, losses


# --------------------------------------------------------------------------------------------
# Using the law


def recommend_fraction(law: SPTLaw, target_tokens: float, fractions=None) -> tuple[float, float]:
    """(fraction, predicted loss) minimizing the domain loss at `target_tokens`, searched over
    `fractions` or a fine log grid over [1e-5, 0.5] that includes the paper's fractions."""
    if not target_tokens > 0:
        raise MixerError(f"target tokens must be positive, got {target_tokens}")
    grid = SEARCH_FRACTIONS if fractions is None else np.asarray(fractions, dtype=np.float64)
    if grid.size == 0 or not np.all((grid > 0) & (grid < 1)):
        raise MixerError("fractions to search must be a non-empty list of values in (0, 1)")
    with np.errstate(over="ignore", invalid="ignore"):
        loss = law.predict(target_tokens, grid)
    if not np.any(np.isfinite(loss)):
        raise MixerError("the law predicts no finite loss at any fraction for this budget")
    best = int(np.nanargmin(np.where(np.isfinite(loss), loss, np.nan)))
    return float(grid[best]), float(loss[best])


def plot_prediction(
    law: SPTLaw,
    target_tokens: float,
    out_png: str | os.PathLike,
    points: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> None:
    """Predicted loss vs fraction at the target budget (bold) and at each pilot budget, with the
    pilot points, so the fit and the extrapolation can be judged by eye."""
    Figure = matplotlib_figure("plotting the fit", extra="plan")
    best, loss = recommend_fraction(law, target_tokens)
    lo, hi = best / 30, min(0.5, best * 10)
    seen = [law.predict(target_tokens, lo), loss]
    if points is not None:
        tokens, fractions, losses = (np.asarray(a, dtype=np.float64) for a in points)
        lo, hi = min(lo, fractions.min() / 2), min(0.5, max(hi, fractions.max() * 2))
        seen += [losses.min(), losses.max()]
    grid = np.geomspace(lo, hi, 400)
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    if points is not None:
        for i, budget in enumerate(np.unique(tokens)):
            mine = tokens == budget
            ax.plot(grid, law.predict(budget, grid), color=f"C{i % 10}", linewidth=1, alpha=0.6)
            ax.scatter(
                fractions[mine],
                losses[mine],
                color=f"C{i % 10}",
                s=18,
                label=f"pilot, {human_tokens(budget)} tokens",
            )
    ax.plot(
        grid,
        law.predict(target_tokens, grid),
        color="black",
        linewidth=2.5,
        label=f"predicted, {human_tokens(target_tokens)} tokens",
    )
    ax.axvline(best, color="black", linestyle="--", linewidth=1)
    ax.annotate(
        f"best {percent(best)}: {loss:.4g}",
        (best, loss),
        textcoords="offset points",
        xytext=(-6, -14),
        ha="right",
    )
    # Past the optimum the gap term grows like a power of T: clip it, keep the data in view.
    pad = 0.1 * (max(seen) - min(seen)) or 0.1
    ax.set_ylim(min(seen) - pad, max(seen) + pad)
    ax.set_xscale("log")
    ax.set_xlabel("domain fraction of the mix")
    ax.set_ylabel("domain test loss")
    ax.legend(loc="lower left", fontsize="small")
    fig.savefig(out_png, dpi=100)


def recommendation(
    fit: FitResult,
    points: tuple[np.ndarray, np.ndarray, np.ndarray],
    target_tokens: float,
    fractions: list[float],
    cap: float | None,
) -> dict[str, Any]:
    """The best fraction at the target (and the best under a repeat cap), predicted losses at
    `fractions`, and warnings where the law is extrapolating."""
    best, loss = recommend_fraction(fit.law, target_tokens)
    out: dict[str, Any] = {
        "target_tokens": target_tokens,
        "fraction": best,
        "loss": loss,
        "stderr": float(fit.predict_stderr(target_tokens, best)),
        "at_fractions": [
            {
                "fraction": f,
                "loss": float(fit.law.predict(target_tokens, f)),
                "stderr": float(fit.predict_stderr(target_tokens, f)),
            }
            for f in fractions
        ],
        "warnings": [],
    }
    if cap is not None and best > cap:
        allowed = np.append(SEARCH_FRACTIONS[SEARCH_FRACTIONS < cap], cap)
        capped, capped_loss = recommend_fraction(fit.law, target_tokens, allowed)
        out["under_cap"] = {"max_fraction": cap, "fraction": capped, "loss": capped_loss}
    tokens, pilot_fractions, _ = points
    stretch = target_tokens / tokens.max()
    if stretch > EXTRAPOLATION_WARNING:
        out["warnings"].append(
            f"the target is {stretch:.3g}x the largest pilot run ({human_tokens(tokens.max())} "
            "tokens): the law extrapolates, so weigh the stderr"
        )
    if best in (SEARCH_FRACTIONS[0], SEARCH_FRACTIONS[-1]):
        out["warnings"].append(
            f"the predicted loss is lowest at the edge of the searched fractions ({percent(best)})"
            ": the law has no optimum inside (0, 0.5]"
        )
    elif not pilot_fractions.min() <= best <= pilot_fractions.max():
        out["warnings"].append(
            f"the best fraction {percent(best)} lies outside the pilot fractions "
            f"[{percent(pilot_fractions.min())}, {percent(pilot_fractions.max())}]"
        )
    return out


def format_fit(fit: FitResult, source: str, rec: dict[str, Any]) -> str:
    """Constants with standard errors, predicted losses at the target, the recommendation."""
    values = fit.law.to_dict()
    lines = [f"SPT law fit to {fit.n_points} pilot points from {source}, rmse {fit.rmse:.4g}:"]
    lines += [f"  {name:<10} {values[name]:>11.5g} ± {fit.stderr[name]:.3g}" for name in CONSTANTS]
    lines += [f"warning: {w}" for w in fit.warnings]
    lines.append(f"predicted domain loss at {human_tokens(rec['target_tokens'])} tokens:")
    lines += [
        f"  {percent(row['fraction']):>8}  {row['loss']:.4f} ± {row['stderr']:.2g}"
        for row in rec["at_fractions"]
    ]
    lines.append(
        f"recommended fraction: {percent(rec['fraction'])} "
        f"(predicted loss {rec['loss']:.4f} ± {rec['stderr']:.2g})"
    )
    if "under_cap" in rec:
        capped = rec["under_cap"]
        lines.append(
            f"under the repeat cap (fractions up to {percent(capped['max_fraction'])}): "
            f"{percent(capped['fraction'])} (predicted loss {capped['loss']:.4f})"
        )
    lines += [f"warning: {w}" for w in rec["warnings"]]
    return "\n".join(lines)


def run_injection_plan(
    pilot_csv: str | None,
    finetune_tokens: float,
    model_params: float | None,
    tolerance: float,
    as_json: bool,
) -> str:
    """`mixer plan --injection`: fit the forgetting law (`mixer.forgetting`) to pilot runs and
    return (for the CLI to print) the smallest injection fraction keeping the pretraining loss
    within `tolerance`."""
    from mixer.forgetting import (
        fit_forgetting_law,
        format_injection,
        injection_report,
        load_injection_csv,
    )

    if pilot_csv is None:
        raise MixerError(
            "pilot_csv= is needed: a CSV with columns model_params,finetune_tokens,"
            "injection_fraction,pretrain_loss",
            params=("pilot_csv",),
        )
    if not finetune_tokens > 0:
        raise MixerError(
            f"finetune_tokens={finetune_tokens:g}: must be positive", params=("finetune_tokens",)
        )
    points = load_injection_csv(pilot_csv)
    fit = fit_forgetting_law(*points)
    size = float(points[0].max()) if model_params is None else float(model_params)
    if not size > 0:
        raise MixerError(f"model_params={size:g}: must be positive", params=("model_params",))
    rec = injection_report(fit, size, float(finetune_tokens), tolerance)
    if as_json:
        return json.dumps({"fit": fit.to_dict(), "recommendation": rec}, indent=2)
    return format_injection(fit, pilot_csv, rec)


def run_plan(
    domain_tokens: int | None,
    total_tokens: int,
    fractions: list[float] | None,
    max_repeats: float | None,
    pilot_csv: str | None,
    target_tokens: float | None,
    plot: str | None,
    as_json: bool,
) -> str:
    """`mixer plan`: the repeat table (with --domain-tokens) and the law's fit and recommended
    fraction (with --pilot), returned as text or JSON for the CLI to print; status is logged."""
    if domain_tokens is None and pilot_csv is None:
        raise MixerError(
            "nothing to plan: give domain_tokens= for the repeat table, pilot_csv= for the "
            "scaling-law fit, or both",
            params=("domain_tokens", "pilot_csv"),
        )
    if plot and pilot_csv is None:
        raise MixerError(
            "plot= needs pilot_csv=: it draws the law fitted to the pilot runs",
            params=("plot", "pilot_csv"),
        )
    if total_tokens <= 0:
        raise MixerError(f"total_tokens={total_tokens}: must be positive", params=("total_tokens",))
    fractions = list(fractions) if fractions else list(PAPER_FRACTIONS)
    for f in fractions:
        _check_fraction(f)
    report: dict[str, Any] = {"total_tokens": total_tokens}
    sections = []
    cap = None
    if domain_tokens is not None:
        rows = repeat_table(domain_tokens, total_tokens, fractions, max_repeats)
        report.update(domain_tokens=domain_tokens, max_repeats=max_repeats, table=rows)
        if max_repeats is not None:
            cap = report["max_fraction"] = max_fraction(domain_tokens, total_tokens, max_repeats)
        sections.append(
            f"domain of {human_tokens(domain_tokens)} tokens in a budget of "
            f"{human_tokens(total_tokens)} tokens:\n" + format_repeat_table(rows, max_repeats)
        )
    if pilot_csv is not None:
        target = float(total_tokens if target_tokens is None else target_tokens)
        points = load_pilot_csv(pilot_csv)
        fit = fit_spt_law(*points)
        rec = recommendation(fit, points, target, fractions, cap)
        report.update(fit=fit.to_dict(), recommendation=rec)
        sections.append(format_fit(fit, pilot_csv, rec))
        if plot:
            plot_prediction(fit.law, target, plot, points)
            logger.info("wrote %s", plot)
    return json.dumps(report, indent=2) if as_json else "\n\n".join(sections)
