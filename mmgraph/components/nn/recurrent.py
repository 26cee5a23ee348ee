"""Recurrent sequence layers as torch modules (the faces of mmgraph/components/recurrent.py).

GRU and LSTM are torch's own modules, so their weights keep torch's names and they export
as ONNX's GRU/LSTM ops. Mamba is written in plain PyTorch: the `mamba_ssm` kernels need
CUDA, and a plain scan runs anywhere and exports. The scan loops over time; eagerly that is a
Python loop, and while exporting the same recurrence is a TorchScript function, which the
exporter writes as an ONNX `Loop` so that the sequence length stays dynamic (a traced Python
loop would be unrolled to the example's length).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _last_state(h: torch.Tensor, directions: int) -> torch.Tensor:
    """[layers * directions, B, H] -> the top layer's final state, [B, directions * H]."""
    return torch.cat(list(h[-directions:]), dim=-1)


class GRU(nn.GRU):
    def __init__(self, *, in_width: int, hidden: int | None, layers: int, bidirectional: bool,
                 bias: bool, dropout: float):
        super().__init__(in_width, hidden or in_width, num_layers=layers, bias=bias,
                         batch_first=True, dropout=dropout, bidirectional=bidirectional)

    def forward(self, x):
        out, h = super().forward(x)
        return out, _last_state(h, 2 if self.bidirectional else 1)


class LSTM(nn.LSTM):
    def __init__(self, *, in_width: int, hidden: int | None, layers: int, bidirectional: bool,
                 bias: bool, dropout: float):
        super().__init__(in_width, hidden or in_width, num_layers=layers, bias=bias,
                         batch_first=True, dropout=dropout, bidirectional=bidirectional)

    def forward(self, x):
        out, (h, _) = super().forward(x)
        return out, _last_state(h, 2 if self.bidirectional else 1)


# ---------------------------------------------------------------- Mamba

def selective_scan(u, delta, A, B, C):
    """h_t = exp(delta_t A) h_(t-1) + delta_t B_t u_t and y_t = C_t . h_t, per channel.

    u, delta: [B, E, N]; A: [E, S]; B, C: [B, N, S]. Returns y: [B, E, N]. The state is
    [B, E, S]; the discretised A and B u are computed for all steps at once, only the
    recurrence itself runs step by step. The steps are unbound rather than indexed: the
    backward pass of N index operations would write N full-size gradients.
    """
    decay = torch.exp(delta.unsqueeze(-1) * A.unsqueeze(1)).permute(2, 0, 1, 3)  # [N, B, E, S]
    drive = (delta.unsqueeze(-1) * B.unsqueeze(1) * u.unsqueeze(-1)).permute(2, 0, 1, 3)
    readout = C.transpose(0, 1).unsqueeze(2)  # [N, B, 1, S]
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype, device=u.device)
    ys = []
    for a, b, c in zip(decay.unbind(0), drive.unbind(0), readout.unbind(0)):
        h = a * h + b
        ys.append((h * c).sum(-1))
    return torch.stack(ys, dim=-1)


def selective_scan_for_export(u, delta, A, B, C):
    """`selective_scan` as the exporter should see it: the outputs are written into a
    tensor made before the loop rather than collected in a list, so that the ONNX `Loop`
    carries fixed-shape values only (TensorRT refuses the Sequence ops a list becomes, and
    scan outputs of a dynamic trip count)."""
    decay = torch.exp(delta.unsqueeze(-1) * A.unsqueeze(1)).permute(2, 0, 1, 3)  # [N, B, E, S]
    drive = (delta.unsqueeze(-1) * B.unsqueeze(1) * u.unsqueeze(-1)).permute(2, 0, 1, 3)
    readout = C.transpose(0, 1).unsqueeze(2)  # [N, B, 1, S]
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype, device=u.device)
    y = torch.zeros(u.shape[2], u.shape[0], u.shape[1], dtype=u.dtype, device=u.device)
    for t in range(u.shape[2]):
        h = decay[t] * h + drive[t]
        y[t] = (h * readout[t]).sum(-1)
    return y.permute(1, 2, 0)


_SCRIPTED: list = []


def _scripted_scan():
    """The export's scan as TorchScript, made on first export (scripting costs a moment)."""
    if not _SCRIPTED:
        _SCRIPTED.append(torch.jit.script(selective_scan_for_export))
    return _SCRIPTED[0]


class Mamba(nn.Module):
    """The Mamba-1 mixer (Gu & Dao 2023), laid out and named as transformers' MambaMixer so
    that its weights load by name: in_proj -> (x, z); x -> causal depthwise conv1d -> SiLU;
    x_proj(x) -> dt, B, C; dt_proj + softplus -> delta; selective scan + D x; * SiLU(z);
    out_proj. No norm or residual: put those around it in the spec, as a block does."""

    def __init__(self, *, in_width: int, state: int, conv: int, expand: int,
                 dt_rank: int | None, bias: bool, conv_bias: bool):
        super().__init__()
        inner = expand * in_width
        self.dt_rank = dt_rank or math.ceil(in_width / 16)
        self.state = state
        self.in_proj = nn.Linear(in_width, 2 * inner, bias=bias)
        self.conv1d = nn.Conv1d(inner, inner, kernel_size=conv, groups=inner, padding=conv - 1,
                                bias=conv_bias)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner, bias=True)
        # S4D-real initialisation of A (-1, -2, ... per channel), D = 1, and dt's bias so that
        # softplus(bias) lies in [1e-3, 1e-1], as Mamba initialises them
        self.A_log = nn.Parameter(torch.log(torch.arange(1, state + 1, dtype=torch.float32))
                                  .repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))
        with torch.no_grad():
            dt = torch.exp(torch.rand(inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.out_proj = nn.Linear(inner, in_width, bias=bias)

    def forward(self, x):
        n = x.shape[1]
        u, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)  # [B, E, N] each
        u = F.silu(self.conv1d(u)[..., :n])
        dt, B, C = torch.split(self.x_proj(u.transpose(1, 2)),
                               [self.dt_rank, self.state, self.state], dim=-1)
        delta = F.softplus(self.dt_proj(dt)).transpose(1, 2)  # [B, E, N]
        A = -torch.exp(self.A_log.float())
        scan = selective_scan
        if torch.onnx.is_in_onnx_export() and not torch.compiler.is_exporting():
            scan = _scripted_scan()
        y = scan(u.float(), delta.float(), A, B.float(), C.float()).to(u.dtype)
        y = (y + u * self.D[:, None].to(u.dtype)) * F.silu(z)
        return self.out_proj(y.transpose(1, 2))
