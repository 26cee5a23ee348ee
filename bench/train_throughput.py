"""Samples/s of `mmgraph train` against a minimal hand-written PyTorch loop: same compiled
model, same data, same batch size, same optimizer. Runs alternate (A, B, A, B ...) so machine
noise hits both alike; prints medians and the ratio mmgraph / hand-written (goal >= 0.95).

Throughput is the training loop's (what mmgraph reports as samples/s at its last step: every
step's logging, scheduling and bookkeeping included); the one-off costs of a run (building
the module, the final checkpoint and loss plot) are printed separately as wall time.

Then data parallelism on two processes (gloo on CPUs, NCCL on GPUs): DDP against FSDP2
(`--fsdp`), samples/s, and the peak memory of a rank with and without activation
checkpointing, each configuration a fresh pair of processes on the same larger CLIP, printed
as ratios side by side (peak RSS on CPUs, where the process's baseline is the same for all;
peak allocated memory on GPUs).

Then DataLoader worker processes on against off on a .jsonl of PNG files (`--no-loader`
skips it).

    .venv/bin/python bench/train_throughput.py [--steps 60] [--rounds 3] [--json]
                                               [--no-distributed] [--dist-steps 20]
                                               [--no-loader]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
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


def last_samples_per_s(run: Path) -> float:
    """The samples/s a training run in folder `run` reported at its last step."""
    last = (run / "metrics.jsonl").read_text().splitlines()[-1]
    return json.loads(last)["samples_per_s"]


def with_mmgraph(steps: int, batch_size: int) -> float:
    from mmgraph.train.run import train

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        train(SPEC, out=out, max_steps=steps, quiet=True,
              settings_overrides={"batch_size": batch_size, "warmup": 0})
        WALL.append(time.perf_counter() - start)
        return last_samples_per_s(Path(out))


# a CLIP large enough that weights and activations outweigh the interpreter, small enough for
# a laptop: about 4.8M parameters
WIDE = {"width": 256, "text_width": 256, "depth": 4, "text_depth": 4, "embed": 128}
PROCESSES = 2
DIST_MODES = {"ddp": (False, False), "fsdp": (True, False), "ddp+ac": (False, True),
              "fsdp+ac": (True, True)}


def distributed_worker(out: Path, mode: str, steps: int, batch: int) -> None:
    """One rank of one configuration: train, then report its samples/s and peak memory."""
    from mmgraph.train.run import train

    fsdp, ac = DIST_MODES[mode]
    torch.set_num_threads(1)
    result = train(SPEC, out=out / mode, overrides=WIDE, max_steps=steps, quiet=True,
                   fsdp=fsdp, settings_overrides={"batch_size": batch, "warmup": 0,
                                                  "precision": "fp32",
                                                  "activation_checkpointing": ac})
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    record = {"rank": result["rank"], "peak_bytes": peak}
    if result["rank"] == 0:
        record["samples_per_s"] = last_samples_per_s(out / mode)
    (out / f"{mode}.rank{result['rank']}.json").write_text(json.dumps(record))


def launch(out: Path, mode: str, steps: int, batch: int) -> dict:
    """Two processes with the environment torchrun gives them; their reports."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in range(PROCESSES):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(PROCESSES), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", str(out), mode,
                                       str(steps), str(batch)], env=env, cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    errors = [p.communicate(timeout=600)[1].decode(errors="replace") for p in procs]
    for p, err in zip(procs, errors):
        if p.returncode:
            raise SystemExit(f"{mode}: a rank failed (exit {p.returncode}):\n{err[-2000:]}")
    ranks = [json.loads((out / f"{mode}.rank{r}.json").read_text()) for r in range(PROCESSES)]
    return {"samples_per_s": ranks[0]["samples_per_s"],
            "peak_bytes_per_rank": max(r["peak_bytes"] for r in ranks)}


def distributed(steps: int, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        return {mode: launch(Path(out), mode, steps, batch) for mode in DIST_MODES}


def loader_workers(steps: int, batch: int, rounds: int, workers: int = 2,
                   picture: int = 224) -> dict:
    """samples/s of `mmgraph train` on a .jsonl of PNG files (the digits drawn at `picture`
    pixels, so decoding and resizing cost what real pictures do) read in the training
    process (workers=0) against `workers` DataLoader processes; runs alternate."""
    import numpy as np
    from PIL import Image

    from mmgraph.train.run import train
    from mmgraph.train.sources import open_source

    digits = open_source("digits", "train")
    rates: dict[int, list[float]] = {0: [], workers: []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = []
        for i in range(min(len(digits), batch * 8)):
            ex = digits[i]
            pixels = (np.kron(ex["image"], np.ones((picture // 8, picture // 8))) * 255)
            Image.fromarray(pixels.astype(np.uint8)).convert("RGB").save(root / f"{i}.png")
            rows.append({"image": f"{i}.png", "text": ex["text"]})
        data = root / "d.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        for i in range(rounds + 1):  # the first round warms up and is dropped
            order = [0, workers] if i % 2 == 0 else [workers, 0]
            for w in order:
                out = root / f"run-{i}-{w}"
                train(SPEC, data=str(data), out=out, max_steps=steps, quiet=True, workers=w,
                      settings_overrides={"batch_size": batch, "warmup": 0})
                rate = last_samples_per_s(out)
                if i:
                    rates[w].append(rate)
    off, on = statistics.median(rates[0]), statistics.median(rates[workers])
    return {"workers": workers, "picture": picture, "examples": len(rows), "steps": steps,
            "samples_per_s_without_workers": off, "samples_per_s_with_workers": on,
            "workers_over_none": on / off, "cpus": os.cpu_count()}


def main() -> int:
    if sys.argv[1:2] == ["--worker"]:
        out, mode, steps, batch = sys.argv[2:6]
        distributed_worker(Path(out), mode, int(steps), int(batch))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-distributed", action="store_true",
                    help="skip DDP vs FSDP and activation checkpointing on two processes")
    ap.add_argument("--dist-steps", type=int, default=20)
    ap.add_argument("--no-loader", action="store_true",
                    help="skip DataLoader workers on vs off on a .jsonl of PNG files")
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
    if not args.no_distributed:
        d = distributed(args.dist_steps, args.batch)
        mem = {m: d[m]["peak_bytes_per_rank"] for m in d}
        result["distributed"] = {
            "processes": PROCESSES, "steps": args.dist_steps, "model": WIDE, **d,
            "fsdp_over_ddp_samples_per_s": d["fsdp"]["samples_per_s"] / d["ddp"]["samples_per_s"],
            "fsdp_over_ddp_peak_memory": mem["fsdp"] / mem["ddp"],
            "ac_over_none_peak_memory_ddp": mem["ddp+ac"] / mem["ddp"],
            "ac_over_none_peak_memory_fsdp": mem["fsdp+ac"] / mem["fsdp"],
            "ac_over_none_samples_per_s_ddp": d["ddp+ac"]["samples_per_s"] /
            d["ddp"]["samples_per_s"]}
    if not args.no_loader:
        result["loader"] = loader_workers(min(args.steps, 20), args.batch, args.rounds)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"training throughput on {result['spec']}, batch {args.batch}, {args.steps} steps "
              f"per run, median of {args.rounds} alternating runs ({result['threads']} threads)")
        print(f"  mmgraph train   {a:8.1f} samples/s   (the whole run took "
              f"{statistics.median(WALL[1:]):.2f} s with setup, checkpoint and plot)")
        print(f"  hand-written    {b:8.1f} samples/s")
        print(f"  ratio           {a / b:8.3f}")
        if "distributed" in result:
            print_distributed(result["distributed"])
        if "loader" in result:
            d = result["loader"]
            print(f"\nDataLoader on {d['examples']} PNG files of {d['picture']} px, "
                  f"{d['steps']} steps, {d['cpus']} CPUs")
            print(f"  no workers      {d['samples_per_s_without_workers']:8.1f} samples/s")
            with_workers = f"{d['workers']} workers"
            print(f"  {with_workers:15} {d['samples_per_s_with_workers']:8.1f} samples/s")
            print(f"  ratio           {d['workers_over_none']:8.3f}")
    return 0


def print_distributed(d: dict) -> None:
    where = "GPU allocated" if torch.cuda.is_available() else "CPU RSS"
    print(f"\ndata parallel on {d['processes']} processes, {d['steps']} steps, same global batch "
          f"(one fresh pair of processes per configuration)")
    print(f"  {'':10} {'samples/s':>10} {'peak ' + where + ' per rank':>26}")
    for mode in DIST_MODES:
        print(f"  {mode:10} {d[mode]['samples_per_s']:10.1f} "
              f"{d[mode]['peak_bytes_per_rank'] / 2**20:22.1f} MiB")
    print(f"  FSDP / DDP samples/s            {d['fsdp_over_ddp_samples_per_s']:6.3f}")
    print(f"  FSDP / DDP peak memory          {d['fsdp_over_ddp_peak_memory']:6.3f}")
    print(f"  with / without activation checkpointing, peak memory: DDP "
          f"{d['ac_over_none_peak_memory_ddp']:.3f}, FSDP {d['ac_over_none_peak_memory_fsdp']:.3f}"
          f"; samples/s (DDP) {d['ac_over_none_samples_per_s_ddp']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
