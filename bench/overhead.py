"""Does the compiler cost anything at run time? The compiled CLIP against the hand-written
one (tests/reference/hand_clip.py) with the same weights, timed side by side.

For each size (tiny, ViT-B/32) and batch (1, 8): warm up both, then alternate single forward
passes A, B, A, B ... so that machine noise hits both alike, and report medians and the
ratio compiled / hand-written. Goal: <= 1.03. Prints; never asserts.

Also prints the time from spec to instantiated module for every zoo spec at tiny size.

    .venv/bin/python bench/overhead.py [--runs 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from mmgraph.build import load  # noqa: E402

from reference.hand_clip import matching  # noqa: E402
from tiny import TINY  # noqa: E402

FULL = dict(width=768, depth=12, heads=12, text_width=512, text_depth=12, text_heads=8,
            vocab=49408, context=77, embed=512, image_size=224, patch=32)


def pair(sizes: dict):
    torch.manual_seed(0)
    compiled = load(ROOT / "specs" / "clip.mmg", **sizes).eval()
    return compiled, matching(compiled, sizes)


def side_by_side(a, b, runs: int, warmup: int = 3):
    ta, tb = [], []
    with torch.inference_mode():
        for _ in range(warmup):
            a(), b()
        for i in range(runs):
            for fn, out in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
                start = time.perf_counter()
                fn()
                out.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def compile_times() -> dict[str, float]:
    out = {}
    for name, sizes in TINY.items():
        start = time.perf_counter()
        load(ROOT / "specs" / f"{name}.mmg", **sizes)
        out[name] = time.perf_counter() - start
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for label, sizes in (("tiny", TINY["clip"]), ("ViT-B/32", FULL)):
        compiled, reference = pair(sizes)
        for batch in (1, 8):
            image = torch.randn(batch, 3, sizes["image_size"], sizes["image_size"])
            text = torch.randint(0, sizes["vocab"], (batch, sizes["context"]))
            runs = args.runs if label == "tiny" else max(20, args.runs // 2)
            ours, theirs = side_by_side(
                lambda m=compiled, i=image, t=text: m(image=i, text=t),
                lambda m=reference, i=image, t=text: m(i, t), runs)
            rows.append({"size": label, "batch": batch, "runs": runs,
                         "compiled_ms": ours * 1e3, "hand_written_ms": theirs * 1e3,
                         "ratio": ours / theirs})
    compile_s = compile_times()
    if args.json:
        print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                          "overhead": rows, "compile_seconds": compile_s}, indent=2))
        return 0
    print(f"compiled CLIP vs hand-written CLIP, same weights (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, medians of alternating runs)")
    print(f"{'size':10} {'batch':>5} {'runs':>5} {'compiled ms':>12} {'hand ms':>10} {'ratio':>7}")
    for r in rows:
        print(f"{r['size']:10} {r['batch']:5d} {r['runs']:5d} {r['compiled_ms']:12.2f} "
              f"{r['hand_written_ms']:10.2f} {r['ratio']:7.3f}")
    print("\nspec -> instantiated module at tiny size (parse, check, generate, build):")
    for name, s in compile_s.items():
        print(f"  {name:18} {s * 1e3:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
