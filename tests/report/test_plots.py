"""The report's training panels: which metric rows make which panel."""
from igpo.report.plots import training_curves


def test_the_estimator_diagnostics_get_their_panels_and_absent_ones_none():
    rows = [{"step": s, "turns": 2.0 + s, "turns_min": 1, "turns_max": 3 + s, "ig_scale": 1.5, "gamma_effective": 0.9,
             "ig_gate_ema": 0.05 * s, "ig_gate_on": s > 1, "ig_raw_mean": 0.01, "ig_raw_std": 0.02,
             "ig_rollout_share": 0.5, "ig_raw_positive_share": 0.6} for s in range(4)]
    titles = [t for t, uri in training_curves(rows) if uri.startswith("data:image/png;base64,")]
    assert titles == ["Turns per episode (mean, min, max)", "Raw IG of the step's tool turns (mean ± std)",
                      "IG shares: rollouts with IG, IG > 0", "IG scale (scaled_separate) and effective γ",
                      "IG warm-up gate: F1 EMA and switch"]
    assert training_curves([{"step": 0, "kl": 0.1}])[0][0] == "KL to the reference"
