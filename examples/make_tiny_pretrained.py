"""Tiny random stand-ins for the checkpoints examples/llava_from_pretrained.mmg declares, made
with transformers and saved into examples/models/ (no network): a CLIP model (the spec uses its
vision tower) with a CLIPImageProcessor (32 px, CLIP's mean/std), and a Llama causal LM with
grouped-query attention (4 query heads sharing 2 key/value heads) and a word-level tokenizer.

    python examples/make_tiny_pretrained.py [OUT]      # OUT defaults to examples/models

The real model is the same spec with the folders of openai/clip-vit-large-patch14-336 and
lmsys/vicuna-7b-v1.5 (see docs/language.md, "Pretrained weights").
"""

from __future__ import annotations

import sys
from pathlib import Path

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "an", "the", "is", "of", "red",
         "green", "blue", "cat", "dog", "digit", "picture", "what", "this", "?"]


def main(out: str | Path = Path(__file__).parent / "models") -> Path:
    import torch
    import transformers as T

    out = Path(out)
    torch.manual_seed(0)
    vision = out / "tiny-clip-vision"
    # a whole CLIPModel, as openai/clip-vit-large-patch14-336 is: the spec takes part
    # "vision_model" of it
    T.CLIPModel(T.CLIPConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                           intermediate_size=64, image_size=32, patch_size=8),
        text_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, vocab_size=20, max_position_embeddings=8),
        projection_dim=16)).save_pretrained(vision)
    T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                         image_mean=[0.48145466, 0.4578275, 0.40821073],
                         image_std=[0.26862954, 0.26130258, 0.27577711]).save_pretrained(vision)
    lm = out / "tiny-llama"
    T.LlamaForCausalLM(T.LlamaConfig(
        vocab_size=64, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=96, max_position_embeddings=128,
        rms_norm_eps=1e-5)).save_pretrained(lm)
    lm.mkdir(parents=True, exist_ok=True)
    (lm / "vocab.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    T.BertTokenizerFast(str(lm / "vocab.txt")).save_pretrained(lm)
    return out


if __name__ == "__main__":
    where = main(*sys.argv[1:2])
    print(f"wrote {where / 'tiny-clip-vision'} and {where / 'tiny-llama'}")
