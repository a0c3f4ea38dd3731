"""`mixer plan --injection`: the forgetting law's fit on synthetic pilots, refusals, CSV, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mixer.cli import main
from mixer.errors import MixerError
from mixer.forgetting import (
    ForgettingLaw,
    fit_forgetting_law,
    injection_report,
    load_injection_csv,
)

EXAMPLE_CSV = Path(__file__).resolve().parents[1] / "pipelines" / "injection-pilot-example.csv"
# The constants pipelines/injection-pilot-example.csv was drawn from (its header says so too).
TRUE = ForgettingLaw(
    A=0.05, B=1000.0, alpha=1.0, beta=0.4, L0={1.1e8: 3.4, 3.5e8: 3.05, 1.3e9: 2.75}
)
SIZES = tuple(TRUE.L0)
TOKENS = (1e8, 4e8, 1.6e9)
FRACTIONS = (0.0, 0.001, 0.01, 0.05)


def pilot_runs(noise=0.0, seed=0, sizes=SIZES, tokens=TOKENS, fractions=FRACTIONS, base=True):
    """Every size finetuned on every token count at every fraction, plus its L0 row."""
    rows = [(n, 0.0, 0.0) for n in sizes] if base else []
    rows += [(n, d, p) for n in sizes for d in tokens for p in fractions]
    n, d, p = (np.array(c, dtype=np.float64) for c in zip(*rows, strict=True))
    loss = TRUE.predict(n, d, p) + noise * np.random.default_rng(seed).standard_normal(len(n))
    return n, d, p, loss


@pytest.fixture(scope="module")
def noisy_fit():
    return fit_forgetting_law(*pilot_runs(noise=0.002, seed=5))


def test_fit_recovers_every_constant_from_noise_free_runs():
    fit = fit_forgetting_law(*pilot_runs())
    law = fit.law
    assert (law.A, law.B, law.alpha, law.beta) == pytest.approx(
        (TRUE.A, TRUE.B, TRUE.alpha, TRUE.beta), rel=1e-6
    )
    assert law.L0 == pytest.approx(TRUE.L0, abs=1e-9)
    assert fit.rmse < 1e-9 and not fit.warnings


def test_fit_recovers_the_recommended_injection_from_noisy_runs(noisy_fit):
    want = TRUE.injection_for(1.3e9, 2e9, 0.01)
    got = noisy_fit.law.injection_for(1.3e9, 2e9, 0.01)
    assert want == pytest.approx(0.004075, rel=1e-3)
    assert got == pytest.approx(want, rel=0.1)
    grid = np.array([0.0, 0.001, 0.01, 0.05])
    error = noisy_fit.law.forgetting(1.3e9, 2e9, grid) - TRUE.forgetting(1.3e9, 2e9, grid)
    se = noisy_fit.forgetting_stderr(1.3e9, 2e9, grid)
    assert np.all(np.abs(error) < 4 * se + 1e-4)  # the stderr covers the extrapolated target


def test_gradient_matches_finite_differences():
    from mixer.forgetting import _forgetting_gradient

    n, d, p = 3.5e8, 8e8, 0.01
    theta = np.log([TRUE.A, TRUE.B]).tolist() + [TRUE.alpha, TRUE.beta]

    def forgetting(t):
        law = ForgettingLaw(np.exp(t[0]), np.exp(t[1]), t[2], t[3])
        return float(law.forgetting(n, d, p))

    g = _forgetting_gradient(TRUE, n, d, p, TRUE.forgetting(n, d, p))
    for i in range(4):
        step = np.zeros(4)
        step[i] = 1e-6
        numeric = (forgetting(theta + step) - forgetting(theta - step)) / 2e-6
        assert g[i] == pytest.approx(numeric, rel=1e-5)


def test_injection_is_zero_when_no_forgetting_exceeds_the_tolerance_and_none_when_too_much():
    assert TRUE.injection_for(1.3e9, 2e9, 0.06) == 0.0
    assert TRUE.forgetting(1.3e9, 2e9, TRUE.injection_for(1.3e9, 2e9, 0.01)) == pytest.approx(0.01)
    fit = fit_forgetting_law(*pilot_runs())
    rec = injection_report(fit, 1.1e8, 1e12, 1e-4)
    assert rec["fraction"] is None and "no injection fraction below 100%" in rec["warnings"][0]
    with pytest.raises(MixerError, match="^tolerance=0.0: must be positive"):
        TRUE.injection_for(1.3e9, 2e9, 0.0)


@pytest.mark.parametrize(
    "runs, message",
    [
        (dict(sizes=SIZES[:1]), "single model size cannot separate alpha"),
        (dict(tokens=TOKENS[:1]), "2 or more distinct finetune_tokens"),
        (dict(fractions=(0.0,)), "2 or more injection fractions"),
        (dict(sizes=SIZES[:2], tokens=TOKENS[:1], fractions=(0.0, 0.01)), "cannot fit"),
    ],
)
def test_fit_refuses_runs_that_cannot_identify_the_law(runs, message):
    with pytest.raises(MixerError, match=message):
        fit_forgetting_law(*pilot_runs(**runs))


def test_fit_refuses_a_size_whose_l0_cannot_be_told_from_its_forgetting():
    n, d, p, y = pilot_runs(base=False)
    keep = ~((n == SIZES[0]) & (d != TOKENS[0]))  # smallest model: one finetuning size, no L0
    with pytest.raises(MixerError, match="its L0 cannot be told apart from its forgetting"):
        fit_forgetting_law(n[keep], d[keep], p[keep], y[keep])


def test_fit_refuses_a_singular_jacobian():
    """Passes every count check, yet A, alpha and B trade off: the small model is only seen
    without injection and the large one only with p = 1%."""
    n, d, p, _ = pilot_runs(sizes=SIZES[:2], fractions=(0.0, 0.01))
    keep = (d == 0) | ((n == SIZES[0]) & (p == 0)) | ((n == SIZES[1]) & (p > 0))
    n, d, p = n[keep], d[keep], p[keep]
    with pytest.raises(MixerError, match="Jacobian is singular.*A|alpha|B"):
        fit_forgetting_law(n, d, p, TRUE.predict(n, d, p))


def test_shipped_example_follows_its_documented_law():
    n, d, p, y = load_injection_csv(EXAMPLE_CSV)
    residual = y - TRUE.predict(n, d, p)
    assert len(y) == 39 and np.std(residual) == pytest.approx(0.003, rel=0.35)
    assert EXAMPLE_CSV.read_text().count("0.41%") == 1


@pytest.mark.parametrize(
    "content, message",
    [
        ("model_params,finetune_tokens,pretrain_loss\n1,2,3\n", "missing injection_fraction"),
        (
            "model_params,finetune_tokens,injection_fraction,pretrain_loss\n1e8,1e8,1.5,3\n",
            ":2: injection_fraction 1.5 is not in",
        ),
        (
            "model_params,finetune_tokens,injection_fraction,pretrain_loss\n1e8,x,0,3\n",
            ":2: finetune_tokens 'x' is not a number",
        ),
        ("# only comments\n", "no pilot runs"),
    ],
)
def test_load_injection_csv_names_the_file_and_line_of_a_bad_row(tmp_path, content, message):
    path = tmp_path / "pilot.csv"
    path.write_text(content)
    with pytest.raises(MixerError, match=message):
        load_injection_csv(path)


def test_cli_prints_the_fit_and_the_smallest_injection(capsys):
    args = ["plan", "--injection", "--pilot", str(EXAMPLE_CSV), "--total-tokens", "2e9"]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "smallest injection within 0.01 of L0: 0.4" in out and "L0(1.3B)" in out
    with pytest.raises(SystemExit):
        main([*args, "--json", "--model-params", "3.5e8", "--tolerance", "0.02"])
    rec = json.loads(capsys.readouterr().out)["recommendation"]
    assert rec["model_params"] == 3.5e8 and rec["L0"] == pytest.approx(3.05, abs=0.005)
    assert 0 < rec["fraction"] < 0.05
    with pytest.raises(SystemExit) as done:
        main([*args, "--domain-tokens", "1e9"])
    assert done.value.code == 1 and "--injection takes" in capsys.readouterr().err
