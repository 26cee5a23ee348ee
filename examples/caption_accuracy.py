"""How often a trained examples/caption_digits.mmg names the right digit.

Each of the 360 held-out digits (the built-in data's test split) is captioned greedily from
BOS alone, as `mmgraph generate` does with an empty prompt; a caption is right when the first
digit it names (a word, "seven", or a numeral, "7") is the image's label.

    python examples/caption_accuracy.py [RUN]     # RUN defaults to runs/caption_digits
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from mmgraph.errors import UserError
from mmgraph.train.convert import to_tensor
from mmgraph.train.run import load_trained
from mmgraph.train.sources import DIGIT_NAMES, DigitsSource
from mmgraph.train.tokenize import ByteTokenizer

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "caption_digits.mmg"
_DIGIT = re.compile(r"\b(" + "|".join(DIGIT_NAMES) + r"|[0-9])\b")


def named_digit(caption: str) -> int | None:
    """The first digit a caption names, as a word or a numeral; None when it names none."""
    found = _DIGIT.search(caption.lower())
    if found is None:
        return None
    word = found.group(1)
    return int(word) if word.isdigit() else DIGIT_NAMES.index(word)


def image_tensor(g, value) -> torch.Tensor:
    """An image (array or PIL) as the model's image input takes it, the way training data
    was made (resized, scaled to [-1, 1])."""
    t = g.nodes["image"].type
    return to_tensor(t, [int(d) for d in t.dims[1:]], value, None)


def captions(model, images: torch.Tensor, max_new_tokens: int = 48,
             batch: int = 120) -> list[str]:
    """Greedy captions of a batch of images [N, 3, H, W], each from BOS alone."""
    tok = ByteTokenizer()
    out: list[str] = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        ids = model.generate([[tok.bos_id]] * len(chunk), image=chunk,
                             max_new_tokens=max_new_tokens, stop=(tok.eos_id,))
        out += [tok.decode(row) for row in ids]
    return out


def accuracy(run: str | Path) -> tuple[float, list[tuple[int, str]]]:
    """The share of test digits whose caption names their label, and (label, caption) pairs."""
    model, g, _ = load_trained(SPEC, run)
    test = DigitsSource("test")
    examples = [test[i] for i in range(len(test))]
    images = torch.stack([image_tensor(g, e["image"]) for e in examples])
    written = captions(model, images)
    labels = [e["label"] for e in examples]
    right = sum(named_digit(c) == y for c, y in zip(written, labels))
    return right / len(labels), list(zip(labels, written))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default=str(ROOT / "runs" / "caption_digits"))
    ap.add_argument("--show", type=int, default=5, help="print this many captions")
    args = ap.parse_args()
    try:
        share, pairs = accuracy(args.run)
    except UserError as exc:  # no run there, or one of another spec: say so, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for label, caption in pairs[:args.show]:
        print(f"  {label}: {caption!r}")
    print(f"caption accuracy on {len(pairs)} held-out digits: {share:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
