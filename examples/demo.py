"""The main job (`make demo`): everything mmgraph does, on the embedded default, offline.

1. check and draw every spec of the model zoo (build/zoo/);
2. compile examples/clip_digits.mmg to readable PyTorch (build/clip_digits.py);
3. train it on scikit-learn's bundled handwritten digits (runs/clip_digits/);
4. evaluate it on the held-out digits and print the zero-shot accuracy;
5. export it to ONNX (dist/clip_digits/), print the parity with PyTorch and the speed of
   onnxruntime against torch eager on the same inputs.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import zoo  # noqa: E402

from mmgraph.build import write  # noqa: E402
from mmgraph.export import targets  # noqa: E402
from mmgraph.export.bench import bench  # noqa: E402
from mmgraph.export.onnx_parts import export  # noqa: E402
from mmgraph.train.evaluate import evaluate, headline  # noqa: E402
from mmgraph.train.run import load_trained, train  # noqa: E402
from mmgraph.train.sources import open_source  # noqa: E402
from mmgraph.train.spec_dataset import SpecDataset  # noqa: E402
from mmgraph.train.tokenize import make_tokenizer  # noqa: E402

SPEC = ROOT / "examples" / "clip_digits.mmg"


def main() -> int:
    start = time.perf_counter()
    print("== 1. check and draw the model zoo")
    if zoo.main(ROOT / "build" / "zoo"):
        return 1
    print("\n== 2. compile examples/clip_digits.mmg")
    py, ir = write(SPEC, ROOT / "build")
    print(f"wrote {py.relative_to(ROOT)} and {ir.relative_to(ROOT)}")
    print("\n== 3. train it on the digits (scikit-learn's bundled data, no download)")
    run = ROOT / "runs" / "clip_digits"
    if run.exists():
        shutil.rmtree(run)  # a fresh run each time (a killed one resumes with --resume)
    result = train(SPEC, data="digits", out=run)
    for stage in result["stages"]:
        print(f"stage {stage['stage']}: {stage['steps']} steps, "
              f"{stage['trainable_params']:,} trainable parameters")
    print(f"trained in {result['seconds']:.0f} s; loss curve: {run / 'loss.png'}")
    print("\n== 4. evaluate on the held-out digits")
    model, g, path = load_trained(SPEC, run)
    tokenizer = make_tokenizer(None)
    source = open_source("digits", "test")
    results = evaluate(model, g, source, SpecDataset(source, g, tokenizer), tokenizer)
    for line in headline(results):
        print("  " + line)
    accuracy = results["contrastive/itc"]["zero_shot_accuracy"]
    print("\n== 5. export to ONNX and compare onnxruntime with PyTorch")
    dist = ROOT / "dist" / "clip_digits"
    manifest = export(SPEC, dist, targets.load("onnx"), checkpoint=run)
    speed = bench(dist, runs=50, compile=False, log=lambda _: None)
    for part in speed["parts"]:
        r = part["backends"]["onnxruntime"]
        print(f"part {part['name']}: onnxruntime p50 {r['p50_ms']:.3f} ms, "
              f"{r['ratio_to_torch']:.2f}x the latency of torch eager (batch {part['batch']})")
    worst = max(o["max_abs"] for p in manifest["parts"] for o in p["parity"]["fp32"].values())
    print(f"\nzero-shot accuracy on {results['examples']} held-out digits: {accuracy:.1%}; "
          f"ONNX parity max abs {worst:.1e}; total wall time "
          f"{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
