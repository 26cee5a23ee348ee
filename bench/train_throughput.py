"""Samples/s of `mmgraph train` against a minimal hand-written PyTorch loop: same compiled
model, same data, same batch size, same optimizer. Runs alternate (A, B, A, B ...) so machine
noise hits both alike; prints medians and the ratio mmgraph / hand-written (goal >= 0.95).

Throughput is the training loop's (what mmgraph reports as samples/s at its last step: every
step's logging, scheduling and bookkeeping included); the one-off costs of a run (building
the module, the final checkpoint and loss plot) are printed separately as wall time.

    .venv/bin/python bench/train_throughput.py [--steps 60] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "clip_digits.mmg"


def hand_written(steps: int, batch_size: int) -> float:
    """The loop a researcher writes by hand: batches, losses, backward, AdamW step."""
    from mmgraph.build import load_class
    from mmgraph.train.batching import batches
    from mmgraph.train.sources import open_source
    from mmgraph.train.spec_dataset import SpecDataset
    from mmgraph.train.tokenize import make_tokenizer

    cls, g = load_class(SPEC)
    torch.manual_seed(0)
    model = cls().train()
    data = SpecDataset(open_source("digits", "train"), g, make_tokenizer(None))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    done, epoch = 0, 0
    start = time.perf_counter()  # the loop only, as mmgraph's samples/s
    while done < steps:
        for batch in batches(data, batch_size, seed=0, epoch=epoch):
            opt.zero_grad(set_to_none=True)
            model.losses(**batch)["total"].backward()
            opt.step()
            done += 1
            if done == steps:
                break
        epoch += 1
    return steps * batch_size / (time.perf_counter() - start)


WALL: list[float] = []


def with_mmgraph(steps: int, batch_size: int) -> float:
    from mmgraph.train.run import train

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        train(SPEC, out=out, max_steps=steps, quiet=True,
              settings_overrides={"batch_size": batch_size, "warmup": 0})
        WALL.append(time.perf_counter() - start)
        last = (Path(out) / "metrics.jsonl").read_text().splitlines()[-1]
        return json.loads(last)["samples_per_s"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    ours, theirs = [], []
    with_mmgraph(5, args.batch), hand_written(5, args.batch)  # warm up both
    for i in range(args.rounds):
        pair = [(with_mmgraph, ours), (hand_written, theirs)]
        for fn, out in pair if i % 2 == 0 else reversed(pair):
            out.append(fn(args.steps, args.batch))
    a, b = statistics.median(ours), statistics.median(theirs)
    result = {"spec": str(SPEC.relative_to(ROOT)), "steps": args.steps, "batch": args.batch,
              "rounds": args.rounds, "mmgraph_samples_per_s": a,
              "hand_written_samples_per_s": b, "ratio": a / b,
              "threads": torch.get_num_threads()}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"training throughput on {result['spec']}, batch {args.batch}, {args.steps} steps "
              f"per run, median of {args.rounds} alternating runs ({result['threads']} threads)")
        print(f"  mmgraph train   {a:8.1f} samples/s   (the whole run took "
              f"{statistics.median(WALL[1:]):.2f} s with setup, checkpoint and plot)")
        print(f"  hand-written    {b:8.1f} samples/s")
        print(f"  ratio           {a / b:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
