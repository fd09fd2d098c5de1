"""learning.png: the learning benchmark's dev F1 curves (results.json's `runs`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot(result: dict, path: Path) -> Path:
    """learning.png: mean dev F1 vs step (band: min–max over seeds), and dev F1 vs generated tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    # Runs can coincide (igpo_outcome_only is grpo at γ = 1): a marker and dash per estimator keep both visible.
    styles = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", (0, (5, 1)))]
    for k, (est, seeds) in enumerate(result["runs"].items()):
        marker, dash = styles[k % len(styles)]
        curves = list(seeds.values())
        n = min(len(c["steps"]) for c in curves)
        steps = curves[0]["steps"][:n]
        f1 = np.array([c["dev_f1"][:n] for c in curves])
        label = f"{est} ({len(curves)} seed{'s' * (len(curves) > 1)})"
        (line,) = ax1.plot(steps, f1.mean(0), marker=marker, linestyle=dash, markerfacecolor="none", label=label)
        if len(curves) > 1:
            ax1.fill_between(steps, f1.min(0), f1.max(0), color=line.get_color(), alpha=0.2)
        for c in curves:
            ax2.plot(
                c["generated_tokens_at_step"],
                c["dev_f1"],
                marker=marker,
                linestyle=dash,
                markerfacecolor="none",
                color=line.get_color(),
                alpha=0.8,
            )
    ax1.set(xlabel="training step", ylabel="dev F1 (greedy)", title="dev F1 vs step")
    ax2.set(xlabel="tokens generated in training", ylabel="dev F1 (greedy)", title="dev F1 vs tokens generated")
    ax1.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
