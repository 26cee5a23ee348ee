"""Recurrent sequence layers: GRU, LSTM and Mamba's selective state space (mmMamba, MultiModN,
PRE). Each reads a sequence left to right and keeps a state instead of attending.

They attend backwards only, but a generation step would have to carry their state from one
step to the next, and the generation cache (mm.cache) holds keys and values, not recurrent
states: their `sequence` rule stays "mixing", so a model built on them trains, runs and
exports but `mmgraph generate` says which layer prevents it (E701).
"""

from __future__ import annotations

from mmgraph.components.common import InputWidthSized, PosInt, Prob, seq, vec
from mmgraph.components.registry import Component, Params, Port, register


class _Recurrent(InputWidthSized, Component):
    """torch.nn.GRU/LSTM over a sequence: every step's output, and the last step's state as
    the extra output `last` (both directions side by side when bidirectional)."""

    category = "layer"
    inputs = (Port("x"),)

    class Params(Params):
        hidden: PosInt | None = None  # the state's width; the input's width when not given
        layers: PosInt = 1
        bidirectional: bool = False
        bias: bool = True
        dropout: Prob = 0.0  # between stacked layers, as torch applies it

    def outputs(self, p):
        return ("out", "last")

    def infer(self, p, x, ctx):
        t = x["x"]
        ctx.expect_kind("x", t, "Seq")
        if p.dropout and p.layers == 1:
            ctx.fail(f"{ctx.name}: dropout applies between stacked layers, and layers=1 has "
                     "none", code="E203", param="dropout",
                     hint="set layers=2 or more, or leave dropout out")
        width = (p.hidden or t.width) * (2 if p.bidirectional else 1)
        return {"out": seq(t.dim("B"), t.dim("N"), width, t.tags, t.dtype),
                "last": vec(t.dim("B"), width, t.tags, t.dtype)}


@register
class GRU(_Recurrent):
    name = "gru"
    summary = ("Gated recurrent unit over a sequence (torch.nn.GRU); extra output `last` is "
               "the final state")
    torch = "mmgraph.components.nn.recurrent:GRU"
    sequence_why = "keeps a recurrent state that generation does not carry yet"


@register
class LSTM(_Recurrent):
    name = "lstm"
    summary = ("Long short-term memory over a sequence (torch.nn.LSTM); extra output `last` "
               "is the final hidden state")
    torch = "mmgraph.components.nn.recurrent:LSTM"
    sequence_why = "keeps a recurrent state that generation does not carry yet"


@register
class Mamba(InputWidthSized, Component):
    name = "mamba"
    category = "layer"
    lora_targets = ("in_proj", "x_proj", "dt_proj", "out_proj")
    summary = ("Mamba-1 mixer: input projection, causal depthwise conv, selective scan with "
               "input-dependent dt/B/C, D skip, SiLU gate, output projection")
    inputs = (Port("x"),)
    torch = "mmgraph.components.nn.recurrent:Mamba"
    sequence_why = "keeps a recurrent state that generation does not carry yet"

    class Params(Params):
        state: PosInt = 16  # d_state, the SSM state per channel
        conv: PosInt = 4  # the causal convolution's kernel
        expand: PosInt = 2  # inner width = expand * input width
        dt_rank: PosInt | None = None  # the rank of dt's projection; ceil(width / 16) if unset
        bias: bool = False  # on in_proj and out_proj
        conv_bias: bool = True

    def infer(self, p, x, ctx):
        ctx.expect_kind("x", x["x"], "Seq")
        return x["x"]
