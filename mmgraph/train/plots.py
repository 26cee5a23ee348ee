"""Training curves as one picture: DIR/loss.png, redrawn at the end of every stage.

One panel per loss (each on its own scale, so a small loss is not flattened under `total`),
with its validation curve when there is one, and a panel for the learning rate; dotted lines
mark where each stage starts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

PLOT_TEMP = "loss.png.tmp"  # written first, then renamed over loss.png
COLUMNS = 2


def read_series(metrics: Path) -> tuple[dict[str, dict[str, tuple[list, list]]],
                                        list[tuple[int, str]]]:
    """From metrics.jsonl: {panel: {curve: (steps, values)}} with a panel per loss ("train" and
    "validation" curves) and one for "lr"; and the (step, stage) where each stage starts.
    Damaged lines (a run killed mid-write) are skipped."""
    panels: dict[str, dict[str, tuple[list, list]]] = {}
    stage_starts: list[tuple[int, str]] = []
    last_stage = None
    for line in metrics.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("global_step"), int):
            continue
        step = rec["global_step"]
        if rec.get("stage") != last_stage:
            stage_starts.append((step, str(rec.get("stage"))))
            last_stage = rec.get("stage")
        for key, value in rec.items():
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            if key.startswith("loss/"):
                panel, curve = key[5:], "train"
            elif key.startswith("val/"):
                panel, curve = key[4:], "validation"
            elif key == "lr":
                panel, curve = "learning rate", "lr"
            else:
                continue
            xs, ys = panels.setdefault(panel, {}).setdefault(curve, ([], []))
            xs.append(step)
            ys.append(value)
    if "learning rate" in panels:  # last, after the losses
        panels["learning rate"] = panels.pop("learning rate")
    return panels, stage_starts


def loss_png(run_dir: str | Path) -> Path | None:
    """Plot metrics.jsonl: a panel per loss (train and validation) and the learning rate."""
    run = Path(run_dir)
    metrics = run / "metrics.jsonl"
    if not metrics.exists():
        return None
    panels, stage_starts = read_series(metrics)
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = math.ceil(len(panels) / COLUMNS)
    cols = min(COLUMNS, len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.2 * rows), dpi=100,
                             squeeze=False)
    for ax, (name, curves) in zip(axes.flat, panels.items(), strict=False):
        for curve, (xs, ys) in curves.items():
            marker = "o" if curve == "validation" else None
            ax.plot(xs, ys, label=curve, linewidth=1.2, marker=marker, markersize=3)
        for step, stage in stage_starts:
            ax.axvline(step, color="grey", linestyle=":", linewidth=0.8)
            ax.text(step, ax.get_ylim()[1], f" {stage}", va="top", fontsize=7, color="grey")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(curves) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"training curves ({run.name})", fontsize=11)
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
