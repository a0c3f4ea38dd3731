"""Pilot runs and least-squares fits of the planner's scaling laws, and how well data identify them.

Both laws (`mixer.plan`'s SPT law and `mixer.forgetting`'s law) are fit the same way: bounded
trust-region least squares from several random starts, keeping the lowest cost, then a look at
the column-normalized Jacobian's singular values to tell whether the pilot points pin the
constants down at all (refused when singular) or only loosely (warned when ill-conditioned).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from mixer.errors import MixerError


class Conditioning(NamedTuple):
    """SVD of the Jacobian with unit-norm columns (`norms` undoes the scaling)."""

    norms: np.ndarray
    singular_values: np.ndarray
    vt: np.ndarray
    condition: float

    def trading_off(self, labels: list[str], most: int = 3) -> list[str]:
        """The constants with the largest weight in the least-determined direction."""
        return [labels[i] for i in np.argsort(-np.abs(self.vt[-1]))[:most]]

    def normalized_inverse(self) -> np.ndarray:
        """(J^T J)^-1 in the original parametrization, for the covariance of the estimates."""
        sv, vt = self.singular_values, self.vt
        return (vt.T / sv**2) @ vt / np.outer(self.norms, self.norms)


def best_fit(
    residuals: Callable[[np.ndarray], np.ndarray],
    jacobian: Callable[[np.ndarray], np.ndarray],
    start: Callable[[], np.ndarray],
    bounds: tuple[Any, Any],
    restarts: int,
    max_nfev: int,
    failure: str,
) -> Any:
    """The lowest-cost `scipy.optimize.least_squares` result over `restarts` random starts.

    Raises `MixerError(failure)` when no start converges to a finite cost.
    """
    from scipy.optimize import least_squares

    best = None
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(restarts):
            result = least_squares(
                residuals,
                start(),
                jac=jacobian,
                bounds=bounds,
                method="trf",
                x_scale="jac",
                xtol=1e-12,
                ftol=1e-12,
                gtol=1e-12,
                max_nfev=max_nfev,
            )
            if np.isfinite(result.cost) and (best is None or result.cost < best.cost):
                best = result
    if best is None:
        raise MixerError(failure)
    return best


def conditioning(jac: np.ndarray) -> Conditioning:
    """Singular values of `jac` with its columns scaled to unit norm (zero columns left as is)."""
    norms = np.linalg.norm(jac, axis=0)
    norms[norms == 0] = 1.0
    _, sv, vt = np.linalg.svd(jac / norms, full_matrices=False)
    condition = sv[0] / sv[-1] if sv[-1] > 0 else math.inf
    return Conditioning(norms, sv, vt, float(condition))


def read_pilot_rows(
    path: str | os.PathLike, columns: tuple[str, ...]
) -> list[tuple[int, list[float], list[str]]]:
    """(line number, values, cells as written) of each row of a pilot CSV.

    The header names `columns` in any order (other columns are ignored, so run names or notes
    may stay); blank lines and lines starting with '#' are skipped; every value of `columns` must
    be a finite number. Errors name the file and line.
    """
    try:
        with open(path, newline="") as f:
            text = f.read()
    except OSError as e:
        raise MixerError(f"cannot read pilot CSV {path}: {e.strerror}") from None
    header: list[int] | None = None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in next(csv.reader([line]))]
        if header is None:
            missing = [c for c in columns if c not in cells]
            if missing:
                raise MixerError(
                    f"{path}:{number}: the header must name the columns {','.join(columns)} "
                    f"(missing {', '.join(missing)}), got {line.strip()!r}"
                )
            header = [cells.index(c) for c in columns]
            continue
        if len(cells) <= max(header):
            raise MixerError(
                f"{path}:{number}: expected {max(header) + 1} values, got {len(cells)}"
            )
        picked = [cells[i] for i in header]
        values = [_number(path, number, c, t) for c, t in zip(columns, picked, strict=True)]
        rows.append((number, values, picked))
    return rows


def _number(path: str | os.PathLike, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise MixerError(f"{path}:{line}: {column} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise MixerError(f"{path}:{line}: {column} {text!r} is not a finite number")
    return value
