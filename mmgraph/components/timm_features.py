"""The feature levels of the timm architectures `timm_backbone` can type, without torch or
timm: for each, timm's `model.feature_info` as (channels, reduction) per level, shallow to
deep. Level i is what `timm.create_model(name, features_only=True, out_indices=(i,))` gives:
channels x H/reduction x W/reduction for an image whose sides are multiples of the
reduction.

Data, not code: tests/test_backbones.py builds every architecture here with timm (on the meta
device, so without memory or time) and compares, printing the right entry when one drifts.
To add an architecture, add its line with the numbers that test prints."""

from __future__ import annotations

FEATURES: dict[str, tuple[tuple[int, int], ...]] = {
    "resnet18": ((64, 2), (64, 4), (128, 8), (256, 16), (512, 32)),
    "resnet34": ((64, 2), (64, 4), (128, 8), (256, 16), (512, 32)),
    "resnet50": ((64, 2), (256, 4), (512, 8), (1024, 16), (2048, 32)),
    "resnet101": ((64, 2), (256, 4), (512, 8), (1024, 16), (2048, 32)),
    "resnet152": ((64, 2), (256, 4), (512, 8), (1024, 16), (2048, 32)),
    "resnet50d": ((64, 2), (256, 4), (512, 8), (1024, 16), (2048, 32)),
    "resnet101d": ((64, 2), (256, 4), (512, 8), (1024, 16), (2048, 32)),
    "resnext50_32x4d": ((64, 2), (256, 4), (512, 8), (1024, 16), (2048, 32)),
    "resnext101_32x8d": ((64, 2), (256, 4), (512, 8), (1024, 16), (2048, 32)),
    "wide_resnet50_2": ((64, 2), (256, 4), (512, 8), (1024, 16), (2048, 32)),
    "efficientnet_b0": ((16, 2), (24, 4), (40, 8), (112, 16), (320, 32)),
    "efficientnet_b1": ((16, 2), (24, 4), (40, 8), (112, 16), (320, 32)),
    "efficientnet_b2": ((16, 2), (24, 4), (48, 8), (120, 16), (352, 32)),
    "efficientnet_b3": ((24, 2), (32, 4), (48, 8), (136, 16), (384, 32)),
    "efficientnet_b4": ((24, 2), (32, 4), (56, 8), (160, 16), (448, 32)),
    "efficientnet_b5": ((24, 2), (40, 4), (64, 8), (176, 16), (512, 32)),
    "tf_efficientnet_b0": ((16, 2), (24, 4), (40, 8), (112, 16), (320, 32)),
    "tf_efficientnet_b1": ((16, 2), (24, 4), (40, 8), (112, 16), (320, 32)),
    "tf_efficientnet_b2": ((16, 2), (24, 4), (48, 8), (120, 16), (352, 32)),
    "tf_efficientnet_b3": ((24, 2), (32, 4), (48, 8), (136, 16), (384, 32)),
    "tf_efficientnet_b4": ((24, 2), (32, 4), (56, 8), (160, 16), (448, 32)),
    "tf_efficientnet_b5": ((24, 2), (40, 4), (64, 8), (176, 16), (512, 32)),
    "tf_efficientnet_b6": ((32, 2), (40, 4), (72, 8), (200, 16), (576, 32)),
    "tf_efficientnet_b7": ((32, 2), (48, 4), (80, 8), (224, 16), (640, 32)),
    "tf_efficientnet_l2": ((72, 2), (104, 4), (176, 8), (480, 16), (1376, 32)),
    "efficientnetv2_rw_s": ((24, 2), (48, 4), (64, 8), (160, 16), (272, 32)),
    "tf_efficientnetv2_s": ((24, 2), (48, 4), (64, 8), (160, 16), (256, 32)),
    "tf_efficientnetv2_m": ((24, 2), (48, 4), (80, 8), (176, 16), (512, 32)),
    "tf_efficientnetv2_l": ((32, 2), (64, 4), (96, 8), (224, 16), (640, 32)),
    "convnext_atto": ((40, 4), (80, 8), (160, 16), (320, 32)),
    "convnext_femto": ((48, 4), (96, 8), (192, 16), (384, 32)),
    "convnext_pico": ((64, 4), (128, 8), (256, 16), (512, 32)),
    "convnext_nano": ((80, 4), (160, 8), (320, 16), (640, 32)),
    "convnext_tiny": ((96, 4), (192, 8), (384, 16), (768, 32)),
    "convnext_small": ((96, 4), (192, 8), (384, 16), (768, 32)),
    "convnext_base": ((128, 4), (256, 8), (512, 16), (1024, 32)),
    "convnext_large": ((192, 4), (384, 8), (768, 16), (1536, 32)),
    "convnext_xlarge": ((256, 4), (512, 8), (1024, 16), (2048, 32)),
    "convnext_xxlarge": ((384, 4), (768, 8), (1536, 16), (3072, 32)),
    "swin_tiny_patch4_window7_224": ((96, 4), (192, 8), (384, 16), (768, 32)),
    "swin_small_patch4_window7_224": ((96, 4), (192, 8), (384, 16), (768, 32)),
    "swin_base_patch4_window7_224": ((128, 4), (256, 8), (512, 16), (1024, 32)),
    "swin_base_patch4_window12_384": ((128, 4), (256, 8), (512, 16), (1024, 32)),
    "swin_large_patch4_window7_224": ((192, 4), (384, 8), (768, 16), (1536, 32)),
    "swin_large_patch4_window12_384": ((192, 4), (384, 8), (768, 16), (1536, 32)),
    "swinv2_tiny_window8_256": ((96, 4), (192, 8), (384, 16), (768, 32)),
    "swinv2_base_window12_192": ((128, 4), (256, 8), (512, 16), (1024, 32)),
}


def architecture(name: str) -> str:
    """timm's architecture of a model name: `resnet50.a1_in1k` -> `resnet50`."""
    return name.split(".", 1)[0]
