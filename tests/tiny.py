"""Tiny sizes for every zoo spec (`--set` overrides), so tests run in seconds on a CPU.

The first ten are written here; every other spec keeps its own next to it, in its header:
a comment line `# tiny: width=32 depth=2 heads=2 vocab=64` (more `# tiny:` lines add to it).
"""

from zoo_headers import read

from conftest import SPECS

TINY = {
    "clip": dict(width=32, depth=2, heads=2, text_width=32, text_depth=2, text_heads=2,
                 vocab=64, context=8, embed=16, image_size=32, patch=16),
    "llava": dict(image_size=28, patch=14, vision_width=32, vision_depth=2, vision_heads=2,
                  width=32, depth=2, heads=2, ffn=64, vocab=64),
    "blip2": dict(image_size=28, patch=14, vision_width=32, vision_depth=2, vision_heads=2,
                  vision_mlp=64, queries=4, qformer_width=32, qformer_depth=2,
                  qformer_heads=2, qformer_mlp=64, lm_width=32, lm_depth=2, lm_heads=2,
                  lm_ffn=64, vocab=64),
    "albef": dict(image_size=32, patch=16, width=32, depth=2, heads=2, text_depth=1,
                  fusion_depth=1, vocab=128, embed=16, queue=32),
    "flamingo": dict(image_size=28, patch=14, vision_width=32, vision_depth=2, vision_heads=2,
                     latents=4, resampler_depth=1, xattn_heads=2, width=32, heads=2, groups=2,
                     every=1, vocab=64),
    "zipper": dict(text_width=32, speech_width=16, text_vocab=64, speech_vocab=32,
                   text_heads=2, speech_heads=2, every=1, groups=2),
    "multimae": dict(size=32, patch=16, width=32, depth=2, heads=2, decoder_width=16,
                     decoder_depth=1, decoder_heads=2, classes=5, visible=6),
    "meta_transformer": dict(width=32, depth=2, heads=2, image_size=32, patch=16, vocab=64,
                             context=8, points=64, groups=8, mels=32, frames=48),
    "clip_moe": dict(image_size=28, patch=14, vision_width=32, vision_depth=2,
                     vision_heads=2, text_width=32, text_depth=2, text_heads=2, vocab=64,
                     context=8, embed=16),
    "llamafusion": dict(width=32, depth=2, heads=4, kv_heads=2, ffn=64, vocab=64,
                        latent_channels=4, latent_size=8, patch=2),
}

for _spec in SPECS:
    if _spec.stem not in TINY:
        _found = read(_spec).tiny
        if _found is not None:
            TINY[_spec.stem] = _found

DIMS = {"B": 2, "T": 6, "S": 5}
