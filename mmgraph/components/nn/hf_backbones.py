"""The torch face of `hf_backbone` (mmgraph/components/hf_backbones.py): transformers'
ResNetBackbone, ConvNextBackbone and SwinBackbone with the chosen stages as `out_features`,
and EfficientNetModel read at its stage ends. The modules are transformers' own, so a
transformers checkpoint's tensors load by their names.

Stages deeper than the deepest chosen level are cut off (and Swin's final norm, which the
backbone computes but never returns): weights that never reach an output would get no
gradient and only cost memory."""

from __future__ import annotations

import math

from torch import nn

from mmgraph.components.nn.backbones import load_problems, shape_levels
from mmgraph.errors import UserError

STAGE_NAMES = ("stem",) + tuple(f"stage{i}" for i in range(1, 9))


class HFBackboneError(UserError):
    """A weights folder that does not hold the backbone the spec declares."""


def _classes(family: str):
    import transformers as tf  # only when such a layer is built

    return {"resnet": (tf.ResNetConfig, tf.ResNetBackbone),
            "convnext": (tf.ConvNextConfig, tf.ConvNextBackbone),
            "swin": (tf.SwinConfig, tf.SwinBackbone),
            "efficientnet": (tf.EfficientNetConfig, tf.EfficientNetModel)}[family]


def _config(family: str, fields: dict, weights: str | None):
    """The spec's config, or the weights folder's (its other fields, e.g. EfficientNet's
    padding or ResNet's stride placement, decide the outputs), which must agree with the
    spec's sizes."""
    config_class, _ = _classes(family)
    if weights is None:
        return config_class(**fields)
    try:
        config = config_class.from_pretrained(weights, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise HFBackboneError(f"hf_backbone cannot read the config of {weights}: "
                              f"{' '.join(str(exc).split())[:300]}") from None
    for key, want in fields.items():
        if key == "image_size":
            setattr(config, key, want)  # Swin's masks follow the spec's image
        elif getattr(config, key, None) != want:
            raise HFBackboneError(f"hf_backbone: {weights}/config.json has {key}="
                                  f"{getattr(config, key, None)!r} but the spec declares "
                                  f"{want!r}")
    return config


def _load(model_class, config, weights: str):
    """from_pretrained, offline and safetensors only, refusing a checkpoint that leaves
    any of the backbone's tensors at random: the new output norms of a ConvNeXt or Swin
    backbone aside, which a classifier checkpoint never has."""
    try:
        model, info = model_class.from_pretrained(weights, config=config, local_files_only=True,
                                                  use_safetensors=True, trust_remote_code=False,
                                                  output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise HFBackboneError(f"hf_backbone could not load {weights}: "
                              f"{' '.join(str(exc).split())[:300]}") from None
    missing = sorted(k for k in info.get("missing_keys", ())
                     if not k.startswith(("hidden_states_norms.", "swin.layernorm.")))
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k)
                        for k in info.get("mismatched_keys", ()))
    if missing or mismatched:
        raise HFBackboneError(f"hf_backbone could not load {weights}: " + load_problems(
            (missing, "tensors missing"), (mismatched, "tensors of another shape")))
    return model


def init_efficientnet(model: nn.Module) -> None:
    """EfficientNet's own initialisation for training from scratch (the TF reference's
    variance scaling, as timm has it): convolutions from N(0, 2 / fan_out), fan_out counted
    per group (k*k for a depthwise conv), batch norms at scale 1. transformers draws every
    conv and batch-norm scale from N(0, 0.02), fine under loaded weights, but then a random
    network's features shrink about 50-fold per block and underflow to exactly 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            k_h, k_w = m.kernel_size
            fan_out = k_h * k_w * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class HFBackbone(nn.Module):
    """A transformers vision backbone over Image[B, C, H, W], built from `config` (the spec's
    fields under transformers' names) with random weights, or loaded from the local folder
    `weights`; returns the chosen `levels` (0 the stem, 1.. the stages) shaped by `output`."""

    def __init__(self, *, family: str, config: dict, levels: tuple[int, ...], output: str,
                 weights: str | None):
        super().__init__()
        config = _config(family, dict(config), weights)
        self.family, self.levels, self.output = family, tuple(levels), output
        deepest = self.levels[-1]
        if family != "efficientnet":
            config.out_features = [STAGE_NAMES[i] for i in self.levels]
        _, model_class = _classes(family)
        self.model = model_class(config) if weights is None else \
            _load(model_class, config, weights)
        self.model.config.return_dict = True
        if family == "efficientnet" and weights is None:
            init_efficientnet(self.model)
        if family == "efficientnet":
            repeats = [int(math.ceil(config.depth_coefficient * n))
                       for n in config.num_block_repeats]
            # hidden_states index of each level: the stem, each stage's last block, the top
            self.ends = [0] + [sum(repeats[:i + 1]) for i in range(len(repeats))]
            self.ends.append(self.ends[-1])
            encoder = self.model.encoder
            encoder.blocks = encoder.blocks[:self.ends[deepest]]
            self.top = deepest == len(self.ends) - 1
            if not self.top:
                encoder.top_conv = encoder.top_bn = None
        else:
            stages = self._stages()
            del stages[deepest:]
            if family == "swin":
                self.model.swin.layernorm = nn.Identity()
                if deepest:
                    stages[-1].downsample = None

    def _stages(self) -> nn.ModuleList:
        if self.family == "swin":
            return self.model.swin.encoder.layers
        return self.model.encoder.stages

    def forward(self, image):
        if self.family != "efficientnet":
            return shape_levels(self.model(image).feature_maps, self.output)
        encoder = self.model.encoder
        x = self.model.embeddings(image)
        states = [x]
        for block in encoder.blocks:
            x = block(x)
            states.append(x)
        features = [states[self.ends[i]] for i in self.levels]
        if self.top:
            features[-1] = encoder.top_activation(encoder.top_bn(encoder.top_conv(x)))
        return shape_levels(features, self.output)

