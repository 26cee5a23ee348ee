"""`hf_model(path=..., output=...)`: an escape hatch for towers mmgraph does not implement.

The layer wraps a local Hugging Face `transformers` model folder. Checking reads only its
config.json (no torch, no transformers): the output type follows from the config for a small,
explicit set of model types; any other is refused. The torch face loads the folder with
`AutoModel.from_pretrained(local_files_only=True, use_safetensors=True)`, never remote code.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mmgraph.components.common import seq, vec
from mmgraph.components.registry import Component, Params, Port, register
from mmgraph.ir.hf_config import read_hf_config

TEXT = {"bert", "roberta"}  # Tokens[B, T] -> Seq[B, T, hidden_size]
VISION = {"vit": 1, "clip_vision_model": 1}  # Image -> (H/patch)^2 + class tokens


def read_config(path, fail) -> dict:
    """config.json of a model folder as a dict; each problem calls `fail(message, hint)`."""
    return read_hf_config(path, fail, "model folder",
                          "path is a local Hugging Face folder (config.json and *.safetensors), "
                          "relative to the spec's folder")


def _int(cfg: dict, key: str, fail) -> int:
    v = cfg.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        fail(f"config.json has no positive integer '{key}' (got {v!r})", None)
    return v


@register
class HFModel(Component):
    name = "hf_model"
    category = "encoder"
    summary = "A local Hugging Face transformers model folder as one layer (escape hatch)"
    inputs = (Port("x"),)
    torch = "mmgraph.components.nn.hf:HFModel"

    class Params(Params):
        path: str = Field(min_length=1)
        output: Literal["last_hidden_state", "pooler_output"] = "last_hidden_state"

    def config(self, p, ctx) -> dict:
        def fail(message, hint):
            ctx.fail(f"{ctx.name}: {message}", hint=hint, code="E210", param="path")
        cfg = read_config(ctx.resolve(p.path), fail)
        kind = cfg.get("model_type")
        if kind not in TEXT and kind not in VISION:
            known = ", ".join(sorted(TEXT | set(VISION)))
            fail(f"model_type {kind!r} is not one hf_model can type (it reads {known})",
                 "declare the tower with mmgraph's own components, or add its model_type "
                 "to mmgraph/components/hf.py")
        return cfg

    def infer(self, p, x, ctx):
        cfg = self.config(p, ctx)
        kind = cfg["model_type"]
        fail = lambda m, h=None: ctx.fail(f"{ctx.name}: {m}", hint=h, code="E210",  # noqa: E731
                                          param="path")
        width = _int(cfg, "hidden_size", fail)
        t = x["x"]
        if kind in TEXT:
            ctx.expect_kind("x", t, "Tokens")
            n = t.dim("T")
            limit = _int(cfg, "max_position_embeddings", fail) - (2 if kind == "roberta" else 0)
            if n.is_Integer and int(n) > limit:
                ctx.fail(f"{ctx.name} takes at most {limit} tokens but {ctx.source('x')} "
                         f"gives {t}", "x")
        else:
            ctx.expect_kind("x", t, "Image")
            size, patch = _int(cfg, "image_size", fail), _int(cfg, "patch_size", fail)
            ctx.expect_dim("x", t, "C", _int(cfg, "num_channels", fail), "channels")
            ctx.expect_dim("x", t, "H", size, "image height")
            ctx.expect_dim("x", t, "W", size, "image width")
            n = (size // patch) ** 2 + VISION[kind]
        if p.output == "pooler_output":
            return vec(t.dim("B"), width, t.tags)
        return seq(t.dim("B"), n, width, t.tags)

    def torch_args(self, p, x, ctx):
        return {"folder": str(ctx.resolve(p.path)), "output": p.output}
