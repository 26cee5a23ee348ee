"""Loss curves as pictures: DIR/loss.png, redrawn at the end of every stage."""

from __future__ import annotations

import json
from pathlib import Path

PLOT_TEMP = "loss.png.tmp"  # written first, then renamed over loss.png


def loss_png(run_dir: str | Path) -> Path | None:
    """Plot every `loss/...` series of metrics.jsonl against the global step."""
    run = Path(run_dir)
    metrics = run / "metrics.jsonl"
    if not metrics.exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, tuple[list[int], list[float]]] = {}
    stage_starts: list[tuple[int, str]] = []
    last_stage = None
    for line in metrics.read_text().splitlines():
        if not line:
            continue
        rec = json.loads(line)
        if rec["stage"] != last_stage:
            stage_starts.append((rec["global_step"], rec["stage"]))
            last_stage = rec["stage"]
        for key, value in rec.items():
            if key.startswith("loss/"):
                xs, ys = series.setdefault(key[5:], ([], []))
                xs.append(rec["global_step"])
                ys.append(value)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, label=name, linewidth=2.0 if name == "total" else 1.0)
    for step, stage in stage_starts:
        ax.axvline(step, color="grey", linestyle=":", linewidth=0.8)
        ax.text(step, ax.get_ylim()[1], f" {stage}", va="top", fontsize=8, color="grey")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"training losses ({run.name})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out, tmp = run / "loss.png", run / PLOT_TEMP
    try:
        fig.savefig(tmp, format="png")
        tmp.replace(out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:
            exc.filename = str(tmp)
        raise
    finally:
        plt.close(fig)
    return out
