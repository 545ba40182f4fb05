"""The learning-curve chart sent with /stats: PNG bytes, rendered headless."""

from __future__ import annotations

import io
from datetime import datetime

from domain import LearningCurve


def learning_curve_png(curve: LearningCurve) -> bytes:
    """Holdout AUC per model version (left) and cumulative votes over time (right)."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2), dpi=100)
    try:
        scored = [(m.version, m.metrics.get("auc"), m.status) for m in curve.versions]
        points = [(v, auc, status) for v, auc, status in scored if auc is not None]
        if points:
            left.plot([p[0] for p in points], [p[1] for p in points], "-", color="0.6")
            for version, auc, status in points:
                colour = {"active": "tab:green", "rejected": "tab:red"}.get(status, "tab:blue")
                left.plot(version, auc, "o", color=colour)
        left.set(title="Holdout AUC per model", xlabel="model version", ylim=(0.0, 1.05))
        left.axhline(0.5, color="0.8", linestyle=":", linewidth=1)  # chance
        left.xaxis.get_major_locator().set_params(integer=True)

        if curve.votes:
            times = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t, _ in curve.votes]
            right.step(times, range(1, len(times) + 1), where="post")
            fig.autofmt_xdate()
        right.set(title="Votes over time", ylabel="votes")

        fig.tight_layout()
        out = io.BytesIO()
        fig.savefig(out, format="png")
        return out.getvalue()
    finally:
        plt.close(fig)
