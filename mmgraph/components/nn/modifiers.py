"""The torch side of the spec's modifiers: `frozen` and `lora(...)`.

(`shared(x)` needs no helper: the generated code assigns the same module twice.)
"""

from __future__ import annotations

import math
import types

import torch
from torch import nn

from mmgraph.components.nn.cache import held_runs


def _stay_in_eval(self, mode: bool = True):
    return nn.Module.train(self, False)


LORA_PARAMS = ("lora_a", "lora_b")


def freeze(module: nn.Module) -> nn.Module:
    """No gradients, and eval mode for good: a frozen tower's dropout stays off and its norms
    use their running statistics even while the rest of the model trains. LoRA adapters
    inside stay trainable: `frozen lora(...)` is how LoRA is meant to be used."""
    for name, p in module.named_parameters():
        p.requires_grad_(name.rsplit(".", 1)[-1] in LORA_PARAMS)
    module.train = types.MethodType(_stay_in_eval, module)
    module.eval()
    module._mm_frozen = True
    return module


def pin_frozen(module: nn.Module) -> nn.Module:
    """Frozen by the component itself, whatever a train stage says: LlamaFusion's frozen text
    modality inside a layer whose image modality trains. The trainer's set_trainable leaves
    every parameter under a module marked `_mm_pinned` frozen."""
    module.requires_grad_(False)
    module._mm_pinned = True
    return module


class LoRALinear(nn.Linear):
    """y = x W^T + b + (alpha / r) * x A^T B^T, with B = 0 at init: the layer starts exactly
    as the base layer. The base weight and bias keep their names and are frozen.

    With `segments` ((modality, length) runs of the token axis, one length None: the rest)
    the adapter's term is added at the tokens of `modalities` only (Arcana's per-modality
    LoRA); the other tokens get the base layer's output."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0,
                 modalities=(), segments=None):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(r, self.in_features, device=base.weight.device,
                                               dtype=base.weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, r, device=base.weight.device,
                                               dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = alpha / r
        self.drop = nn.Dropout(dropout)
        self.modalities, self.segments = tuple(modalities), segments

    def forward(self, x):
        out = nn.functional.linear(x, self.weight, self.bias)
        delta = (self.drop(x) @ self.lora_a.t() @ self.lora_b.t()) * self.scale
        if self.segments is not None:
            delta = delta * self.token_mask(x.shape[-2], x).unsqueeze(-1)
        return out + delta

    def token_mask(self, n: int, x):
        """1 at the positions (of the n the input holds) whose modality is adapted, else 0."""
        runs = held_runs(self.segments, n)
        return torch.cat([torch.full((length,), float(tag in self.modalities),
                                     dtype=x.dtype, device=x.device) for tag, length in runs])


def lora(module: nn.Module, r: int, alpha: float, targets=("q", "k", "v", "o"),
         dropout: float = 0.0, modalities=(), segments=None) -> nn.Module:
    """Wrap every nn.Linear named in `targets` (or every one, with targets=["all"]); with
    `segments`, adapters that act on the tokens of `modalities` only (see LoRALinear)."""
    extra = {"modalities": modalities, "segments": segments}
    if isinstance(module, nn.Linear) and not isinstance(module, LoRALinear):
        return LoRALinear(module, r, alpha, dropout, **extra)  # itself a linear map
    found = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and not isinstance(child, LoRALinear) and \
                    ("all" in targets or name in targets):
                setattr(parent, name, LoRALinear(child, r, alpha, dropout, **extra))
                found += 1
    if not found:
        raise ValueError(f"lora: no linear layer named {list(targets)} in "
                         f"{type(module).__name__}")
    return module
