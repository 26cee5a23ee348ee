"""Write a held-out handwritten digit of the built-in data as a small PNG, for
`mmgraph generate ... --image` (examples/seven.png is the first 7 of the test split).

The 8x8 image is saved at its own size as 8-bit grayscale (0..1 -> 0..255); mmgraph resizes
and scales it like the training images.

    python examples/make_digit_png.py [--digit 7] [-o examples/seven.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from mmgraph.train.sources import DigitsSource

ROOT = Path(__file__).resolve().parents[1]


def write_digit(label: int, path: str | Path) -> int:
    """Save the first test-split image of `label` to `path`; returns its test index."""
    test = DigitsSource("test")
    for i in range(len(test)):
        example = test[i]
        if example["label"] == label:
            pixels = np.rint(np.asarray(example["image"]) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(path)  # 2-D uint8: grayscale "L"
            return i
    raise ValueError(f"the test split has no digit {label}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--digit", type=int, default=7, choices=range(10))
    ap.add_argument("-o", "--output", default=str(ROOT / "examples" / "seven.png"))
    args = ap.parse_args()
    index = write_digit(args.digit, args.output)
    print(f"wrote digits/test[{index}] (a {args.digit}) to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
