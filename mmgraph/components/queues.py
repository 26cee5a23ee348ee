"""Feature queues: the embeddings of earlier batches, kept as extra negatives or targets
(MoCo's key queue, ALBEF's momentum-distillation queues, SkySense's)."""

from __future__ import annotations

from mmgraph.components.common import PosInt, in_width
from mmgraph.components.registry import Component, Params, Port, register
from mmgraph.ir import types as T


@register
class FeatureQueue(Component):
    name = "feature_queue"
    category = "layer"
    summary = ("The last `size` rows of `x` from earlier training passes, oldest first "
               "(zeros until filled); each training pass then adds its global batch")
    inputs = (Port("x"),)
    torch = "mmgraph.components.nn.queues:FeatureQueue"
    has_weights = True  # no parameters, but a state (the queue) the checkpoints keep

    class Params(Params):
        size: PosInt

    def infer(self, p, x, ctx):
        v = x["x"]
        ctx.expect_kind("x", v, "Vec")
        return T.make("Vec", (p.size, v.width), v.dtype, v.tags)

    def torch_args(self, p, x, ctx):
        return {"size": p.size, "width": in_width(ctx, x, "x")}
