"""Torch faces of mmgraph/components/backbones.py: a timm image model with `features_only=True`,
and wav2vec2's convolutional feature encoder (its module names are transformers', so a
Wav2Vec2FeatureEncoder's state dict loads as it is)."""

from __future__ import annotations

import torch
from torch import nn

from mmgraph.components.nn.layers import make_act
from mmgraph.errors import UserError


class BackboneError(UserError):
    """A backbone that cannot be built as the spec asks: timm missing, a name this timm does
    not know, weights that do not fit."""


def import_timm():
    try:
        import timm
    except (ImportError, RuntimeError) as exc:  # timm missing, or a torchvision built for
        # another torch, which fails registering its operators
        reason = " ".join(str(exc).split())[:200]
        raise BackboneError(
            f"timm_backbone needs timm ({type(exc).__name__}: {reason}): pip install "
            f"\"mmgraph[vision]\" (timm and the torchvision built for torch "
            f"{torch.__version__})") from None
    return timm


# tensors timm's checkpoint filters resize to the model's image and window size (Swin's
# relative position tables, absolute position embeddings), so their shapes may differ
RESIZED = ("relative_position_bias_table", "absolute_pos_embed", "pos_embed")


def check_weights(timm, model: str, weights: str, kwargs: dict) -> None:
    """The file must hold the model's tensors, by name and shape, its classifier aside: timm
    loads a feature backbone's weights non-strictly, so a file of another model would load
    nothing and leave the random weights, silently."""
    from safetensors import safe_open

    with torch.device("meta"):
        full = timm.create_model(model, num_classes=0, **kwargs)
    want = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    cfg = full.pretrained_cfg
    heads = cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    adapted = f"{cfg.get('first_conv')}.weight" if kwargs.get("in_chans", 3) != 3 else None
    try:
        with safe_open(weights, "pt") as f:
            got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()
                   if not any(k.startswith(h + ".") for h in heads)}
    except (OSError, ValueError, RuntimeError) as exc:  # safetensors' own errors among them
        raise BackboneError(f"timm_backbone cannot read {weights}: {exc}") from None
    missing = sorted(k for k in set(want) - set(got) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(got) - set(want))
    shapes = sorted(k for k in set(want) & set(got) if want[k] != got[k] and k != adapted
                    and not k.endswith(RESIZED))
    if missing or unexpected or shapes:
        raise BackboneError(f"timm_backbone could not load {weights} into {model}: "
                            + load_problems((missing, "tensors missing"),
                                            (unexpected, "unexpected tensors"),
                                            (shapes, "tensors of another shape"))
                            + " (weights must be the timm model's own safetensors file)")


def load_problems(*groups: tuple[list[str], str]) -> str:
    """`N what (a, b, c, d and M more)` for each non-empty (names, what), joined by '; ':
    what a weights file lacks or has wrong, short enough for one error line."""
    def few(names):
        return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return "; ".join(f"{len(names)} {what} ({few(names)})" for names, what in groups if names)


def shape_levels(features, output: str):
    """Feature maps [B, C, H, W] as the spec asked: grids as they are, tokens row by row
    [B, H*W, C], or pooled [B, C] (the spatial mean, in fp32 for fp16 maps); the deepest one
    first, then the others shallow to deep (`out`, then the `levelK` outputs)."""
    out = []
    for f in features:
        if output == "tokens":
            f = f.flatten(2).transpose(1, 2)
        elif output == "pooled":
            f = f.float().mean((2, 3)).to(f.dtype)
        out.append(f)
    return out[-1] if len(out) == 1 else (out[-1], *out[:-1])


class TimmBackbone(nn.Module):
    """`timm.create_model(model, features_only=True, out_indices=...)`, never downloading:
    random weights, or the local safetensors file `weights` (the timm model's own tensor
    names, checked first) loaded by timm's pretrained loader, which drops the classifier."""

    def __init__(self, *, model: str, out_indices: tuple[int, ...], output: str,
                 weights: str | None, in_channels: int, image_size: tuple[int, int]):
        super().__init__()
        timm = import_timm()
        arch = model.split(".")[0]
        if not timm.is_model(arch):
            raise BackboneError(f"timm {timm.__version__} has no model '{arch}' (timm_backbone "
                                f"model=\"{model}\"): upgrade timm or choose another model")
        kwargs = {"features_only": True, "out_indices": tuple(out_indices),
                  "in_chans": in_channels}
        if arch.startswith("swin"):
            kwargs["img_size"] = tuple(image_size)  # its attention masks are sized by it
        if weights is not None:
            check_weights(timm, model, weights, {k: v for k, v in kwargs.items()
                                                 if k not in ("features_only", "out_indices")})
            # timm's own loader reads a local file when the pretrained config names one and
            # no hub source overrides it (source "")
            kwargs["pretrained_cfg_overlay"] = {"file": weights, "source": ""}
        try:
            self.body = timm.create_model(model, pretrained=weights is not None, **kwargs)
        except (RuntimeError, ValueError, OSError) as exc:
            if weights is None:
                raise
            reason = " ".join(str(exc).split())[:300]
            raise BackboneError(f"timm_backbone could not load {weights} into {model}: "
                                f"{reason}") from None
        self.output = output
        # some families (Swin) give their levels channels last
        fmt = getattr(self.body, "output_fmt", None)
        self.channels_last = getattr(fmt, "name", fmt) == "NHWC"

    def forward(self, image):
        features = self.body(image)
        if self.channels_last:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return shape_levels(features, self.output)


class ConvLayer(nn.Module):
    """One layer of wav2vec2's feature encoder: conv, optional norm, activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int,
                 bias: bool, norm: str | None, act: str):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=bias)
        self.norm = norm
        if norm == "group":
            self.layer_norm = nn.GroupNorm(out_channels, out_channels, affine=True)
        elif norm == "layer":
            self.layer_norm = nn.LayerNorm(out_channels, elementwise_affine=True)
        self.activation = make_act(act)

    def forward(self, x):
        x = self.conv(x)
        if self.norm == "group":
            x = self.layer_norm(x)
        elif self.norm == "layer":
            x = self.layer_norm(x.transpose(-2, -1)).transpose(-2, -1)
        return self.activation(x)


class ConvFrontend(nn.Module):
    """Audio[B, S] -> Seq[B, N, channels[-1]] through strided 1-D convolutions."""

    def __init__(self, *, channels: tuple[int, ...], kernels: tuple[int, ...],
                 strides: tuple[int, ...], norm: str, bias: bool, act: str):
        super().__init__()
        ins = (1,) + tuple(channels[:-1])
        self.conv_layers = nn.ModuleList([
            ConvLayer(i, o, k, s, bias, norm if norm == "layer" or n == 0 else None, act)
            for n, (i, o, k, s) in enumerate(zip(ins, channels, kernels, strides))])

    def forward(self, audio):
        x = audio[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x.transpose(1, 2)
