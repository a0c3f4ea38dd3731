"""`mixer plan`: repeat arithmetic, the SPT law's fit on synthetic pilots, refusals, CSV, plot.

Tolerances for noisy fits come from a Monte Carlo run of 40 noise draws at sd 0.003 on the
design below: the recommended fraction stayed within 12% of the true best, its regret under the
true law below 1.2e-3 nats, and the prediction error over the pilot range below 0.016; the
prediction stderr was calibrated (z-scores with sd 0.8 to 1.15). These tests use sd 0.002.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mixer.errors import MixerError
from mixer.plan import (
    CONSTANTS,
    PAPER_FRACTIONS,
    SPTLaw,
    fit_spt_law,
    format_repeat_table,
    load_pilot_csv,
    max_fraction,
    plot_prediction,
    recommend_fraction,
    repeat_table,
    run_plan,
)

EXAMPLE_CSV = Path(__file__).resolve().parents[1] / "pipelines" / "pilot-example.csv"
# The constants pipelines/pilot-example.csv was drawn from (its header says so too).
TRUE = SPTLaw(
    A_train=1.2,
    b_train_g=-0.08,
    b_train_s=-0.35,
    b_gap_g=-0.1,
    b_gap_s=4.0,
    a1=0.4,
    a2=0.5,
    a3=5.0,
    k0=1.6,
    k1=0.08,
    k2=0.002,
    k3=0.5,
)
PILOT_TOKENS = tuple(b * 1e9 for b in (1, 2, 4, 8, 16, 32))
TARGET = 200e9
RANGE = np.geomspace(0.001, 0.1, 40)  # the pilot fractions' span


def pilot_points(noise=0.0, seed=0, fractions=PAPER_FRACTIONS, tokens=PILOT_TOKENS):
    """Synthetic pilot runs: every fraction evaluated at every checkpoint, plus Gaussian noise."""
    t, d = (a.ravel() for a in np.meshgrid(np.asarray(tokens), np.asarray(fractions)))
    loss = TRUE.predict(t, d) + noise * np.random.default_rng(seed).standard_normal(t.size)
    return t, d, loss


def write_csv(path: Path, points) -> Path:
    rows = [f"{t:.0f},{d},{y:.6f}" for t, d, y in zip(*points, strict=True)]
    path.write_text("tokens,fraction,loss\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def exact_fit():
    return fit_spt_law(*pilot_points())


@pytest.fixture(scope="module")
def noisy_fit():
    return fit_spt_law(*pilot_points(noise=0.002, seed=3))


# --------------------------------------------------------------------------------------------
# Repeat arithmetic


def test_repeat_table_gives_tokens_drawn_epochs_and_first_repeat():
    rows = repeat_table(300_000_000, 200_000_000_000, [0.001, 0.02, 0.1], None)
    assert [r["domain_tokens_drawn"] for r in rows] == [200_000_000, 4_000_000_000, 20e9]
    assert [r["tokens_until_first_repeat"] for r in rows] == [
        300_000_000_000,
        15_000_000_000,
        3_000_000_000,
    ]
    assert [r["epochs"] for r in rows] == pytest.approx([2 / 3, 40 / 3, 200 / 3], rel=1e-14)
    assert not any(r["over_cap"] for r in rows)


def test_over_cap_means_more_epochs_than_max_repeats_not_equal():
    rows = repeat_table(1_000_000_000, 100_000_000_000, [0.05, 0.1, 0.11], max_repeats=10)
    assert [r["over_cap"] for r in rows] == [False, False, True]


def test_max_fraction_is_cap_times_domain_over_budget_and_at_most_one():
    assert max_fraction(300_000_000, 200_000_000_000, 10) == pytest.approx(0.015, rel=1e-14)
    assert max_fraction(300_000_000, 1_000_000_000, 1000) == 1.0
    (row,) = repeat_table(300_000_000, 200_000_000_000, [0.015], 10)
    assert row["epochs"] == pytest.approx(10) and not row["over_cap"]


def test_format_repeat_table_warns_once_with_the_fractions_over_the_cap_and_the_largest_allowed():
    rows = repeat_table(300_000_000, 200_000_000_000, list(PAPER_FRACTIONS), 10)
    text = format_repeat_table(rows, 10)
    warnings = [line for line in text.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "2%, 5%, 10%" in warnings[0] and "largest fraction under the cap is 1.5%" in warnings[0]
    assert "no repeat" in text.splitlines()[1]  # 0.1% draws 2/3 of an epoch
    assert "warning" not in format_repeat_table(repeat_table(300e6, 200e9, [0.1], None), None)


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 10**9, [0.01], None), "^domain_tokens=0: must be positive"),
        ((10**6, -1, [0.01], None), "^total_tokens=-1: must be positive"),
        ((10**6, 10**9, [0.01], 0), "^max_repeats=0: must be positive"),
        ((10**6, 10**9, [2.0], None), "write 2% as 0.02"),
        ((10**6, 10**9, [0.0], None), "not in (0, 1]"),
    ],
)
def test_repeat_table_rejects_bad_counts_and_fractions(args, message):
    with pytest.raises(MixerError, match=message.replace("(", r"\(").replace(")", r"\)")):
        repeat_table(*args)


# --------------------------------------------------------------------------------------------
# The law and its fit


def test_predict_broadcasts_and_gradient_matches_finite_differences():
    t, d = np.array([[2e9], [50e9]]), np.array([0.001, 0.03, 0.2])
    assert TRUE.predict(t, d).shape == (2, 3)
    grad = TRUE.gradient(t, d)
    values = TRUE.to_dict()
    for i, name in enumerate(CONSTANTS):
        step = 1e-6 * max(1.0, abs(values[name]))
        up = SPTLaw(**{**values, name: values[name] + step}).predict(t, d).ravel()
        down = SPTLaw(**{**values, name: values[name] - step}).predict(t, d).ravel()
        assert grad[:, i] == pytest.approx((up - down) / (2 * step), rel=1e-5, abs=1e-9), name


def test_fit_recovers_every_constant_from_noise_free_points(exact_fit):
    """Exact data have an exact minimum at the true constants (the Jacobian has full rank)."""
    values = exact_fit.law.to_dict()
    for name, true in TRUE.to_dict().items():
        assert values[name] == pytest.approx(true, rel=1e-6), name
    assert exact_fit.rmse < 1e-10 and exact_fit.n_points == 30
    assert recommend_fraction(exact_fit.law, TARGET) == pytest.approx(
        recommend_fraction(TRUE, TARGET), rel=1e-9
    )


def test_fit_recovers_predictions_and_the_best_fraction_from_noisy_points(noisy_fit):
    for tokens in PILOT_TOKENS:
        error = noisy_fit.law.predict(tokens, RANGE) - TRUE.predict(tokens, RANGE)
        assert np.max(np.abs(error)) < 0.01, tokens
    best, _ = recommend_fraction(TRUE, TARGET)
    fitted, _ = recommend_fraction(noisy_fit.law, TARGET)
    assert fitted == pytest.approx(best, rel=0.15)
    regret = TRUE.predict(TARGET, fitted) - TRUE.predict(TARGET, best)
    assert regret < 1.5e-3


def test_single_constants_are_loose_while_predictions_near_the_pilots_are_tight(noisy_fit):
    values = noisy_fit.law.to_dict()
    relative = {name: noisy_fit.stderr[name] / abs(values[name]) for name in CONSTANTS}
    assert max(relative.values()) > 0.3
    assert any(w.startswith("weakly identified") for w in noisy_fit.warnings)
    assert np.max(noisy_fit.predict_stderr(8e9, RANGE)) < 0.005


def test_prediction_stderr_covers_the_error_of_the_extrapolated_target(noisy_fit):
    fractions = np.array(PAPER_FRACTIONS)
    error = np.abs(noisy_fit.law.predict(TARGET, fractions) - TRUE.predict(TARGET, fractions))
    stderr = noisy_fit.predict_stderr(TARGET, fractions)
    assert np.all(error < 3 * stderr)
    assert np.all(stderr > noisy_fit.predict_stderr(16e9, fractions))  # wider away from data


def test_restarts_from_different_seeds_reach_the_same_fit(noisy_fit):
    other = fit_spt_law(*pilot_points(noise=0.002, seed=3), seed=1)
    for tokens in (1e9, 32e9, TARGET):
        assert other.law.predict(tokens, RANGE) == pytest.approx(
            noisy_fit.law.predict(tokens, RANGE), abs=1e-6
        )


def test_recommend_fraction_is_the_grid_minimum_or_the_best_of_the_given_fractions():
    best, loss = recommend_fraction(TRUE, TARGET)
    assert 0.025 < best < 0.035
    assert loss <= TRUE.predict(TARGET, np.geomspace(1e-4, 0.5, 5000)).min() + 1e-6
    assert recommend_fraction(TRUE, TARGET, [0.001, 0.1]) == (
        0.001,
        pytest.approx(TRUE.predict(TARGET, 0.001)),
    )
    with pytest.raises(MixerError, match="non-empty list of values in"):
        recommend_fraction(TRUE, TARGET, [0.5, 1.5])


def test_fit_refuses_fewer_points_than_constants_plus_one():
    t, d, y = pilot_points()
    with pytest.raises(MixerError, match="12 pilot points cannot fit .* need at least 13"):
        fit_spt_law(t[:12], d[:12], y[:12])


def test_fit_refuses_fewer_than_four_fractions():
    with pytest.raises(MixerError, match="3 distinct fraction.*4 or more fractions"):
        fit_spt_law(*pilot_points(fractions=(0.01, 0.05, 0.1)))


def test_fit_refuses_a_single_token_count_per_fraction():
    fractions = np.geomspace(0.001, 0.2, 16)
    tokens = np.geomspace(1e9, 32e9, 16)
    with pytest.raises(MixerError, match="single token count per fraction"):
        fit_spt_law(tokens, fractions, TRUE.predict(tokens, fractions))


def test_fit_refuses_points_whose_jacobian_is_singular():
    """Two fractions with checkpoints and two with one point each pass the counting checks,
    but leave C_train(d) and the gap term trading off exactly."""
    runs = PILOT_TOKENS
    t = np.array(runs + runs + (8e9, 8e9))
    d = np.array([0.01] * 6 + [0.05] * 6 + [0.001, 0.1])
    with pytest.raises(MixerError, match="Jacobian is singular"):
        fit_spt_law(t, d, TRUE.predict(t, d), restarts=4)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t, d, y: (-t, d, y), "token counts must be positive"),
        (lambda t, d, y: (t, d * 20, y), r"fractions must lie in \(0, 1\)"),
        (lambda t, d, y: (t, d, np.where(d == 0.01, np.nan, y)), "losses must be finite"),
        (lambda t, d, y: (t, d, y[:-1]), "differ in length"),
    ],
)
def test_fit_rejects_invalid_points(change, message):
    with pytest.raises(MixerError, match=message):
        fit_spt_law(*change(*pilot_points()))


# --------------------------------------------------------------------------------------------
# Pilot CSV


def test_load_pilot_csv_reads_columns_in_any_order_and_skips_comments_and_extras(tmp_path):
    path = tmp_path / "pilot.csv"
    path.write_text(
        "# pilots for the proofpile domain\n"
        "run,loss,fraction,tokens\n"
        "a,2.5,0.01,1e9\n"
        "\n"
        "b, 2.25 , 0.05 , 2000000000\r\n"
    )
    tokens, fractions, losses = load_pilot_csv(path)
    assert tokens.tolist() == [1e9, 2e9]
    assert fractions.tolist() == [0.01, 0.05]
    assert losses.tolist() == [2.5, 2.25]


@pytest.mark.parametrize(
    "content, message",
    [
        ("tokens,fraction\n1e9,0.01\n", "pilot.csv:1: the header must name .*missing loss"),
        ("tokens,fraction,loss\n1e9,abc,2.5\n", "pilot.csv:2: fraction 'abc' is not a number"),
        ("tokens,fraction,loss\n1e9,0.01,2.5\n2e9,0.01\n", "pilot.csv:3: expected 3 values"),
        ("tokens,fraction,loss\n1e9,2,2.5\n", r"pilot.csv:2: fraction 2 is not in \(0, 1\)"),
        ("tokens,fraction,loss\n0,0.01,2.5\n", "pilot.csv:2: tokens 0 must be positive"),
        ("tokens,fraction,loss\n1e9,0.01,inf\n", "pilot.csv:2: loss 'inf' is not a finite"),
        ("# only a comment\ntokens,fraction,loss\n", "pilot.csv: no pilot points"),
    ],
)
def test_load_pilot_csv_names_the_file_and_line_of_a_bad_row(tmp_path, content, message):
    path = tmp_path / "pilot.csv"
    path.write_text(content)
    with pytest.raises(MixerError, match=message):
        load_pilot_csv(path)


def test_load_pilot_csv_reports_a_missing_file(tmp_path):
    with pytest.raises(MixerError, match="cannot read pilot CSV .*nope.csv"):
        load_pilot_csv(tmp_path / "nope.csv")


def test_shipped_pilot_example_follows_its_documented_law():
    tokens, fractions, losses = load_pilot_csv(EXAMPLE_CSV)
    assert len(losses) == 30 and set(fractions) == set(PAPER_FRACTIONS)
    residuals = losses - TRUE.predict(tokens, fractions)
    assert 0.002 < residuals.std() < 0.004 and np.abs(residuals).max() < 0.012


# --------------------------------------------------------------------------------------------
# run_plan and the plot


def test_run_plan_returns_the_table_fit_and_a_recommendation_under_the_cap():
    out = run_plan(
        300_000_000, 200_000_000_000, None, 10, str(EXAMPLE_CSV), None, None, as_json=False
    )
    assert "over cap" in out and "largest fraction under the cap is 1.5%" in out
    assert "recommended fraction: 3." in out  # the law's best at 200B is 3.07%
    assert "under the repeat cap (fractions up to 1.5%): 1.5%" in out
    assert "the target is 6.25x the largest pilot run" in out
    assert all(f"  {name} " in out for name in CONSTANTS)


def test_run_plan_json_holds_table_fit_and_recommendation():
    report = json.loads(
        run_plan(
            300_000_000, 200_000_000_000, [0.01, 0.02], None, str(EXAMPLE_CSV), 32e9, None, True
        )
    )
    assert [row["fraction"] for row in report["table"]] == [0.01, 0.02]
    assert set(report["fit"]["constants"]) == set(CONSTANTS)
    rec = report["recommendation"]
    assert rec["target_tokens"] == 32e9 and not rec["warnings"]  # no extrapolation in T
    assert [row["fraction"] for row in rec["at_fractions"]] == [0.01, 0.02]
    assert abs(rec["fraction"] - recommend_fraction(TRUE, 32e9)[0]) < 0.01


def test_run_plan_without_pilots_returns_only_the_table():
    out = run_plan(300_000_000, 200_000_000_000, None, None, None, None, None, False)
    assert "epochs" in out and "SPT law" not in out


@pytest.mark.parametrize(
    "args, message",
    [
        ((None, 10**9, None, None, None, None, None, False), "nothing to plan"),
        ((10**6, 10**9, None, None, None, None, "x.png", False), "^plot= needs pilot_csv="),
        ((10**6, 0, None, None, None, None, None, False), "^total_tokens=0: must be positive"),
    ],
)
def test_run_plan_refuses_incomplete_requests(args, message):
    with pytest.raises(MixerError, match=message):
        run_plan(*args)


def test_plot_prediction_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plan.png"
    plot_prediction(TRUE, TARGET, out, points=pilot_points())
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_prediction_without_matplotlib_is_a_mixer_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(MixerError, match="^plotting the fit needs matplotlib"):
        plot_prediction(TRUE, TARGET, tmp_path / "plan.png")
