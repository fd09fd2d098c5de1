"""The report's training panels: which metric rows make which panel."""

import pytest

from igpo.report.plots import training_curves


def test_the_estimator_diagnostics_get_their_panels_and_absent_ones_none():
    rows = [
        {
            "step": s,
            "turns": 2.0 + s,
            "turns_min": 1,
            "turns_max": 3 + s,
            "ig_scale": 1.5,
            "gamma_effective": 0.9,
            "ig_gate_ema": 0.05 * s,
            "ig_gate_on": s > 1,
            "ig_raw_mean": 0.01,
            "ig_raw_std": 0.02,
            "ig_rollout_share": 0.5,
            "ig_raw_positive_share": 0.6,
        }
        for s in range(4)
    ]
    titles = [t for t, uri in training_curves(rows) if uri.startswith("data:image/png;base64,")]
    assert titles == [
        "Turns per episode (mean, min, max)",
        "Raw IG of the step's tool turns (mean ± std)",
        "IG shares: rollouts with IG, IG > 0",
        "IG scale (scaled_separate) and effective γ",
        "IG warm-up gate: F1 EMA and switch",
    ]
    assert training_curves([{"step": 0, "kl": 0.1}])[0][0] == "KL to the reference"


def test_ig_per_turn_panel_has_a_line_per_logged_turn_in_turn_order():
    from igpo.report.plots import curve_panels

    # a step of three-search episodes logs IG for turns 1-3; turn 10 sorts after turn 3, not after turn 1
    rows = [
        {
            "step": s,
            **{f"ig_turn{k}_mean": 0.1 * k for k in (1, 2, 3, 10)},
            **{f"ig_turn{k}_std": 0.01 for k in (1, 2, 3, 10)},
        }
        for s in range(3)
    ]
    rows[0].pop("ig_turn3_mean")  # a step where no episode reached a third search
    panels = {title: (lines, bands) for title, lines, bands, _ in curve_panels(rows)}
    lines, bands = panels["IG per turn index (mean ± std)"]
    assert list(lines) == ["turn 1", "turn 2", "turn 3", "turn 10"]
    assert lines["turn 3"][0] == [1, 2] and lines["turn 3"][1] == pytest.approx([0.3, 0.3])
    assert set(bands) == set(lines)
