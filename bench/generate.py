"""Does the KV cache pay, and is the exported decoder as fast as torch? Generation of a small
LLaVA (specs/llava.mmg at the sizes below, random weights) timed side by side in one run.

Each run generates 256 new tokens greedily (no stop token) after an 8-token prompt and one
image, and records when every token arrives (`on_token`). Three ways, interleaved (the order
rotates each repeat, so machine noise hits all alike), medians over the repeats:

  torch, cache     model.generate(..., cache=True): prefill once, then one position per step
  torch, no cache  model.generate(..., cache=False): every step recomputes the whole sequence
  onnxruntime      the prefill/decode graphs `mmgraph export` writes, through
                   open_export(dir).generate(...) (same weights: both seeded like the export)

It prints tokens/s over the 256 tokens, the time to the first token (image encoder and prompt
prefill included), the median decode step (time between tokens), and the ratios the goals are
stated in: cache >= 5x the tokens/s of no cache; onnxruntime's decode step <= torch eager's.
The three must produce the same tokens (printed). Prints; never asserts.

    .venv/bin/python bench/generate.py [--repeats 5] [--new-tokens 256] [--set width=256] [--json]
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

from mmgraph.build import instantiate, load_class
from mmgraph.compiler import parse_override

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "specs" / "llava.mmg"
# A small LLaVA: 4 visual tokens (28 px, 14 px patches); the LM's max_len (4096) holds the
# visual tokens, the prompt and 256 new tokens.
SIZES = dict(image_size=28, patch=14, vision_width=64, vision_depth=2, vision_heads=2,
             width=256, depth=4, heads=4, ffn=688, vocab=1024)
PROMPT = 8


class Way:
    """One way of generating: a name, a `generate(tokens, **kw)` and its timings."""

    def __init__(self, name: str, generate):
        self.name, self.generate = name, generate
        self.total: list[float] = []  # seconds for all new tokens
        self.first: list[float] = []  # seconds to the first token
        self.step: list[float] = []  # median seconds between tokens, per repeat
        self.tokens: list[int] | None = None

    def run(self, prompt: list[int], image, new_tokens: int) -> None:
        arrivals: list[float] = []
        start = time.perf_counter()
        out = self.generate([prompt], image=image, max_new_tokens=new_tokens,
                            on_token=lambda row, t: arrivals.append(time.perf_counter()))
        end = time.perf_counter()
        self.total.append(end - start)
        self.first.append(arrivals[0] - start)
        self.step.append(statistics.median(b - a for a, b in zip(arrivals, arrivals[1:])))
        self.tokens = out[0]

    def medians(self, new_tokens: int) -> dict:
        total = statistics.median(self.total)
        return {"way": self.name, "tokens_per_s": new_tokens / total,
                "first_token_ms": statistics.median(self.first) * 1e3,
                "decode_step_ms": statistics.median(self.step) * 1e3, "seconds": total}


def torch_model(sizes: dict):
    """The spec's model seeded as `mmgraph export` seeds it, so both hold the same weights."""
    cls, g = load_class(SPEC, **sizes)
    torch.manual_seed(0)
    return instantiate(cls, g).eval()


def onnx_way(sizes: dict, folder: Path) -> Way | str:
    """onnxruntime through the export's decoder graphs, or why it is skipped."""
    from mmgraph.export import targets
    from mmgraph.export.onnx_parts import export
    from mmgraph.runtime.session import open_export

    export(SPEC, folder, targets.load("onnx"), overrides=sizes, log=lambda *a: None)
    pipeline = open_export(folder)
    if getattr(pipeline, "generation", None) is None:
        return "skipped: the export holds no decoder graphs"

    def generate(tokens, image, **kw):
        return pipeline.generate(tokens, image=image.numpy(), **kw)

    return Way("onnxruntime, cache", generate)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                    help="override one of the sizes (e.g. width=512)")
    ap.add_argument("--no-onnx", action="store_true", help="torch only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sizes = dict(SIZES)
    sizes.update(parse_override(item) for item in args.sets)
    model = torch_model(sizes)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(1, sizes["vocab"], (PROMPT,), generator=g).tolist()
    image = torch.randn(1, 3, sizes["image_size"], sizes["image_size"], generator=g)
    ways = [Way("torch, cache", lambda t, **kw: model.generate(t, cache=True, **kw)),
            Way("torch, no cache", lambda t, **kw: model.generate(t, cache=False, **kw))]
    skipped = None
    with tempfile.TemporaryDirectory() as tmp:
        ort = "skipped: --no-onnx" if args.no_onnx else onnx_way(sizes, Path(tmp) / "llava")
        if isinstance(ort, str):
            skipped = ort
        else:
            ways.append(ort)
        with torch.inference_mode():
            for way in ways:  # warm-up: one short generation each
                way.run(prompt, image, 4)
            for i in range(args.repeats):
                for way in ways[i % len(ways):] + ways[:i % len(ways)]:
                    way.run(prompt, image, args.new_tokens)
    rows = [w.medians(args.new_tokens) for w in ways]
    by = {r["way"]: r for r in rows}
    cached, recomputed = by["torch, cache"], by["torch, no cache"]
    ratios = {"cache_vs_no_cache_tokens_per_s":
              cached["tokens_per_s"] / recomputed["tokens_per_s"]}
    if "onnxruntime, cache" in by:
        ratios["onnxruntime_vs_torch_decode_step"] = \
            by["onnxruntime, cache"]["decode_step_ms"] / cached["decode_step_ms"]
        ratios["onnxruntime_vs_torch_first_token"] = \
            by["onnxruntime, cache"]["first_token_ms"] / cached["first_token_ms"]
    same = all(w.tokens == ways[0].tokens for w in ways)
    if args.json:
        print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                          "sizes": sizes, "new_tokens": args.new_tokens,
                          "repeats": args.repeats, "ways": rows, "ratios": ratios,
                          "same_tokens": same, "onnxruntime": skipped or "ran"}, indent=2))
        return 0
    print(f"small LLaVA ({', '.join(f'{k}={v}' for k, v in sizes.items())}), "
          f"{PROMPT}-token prompt, {args.new_tokens} new tokens, greedy; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, medians of "
          f"{args.repeats} interleaved repeats")
    print(f"{'':20} {'tokens/s':>9} {'first token ms':>15} {'decode step ms':>15}")
    for r in rows:
        print(f"{r['way']:20} {r['tokens_per_s']:9.1f} {r['first_token_ms']:15.2f} "
              f"{r['decode_step_ms']:15.3f}")
    print(f"\ncache / no cache, tokens/s: {ratios['cache_vs_no_cache_tokens_per_s']:.2f}x "
          "(goal >= 5x)")
    if skipped:
        print(f"onnxruntime: {skipped}")
    else:
        print(f"onnxruntime / torch, decode step: "
              f"{ratios['onnxruntime_vs_torch_decode_step']:.2f} (goal <= 1)")
        print(f"onnxruntime / torch, first token: "
              f"{ratios['onnxruntime_vs_torch_first_token']:.2f}")
    print(f"same tokens from every way: {'yes' if same else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
