"""Line plots as embedded PNGs: `data:` URIs, so the report needs no file beside it and no network.

Figures are built with `matplotlib.figure.Figure` directly (no pyplot, no global backend state).
"""

from __future__ import annotations

import base64
import io
import re
from fnmatch import fnmatch

import numpy as np
from matplotlib.figure import Figure

Line = tuple[list[float], list[float]]  # x (steps), y

# (title, metric names or one glob over the flattened names, y is a rate in [0, 1])
CURVES: list[tuple[str, list[str] | str, bool]] = [
    ("Outcome reward", ["outcome_reward"], False),
    ("Answer F1 and EM (training rollouts)", ["f1", "em"], True),
    ("IG per turn index (mean ± std)", "ig_turn*_mean", False),
    ("Belief p₀ after the question (mean)", ["p0_mean"], False),
    ("Share of zero-variance groups", ["zero_variance_groups"], True),
    ("KL to the reference", ["kl"], False),
    ("Entropy of generated tokens", ["entropy"], False),
    ("Format- and tool-error rates", ["format_error_rate", "tool_error_rate"], True),
    ("Tokens per second", "tokens_per_s/*", False),
    ("Seconds per phase", "seconds/*", False),
    ("Turns per episode (mean, min, max)", ["turns", "turns_min", "turns_max"], False),
    ("Raw IG of the step's tool turns (mean ± std)", ["ig_raw_mean"], False),
    ("IG shares: rollouts with IG, IG > 0", ["ig_rollout_share", "ig_raw_positive_share"], True),
    ("IG scale (scaled_separate) and effective γ", ["ig_scale", "gamma_effective"], False),
    ("IG warm-up gate: F1 EMA and switch", ["ig_gate_ema", "ig_gate_on"], True),
    ("Gradient norm", ["grad_norm"], False),
]


def _natural(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _label(key: str) -> str:
    m = re.fullmatch(r"ig_turn(\d+)_mean", key)
    return f"turn {m[1]}" if m else key.split("/")[-1]


def _series(rows: list[dict], key: str) -> Line:
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def line_plot(
    title: str, lines: dict[str, Line], bands: dict[str, Line] | None = None, rate: bool = False, xlabel: str = "step"
) -> str:
    """One small figure as a PNG data URI. bands: label -> (x, half-width) drawn as a shaded ± band."""
    fig = Figure(figsize=(4.6, 2.8), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    for k, (label, (x, y)) in enumerate(lines.items()):
        color = f"C{k % 10}"
        x, y = np.asarray(x, float), np.asarray(y, float)
        many = len(x) > 40
        ax.plot(
            x,
            y,
            color=color,
            lw=0.8 if many else 1.6,
            alpha=0.45 if many else 1.0,
            marker=None if len(x) > 25 else "o",
            ms=3,
            label=label,
        )
        if many:  # a moving average over ~5% of the run shows the trend through the noise
            w = max(2, len(x) // 20)
            ax.plot(x[w - 1 :], np.convolve(y, np.ones(w) / w, mode="valid"), color=color, lw=1.8)
        if bands and label in bands:
            bx, half = np.asarray(bands[label][0], float), np.asarray(bands[label][1], float)
            if len(bx) == len(x):
                ax.fill_between(x, y - half, y + half, color=color, alpha=0.15, lw=0)
    if rate:
        ax.set_ylim(-0.03, 1.03)
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    if len(lines) > 1:
        ax.legend(fontsize=7, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def curve_panels(rows: list[dict]) -> list[tuple[str, dict[str, Line], dict[str, Line], bool]]:
    """(title, lines, ± bands, rate) for every panel of `CURVES` that has data; rows: flattened metric rows with
    `step`. A glob panel gets a line per matching key: "IG per turn index" one per `ig_turn<k>_mean` logged."""
    names = sorted({k for r in rows for k in r}, key=_natural)
    out = []
    for title, keys, rate in CURVES:
        keys = [n for n in names if fnmatch(n, keys)] if isinstance(keys, str) else [k for k in keys if k in names]
        lines = {_label(k): _series(rows, k) for k in keys}
        lines = {k: v for k, v in lines.items() if v[0]}
        if not lines:
            continue
        bands = {_label(k): _series(rows, k.removesuffix("_mean") + "_std") for k in keys if k.endswith("_mean")}
        out.append((title, lines, bands, rate))
    return out


def training_curves(rows: list[dict]) -> list[tuple[str, str]]:
    """(title, PNG data URI) for every panel of `curve_panels`."""
    return [(title, line_plot(title, lines, bands, rate)) for title, lines, bands, rate in curve_panels(rows)]
