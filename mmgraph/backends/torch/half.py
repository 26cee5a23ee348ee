"""An fp16 copy of a generated module that keeps its normalisations in fp32.

Which modules are normalisations is the torch faces' business, so it is decided here, next to
them, and export asks for `Half(part)` without knowing the faces.
"""

from __future__ import annotations

import copy

import torch

from mmgraph.components.nn.layers import RMSNorm

# Normalisations overflow or lose too much in fp16. Recurrent layers (gru, lstm) stay fp32
# too: onnxruntime crashes (a segfault, no error) building a session for an fp16 GRU graph.
FP32_MODULES = (torch.nn.LayerNorm, RMSNorm, torch.nn.RNNBase)


class Half(torch.nn.Module):
    """An fp16 copy of a part: fp16 weights and compute, fp32 normalisations (their modules
    stay fp32 and see fp32 inputs), float inputs and outputs cast at the edges so the part
    keeps the spec's dtypes."""

    def __init__(self, part: torch.nn.Module):
        super().__init__()
        self.part = copy.deepcopy(part).half()
        for module in self.part.modules():
            if isinstance(module, FP32_MODULES):
                module.float()
                module.register_forward_pre_hook(_to_fp32)
                module.register_forward_hook(_to_fp16)

    def forward(self, *args):
        args = [a.half() if a.is_floating_point() else a for a in args]
        out = self.part(*args)
        return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}


def _to_fp32(module, args):
    return tuple(a.float() if torch.is_tensor(a) and a.is_floating_point() else a
                 for a in args)


def _to_fp16(module, args, output):
    if isinstance(output, tuple):  # a recurrent layer: its sequence and its last state
        return tuple(o.half() if torch.is_tensor(o) and o.is_floating_point() else o
                     for o in output)
    return output.half()
