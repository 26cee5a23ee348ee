"""Export attention whole: ONNX's fused `Attention` op (opset 23+) instead of MatMul/Softmax.

The attention faces decide how attention is written (mmgraph/components/nn/layers.py); this
switch, held by the exporter while it traces for a runtime that has the op (onnxruntime,
TensorRT >= 10.14), makes their fp16 path hand attention to scaled_dot_product_attention as
well, which torch's dynamo exporter writes as one `Attention` node.
"""

from __future__ import annotations

from contextlib import contextmanager

from mmgraph.components.nn.layers import FUSED_ATTENTION

OPSET = 23  # the first opset with `Attention`


@contextmanager
def fused_attention():
    token = FUSED_ATTENTION.set(True)
    try:
        yield
    finally:
        FUSED_ATTENTION.reset(token)
