"""Torch faces of mmgraph/components/video.py."""

from __future__ import annotations

from torch import nn


class TubeletEmbed(nn.Module):
    """mmgraph's Video[B, F, C, H, W] through a Conv3d over [B, C, F, H, W] with kernel =
    stride = (tubelet, patch, patch); tokens ordered time, then row, then column."""

    def __init__(self, *, in_channels: int, patch: int, tubelet: int, width: int, bias: bool):
        super().__init__()
        size = (tubelet, patch, patch)
        self.proj = nn.Conv3d(in_channels, width, size, stride=size, bias=bias)

    def forward(self, video):
        x = self.proj(video.transpose(1, 2))  # [B, D, F/t, H/p, W/p]
        return x.flatten(2).transpose(1, 2)
