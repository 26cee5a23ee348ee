"""`mmgraph export` of a model that generates: context, prefill and decode ONNX graphs.

A part computes the logits of a whole sequence; generating with it would recompute every
position for every new token. A model with a decoding plan (`g.decoding`, see
mmgraph/ir/passes/decoding.py) also gets the graphs a generation loop runs, in optimum's
convention so that the KV cache stays outside the graph:

- context (`generate_context.onnx`, or the spec's own part that computes exactly the context
  values from the context inputs): image... -> the values every step reads, once per request;
- prefill (`generate_prefill.onnx`): those values, the left-padded prompt `tokens` [B, T] and
  `attention_mask` [B, T] -> `logits` of every position, `present.N.key/value`
  [B, kv_heads, prefix + T, dim_head] of every causal self-attention call, and
  `cross.N.key/value` [B, kv_heads, M, dim_head], each cross-attention call's keys/values of
  the context, projected once here (not recomputed per step from the context values); M is
  the context's own length (`4 + S` for patches and a prompt of S tokens), a dynamic axis
  when the context's length varies with the export dims;
- decode (`generate_decode.onnx`): the new tokens [B, new_len], `attention_mask`
  [B, mask_len] (every token so far, the new ones included), `past_key_values.N.key/value`
  [B, kv_heads, past_len, dim_head] and the cross keys/values -> `logits` [B, new_len, V] and
  the grown `present.N.key/value`. Context values a decode step does not read (a decoder's
  prefix, read on the first step only) are not its inputs.

The dims: batch and T are the spec's export dims; `past_len` runs from prefix + 1 to
prefix + T max - 1, `mask_len` from 2 to T max (a prompt and its new tokens fit in T), and
`new_len` is 1 (dynamic in the graph, 1 in TensorRT's profile). The cross length M takes the
name of the context value's dim it equals at every point (`cross_len_N`, a decoder dim, when
none does) and spans the context's min..max in the profiles. Each graph is proved like a
part: at the min, opt and max sizes, the same prompts run through PyTorch with the cache
(`mm.cache`) and through onnxruntime, prefill and then decode steps each fed its own
backend's cache, and the logits and keys/values of every step must agree within the target's
tolerance. The manifest's `generate` section says all of it; a model that cannot generate
gets `cannot_generate` (the decoding pass's reason) instead, and its export is unchanged.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import sympy
import torch

from mmgraph.backends.torch.decoding import (
    CROSS,
    MASK,
    PAST,
    PRESENT,
    ContextStep,
    DecodeStep,
    PrefillStep,
    step_cache,
)
from mmgraph.backends.torch.half import Half
from mmgraph.backends.torch.inputs import concrete_shape
from mmgraph.export.onnx_parts import (
    ONNX_DTYPES,
    check_onnx,
    compare_outputs,
    onnx_session,
    random_inputs,
    simplify,
    tensor_info,
    trace_export,
    writing,
)
from mmgraph.export.targets import Target
from mmgraph.ir import types as T
from mmgraph.ir.graph import Graph, Ref
from mmgraph.runtime import manifest as manifest_file

POINTS = ("min", "opt", "max")
CONTEXT, PREFILL, DECODE = "generate_context", "generate_prefill", "generate_decode"


def export_generation(model, g: Graph, target: Target, out: Path, ranges: dict,
                      manifest: dict, log=print) -> None:
    """Write the generation graphs of `model` into `out` and `manifest['generate']`, or
    `manifest['cannot_generate']` when the model has no decoding plan."""
    if g.decoding is None:
        problem = g.decoding_problem
        if problem is not None:
            manifest["cannot_generate"] = \
                f"{problem.message} ({Path(problem.span.path).name}:{problem.span.line})"
        return
    t0 = time.perf_counter()
    graphs = DecoderGraphs(model, g, ranges)
    why = graphs.cannot()
    if why:
        manifest["cannot_generate"] = why
        log(f"no generation graphs: {why}")
        return
    section = graphs.describe()
    section["context"] = graphs.reused_context(manifest["parts"])
    if section["context"] is None and graphs.frontier:
        section["context"] = graphs.write(graphs.context_module(), CONTEXT, out, target,
                                          manifest)
    for name, module in ((PREFILL, graphs.prefill_module()), (DECODE, graphs.decode_module())):
        section[name.removeprefix("generate_")] = graphs.write(module, name, out, target,
                                                               manifest)
    graphs.prove(section, out, target)
    section["seconds"] = time.perf_counter() - t0
    manifest["generate"] = section
    worst = max(o["max_abs"] for key in ("prefill", "decode")
                for o in section[key]["parity"]["fp32"].values())
    log(f"generation: {section['prefill']['onnx']}, {section['decode']['onnx']} "
        f"({graphs.self_slots} cached attention layers, {graphs.cross_slots} cross), "
        f"per-step parity fp32 max abs {worst:.2e}")


def trt_graphs(manifest: dict) -> list[dict]:
    """The generation graphs TensorRT builds (onnx_parts._trt_parts picks their fp16 files as
    it does the parts'), their profiles spanning the past length: context (unless a part
    computes it), prefill and decode."""
    section = manifest.get("generate")
    if not section:
        return []
    return [section[k] for k in ("context", "prefill", "decode")
            if section[k] is not None and not section[k].get("reuses_part")]


def _value_name(g: Graph, ref: Ref) -> str:
    """The spec's name of a frontier value (`v = ...`), else node_port. A model input read
    as it is (a prefix given by the caller) is `<input>_context`: an ONNX graph cannot name
    an output after its own input, which the context graph would otherwise do."""
    if ref.node in g.inputs:
        return f"{ref.node}_context"
    for name, r in {**g.values, **g.outputs}.items():
        if r == ref:
            return name
    return f"{ref.node}_{ref.port}".replace(".", "_")


def _axes(infos: list[dict]) -> dict[str, dict[int, str]]:
    return {i["name"]: {a: str(d).replace(" ", "") for a, d in enumerate(i["shape"])
                        if isinstance(d, str)}
            for i in infos if any(isinstance(d, str) for d in i["shape"])}


def _info(name: str, dtype: str, shape: list, **extra) -> dict:
    return {"name": name, "dtype": dtype, "shape": shape, **extra}


class DecoderGraphs:
    """The generation graphs of one model: their tensors, modules, export and proof."""

    def __init__(self, model, g: Graph, ranges: dict):
        self.model, self.g, self.ranges = model, g, ranges
        plan = g.decoding
        self.plan = plan
        self.frontier = [_value_name(g, Ref(n, p)) for n, p in plan.frontier]
        self.frontier_types = [g.type_of(Ref(n, p)) for n, p in plan.frontier]
        tokens_type = g.nodes[plan.tokens].type
        self.batch_dim, self.tokens_dim = tokens_type.dims[0], tokens_type.dims[1]
        # cached positions before the tokens (a prefix, a picture's tokens), measured per point
        self.prefixes: dict[str, int] = {}
        self.prefix_problem = ""
        self.tokens_range = self._range(self.tokens_dim)
        low, opt, high = (self.tokens_range[p] for p in POINTS)
        # decode: a prompt of mask_len - 1 tokens, one new token; mask_len fits in T max
        self.mask_range = {"min": min(2, high), "opt": min(max(opt + 1, 2), high), "max": high}
        self.vocab = plan.vocab
        self.self_slots = self.cross_slots = 0
        self.slot_shapes: list[tuple[int, int]] = []  # (kv_heads, dim_head) per self slot
        # (kv_heads, length, dim_head) per cross slot; the length is an int when the context's
        # length is fixed, else the name of its dynamic axis
        self.cross_shapes: list[tuple[int, int | str, int]] = []
        self.cross_dims: dict[str, dict[str, int]] = {}  # cross lengths no context dim names
        # the torch model's context values per (point, seed): the same for every prompt length
        self._contexts: dict[tuple[str, int], tuple] = {}
        if high >= 2:
            self._measure()

    # ------------------------------------------------------------------ sizes
    def _range(self, dim) -> dict[str, int]:
        return {p: _at(dim, self.dims(p)) for p in POINTS}

    def dims(self, point: str) -> dict[str, int]:
        return {k: v[point] for k, v in self.ranges.items()}

    def prefix(self, point: str) -> int:
        return self.prefixes[point]

    def batch(self, point: str) -> int:
        return _at(self.batch_dim, self.dims(point))

    def gen_dims(self) -> dict[str, dict[str, int]]:
        mask = self.mask_range
        return {"new_len": {"min": 1, "opt": 1, "max": 1}, "mask_len": dict(mask),
                "past_len": {p: mask[p] - 1 + self.prefix(p) for p in POINTS},
                **self.cross_dims}

    def cannot(self) -> str | None:
        t = T.format_dim(self.tokens_dim)
        if self.tokens_range["max"] < 2:
            return (f"the export range of {self.plan.tokens}'s dim {t} ends at "
                    f"{self.tokens_range['max']}: no room for a generated token")
        if self.prefix_problem:
            return self.prefix_problem
        if self.self_slots == 0:
            return "the step has no causal self-attention whose keys/values a cache could hold"
        if self.frontier and not self.plan.context_inputs:
            return (f"the step reads {', '.join(self.frontier)}, computed from no input: a "
                    "context graph needs at least one")
        return None

    def _measure(self) -> None:
        """Count the cache slots (and their shapes) with one prefill at the opt sizes, and
        the positions the cache holds before the tokens at each point (from prefills of one
        and two tokens: the cache must grow with the tokens, one position each), and the
        length of every cross slot's context at each point."""
        cross_lengths: dict[str, list[int]] = {}
        for point in POINTS:
            held = []
            for length in (1, 2):
                values, tokens, mask = self.example(point, length, seed=0)
                cache = step_cache(self.model, values, tokens, mask)
                held.append(cache.self_kv[0][0].shape[2] - length if cache.self_kv else 0)
            cross_lengths[point] = [k.shape[2] for k, _ in cache.cross_kv]
            if held[0] != held[1]:
                self.prefix_problem = (f"the KV cache does not grow by one position per token "
                                       f"of {self.plan.tokens}")
            self.prefixes[point] = held[0]
        values, tokens, mask = self.example("opt", self.mask_range["opt"] - 1, seed=0)
        cache = step_cache(self.model, values, tokens, mask)
        self.self_slots, self.cross_slots = len(cache.self_kv), len(cache.cross_kv)
        self.slot_shapes = [(k.shape[1], k.shape[3]) for k, _ in cache.self_kv]
        self.cross_shapes = [
            (k.shape[1], self._cross_length(i, {p: cross_lengths[p][i] for p in POINTS}),
             k.shape[3]) for i, (k, _) in enumerate(cache.cross_kv)]

    def _cross_length(self, slot: int, lengths: dict[str, int]) -> int | str:
        """The cross keys/values' length axis: fixed when the context's length is, else the
        context's own dim (`4 + S`) that has the measured length at every point (the context
        a cross-attention reads is a frontier value), else a decoder dim of its own spanning
        the measured lengths (a layer that resizes its context)."""
        if len(set(lengths.values())) == 1:
            return lengths["opt"]
        for t in self.frontier_types:
            for d in t.dims[1:]:
                if not d.is_Integer and all(_at(d, self.dims(p)) == lengths[p] for p in POINTS):
                    return T.format_dim(d)
        name = f"cross_len_{slot}"
        self.cross_dims[name] = dict(lengths)
        return name

    # ------------------------------------------------------------------ tensors
    def _frontier_infos(self) -> list[dict]:
        out = []
        for name, t in zip(self.frontier, self.frontier_types):
            shape = [int(d) if d.is_Integer else T.format_dim(d) for d in t.dims]
            out.append(_info(name, ONNX_DTYPES[t.dtype], shape, kind=t.kind, type=str(t)))
        return out

    def _cache_infos(self, template: str, length, slots) -> list[dict]:
        return [_info(template.format(i, kv), "float32", [self._b(), heads, length, dim])
                for i, (heads, dim) in enumerate(slots) for kv in ("key", "value")]

    def _cross_infos(self) -> list[dict]:
        return [_info(CROSS.format(i, kv), "float32", [self._b(), heads, length, dim])
                for i, (heads, length, dim) in enumerate(self.cross_shapes)
                for kv in ("key", "value")]

    def _b(self):
        return int(self.batch_dim) if self.batch_dim.is_Integer else T.format_dim(self.batch_dim)

    def prefill_io(self) -> tuple[list[dict], list[dict]]:
        tokens = tensor_info(self.g, self.plan.tokens, self.ranges)
        tokens = {k: tokens[k] for k in ("name", "type", "kind", "dtype", "shape", "vocab")}
        mask = _info(MASK, "int64", list(tokens["shape"]))
        logits = tensor_info(self.g, self.plan.logits, self.ranges)
        logits = {k: logits[k] for k in ("name", "type", "kind", "dtype", "shape")}
        prefix = set(self.prefixes.values())
        positions = T.format_dim(prefix.pop() + self.tokens_dim) if len(prefix) == 1 \
            else "cache_len"
        inputs = self._frontier_infos() + [tokens, mask]
        outputs = [logits] + self._cache_infos(PRESENT, positions, self.slot_shapes) \
            + self._cross_infos()
        return inputs, outputs

    def decode_io(self) -> tuple[list[dict], list[dict]]:
        tokens = tensor_info(self.g, self.plan.tokens, self.ranges)
        tokens = {"name": tokens["name"], "kind": "Tokens", "dtype": tokens["dtype"],
                  "shape": [self._b(), "new_len"], "vocab": tokens["vocab"]}
        inputs = self._frontier_infos() + [tokens, _info(MASK, "int64", [self._b(), "mask_len"])]
        inputs += self._cache_infos(PAST, "past_len", self.slot_shapes) + self._cross_infos()
        logits = {"name": self.plan.logits, "kind": "Logits", "dtype": "float32",
                  "shape": [self._b(), "new_len", self.vocab]}
        outputs = [logits] + self._cache_infos(PRESENT, "past_len + new_len", self.slot_shapes)
        return inputs, outputs

    def context_io(self) -> tuple[list[dict], list[dict]]:
        inputs = [tensor_info(self.g, n, self.ranges) for n in self.plan.context_inputs]
        return inputs, self._frontier_infos()

    # ------------------------------------------------------------------ modules
    def context_module(self):
        return ContextStep(self.model, self.frontier).eval()

    def prefill_module(self):
        return PrefillStep(self.model, self.frontier, self.plan.logits).eval()

    def decode_module(self):
        return DecodeStep(self.model, self.frontier, self.plan.logits, self.self_slots,
                          self.cross_slots).eval()

    def describe(self) -> dict:
        prefix = {self.prefix(p) for p in POINTS}
        return {"tokens": self.plan.tokens, "logits": self.plan.logits, "vocab": self.vocab,
                "max_len": self.plan.max_len, "tokens_dim": T.format_dim(self.tokens_dim),
                "batch_dim": T.format_dim(self.batch_dim),
                "prefix": prefix.pop() if len(prefix) == 1 else None,
                "chat_template": (self.g.train.settings.get("chat_template")
                                  if self.g.train else None),
                "context_inputs": list(self.plan.context_inputs), "frontier": self.frontier,
                "self_layers": self.self_slots, "cross_layers": self.cross_slots,
                "dims": self.gen_dims()}

    def reused_context(self, parts: list[dict]) -> dict | None:
        """A part that computes the frontier from the context inputs alone serves as the
        context graph (no second copy of the vision tower on disk)."""
        for part in parts:
            inputs = {i["name"] for i in part["inputs"]}
            outputs = {o["name"] for o in part["outputs"]}
            if inputs == set(self.plan.context_inputs) and set(self.frontier) <= outputs:
                keep = ("name", "onnx", "onnx_fp16", "inputs", "outputs")
                return {**{k: part[k] for k in keep if k in part}, "reuses_part": part["name"]}
        return None

    # ------------------------------------------------------------------ inputs
    def example(self, point: str, length: int, seed: int):
        """Context values (through the torch model), left-padded prompts of `length` tokens
        (row r has r padding tokens, at least one real one) and their mask."""
        values = self._context_values(point, seed)
        gen = torch.Generator().manual_seed(seed)
        b = self.batch(point)
        tokens = torch.randint(0, self.vocab, (b, length), generator=gen)
        mask = torch.ones(b, length, dtype=torch.int64)
        for r in range(b):
            pad = min(r, length - 1)
            mask[r, :pad] = 0
            tokens[r, :pad] = 0
        return values, tokens, mask

    def _context_values(self, point: str, seed: int) -> tuple:
        """The context values of random context inputs at `point`, computed once."""
        key = (point, seed)
        if key not in self._contexts:
            dims = self.dims(point)
            context = random_inputs(self.g, list(self.plan.context_inputs), dims, seed=seed)
            with torch.no_grad():
                self._contexts[key] = tuple(self.model.generation_context(*context.values()))
        return self._contexts[key]

    def example_args(self, name: str) -> tuple:
        if name == CONTEXT:
            dims = self.dims("opt")
            return tuple(random_inputs(self.g, list(self.plan.context_inputs), dims).values())
        values, tokens, mask = self.example("opt", self.mask_range["opt"] - 1, seed=0)
        if name == PREFILL:
            return (*values, tokens, mask)
        with torch.no_grad():
            out = self.prefill_module()(*values, tokens, mask)
        new = torch.zeros(tokens.shape[0], 1, dtype=torch.int64)
        mask = torch.cat([mask, torch.ones_like(new)], dim=1)
        return (*values, new, mask, *self._cache_args(out))

    def _cache_args(self, out: dict) -> list:
        """The past and cross inputs of a decode step from the previous step's outputs
        (presents) and the prefill's (cross)."""
        past = [out[PRESENT.format(i, kv)] for i in range(self.self_slots)
                for kv in ("key", "value")]
        cross = [out[CROSS.format(i, kv)] for i in range(self.cross_slots)
                 for kv in ("key", "value")]
        return past + cross

    # ------------------------------------------------------------------ writing
    def io(self, name: str):
        return {CONTEXT: self.context_io, PREFILL: self.prefill_io,
                DECODE: self.decode_io}[name]()

    def write(self, module, name: str, out: Path, target: Target, manifest: dict) -> dict:
        """Export `module` as `name`.onnx (and .fp16.onnx for an fp16 target); its entry,
        with the inputs the traced graph kept."""
        inputs, outputs = self.io(name)
        args = self.example_args(name)
        path = out / f"{name}.onnx"
        with writing(path):
            before, after, kept = _write_onnx(module, args, inputs, outputs, path,
                                              target.opset)
            manifest["files"][path.name] = manifest_file.record(path)
        entry = {"name": name, "onnx": path.name,
                 "inputs": [i for i in inputs if i["name"] in kept], "outputs": outputs,
                 "nodes": {"exported": before, "simplified": after}}
        if target.precision == "fp16":
            half = out / f"{name}.fp16.onnx"
            with writing(half):
                _write_onnx(Half(module), args, inputs, outputs, half, target.opset)
                manifest["files"][half.name] = manifest_file.record(half)
            entry["onnx_fp16"] = half.name
        return entry

    # ------------------------------------------------------------------ proof
    def prove(self, section: dict, out: Path, target: Target) -> None:
        """Parity of every written graph at min/opt/max (fp32 checked against the target's
        tolerance; fp16 recorded), and each graph input's min/opt/max shapes."""
        precisions = [("fp32", "onnx", True)]
        if target.precision == "fp16":
            precisions.append(("fp16", "onnx_fp16", False))
        context = section["context"]
        for precision, key, check in precisions:
            if context is not None and not context.get("reuses_part"):
                report = self._prove_context(out / context[key], target.tolerance, check)
                context.setdefault("parity", {})[precision] = report
            prefill, decode = self._prove_steps(out / section["prefill"][key],
                                                out / section["decode"][key],
                                                target.tolerance, check, section)
            section["prefill"].setdefault("parity", {})[precision] = prefill
            section["decode"].setdefault("parity", {})[precision] = decode

    def _prove_context(self, path: Path, tolerance: float, check: bool) -> dict:
        session = onnx_session(path)
        module = self.context_module()
        report: dict = {}
        for i, point in enumerate(POINTS):
            dims = self.dims(point)
            x = random_inputs(self.g, list(self.plan.context_inputs), dims, seed=i)
            with torch.no_grad():
                ref = module(*x.values())
            got = session.run(None, {k: v.numpy() for k, v in x.items()})
            _compare(report, CONTEXT, ref, dict(zip(ref, got)), point, dims, tolerance, check)
        return report

    def _prove_steps(self, prefill_path: Path, decode_path: Path, tolerance: float,
                     check: bool, section: dict) -> tuple[dict, dict]:
        prefill_session, decode_session = onnx_session(prefill_path), onnx_session(decode_path)
        decode_inputs = [i.name for i in decode_session.get_inputs()]
        prefill, decode = self.prefill_module(), self.decode_module()
        reports: tuple[dict, dict] = ({}, {})
        for i, point in enumerate(POINTS):
            prompt = self.tokens_range[point]
            lengths = [prompt] + ([self.mask_range[point] - 1]
                                  if self.mask_range[point] - 1 != prompt else [])
            for length in lengths:
                values, tokens, mask = self.example(point, length, seed=i)
                dims = {**self.dims(point), "prompt": length}
                torch_args = (*values, tokens, mask)
                with torch.no_grad():
                    ref = prefill(*torch_args)
                feed = _feed(self.frontier + [self.plan.tokens, MASK], torch_args)
                got = dict(zip(ref, prefill_session.run(list(ref), feed)))
                _compare(reports[0], PREFILL, ref, got, point, dims, tolerance, check)
                if length == prompt:
                    self._record(section["prefill"], point, feed)
                if length != self.mask_range[point] - 1:
                    continue
                steps = min(2, self.tokens_range["max"] - length)
                gen = torch.Generator().manual_seed(100 + i)
                torch_out, ort_out = ref, got
                for step in range(steps):
                    new = torch.randint(0, self.vocab, (tokens.shape[0], 1), generator=gen)
                    mask = torch.cat([mask, torch.ones_like(new)], dim=1)
                    with torch.no_grad():
                        step_ref = decode(*values, new, mask, *self._cache_args(torch_out))
                    ort_args = (*values, new, mask, *self._cache_args(ort_out))
                    feed = _feed(decode.input_names(self.plan.tokens), ort_args)
                    feed = {k: v for k, v in feed.items() if k in decode_inputs}
                    step_got = dict(zip(step_ref, decode_session.run(list(step_ref), feed)))
                    _compare(reports[1], DECODE, step_ref, step_got, point,
                             {**dims, "step": step + 1}, tolerance, check)
                    if step == 0:
                        self._record(section["decode"], point, feed)
                    torch_out = {**ref, **step_ref}  # the grown presents, the prefill's cross
                    ort_out = {**got, **step_got}
        return reports

    @staticmethod
    def _record(entry: dict, point: str, feed: dict) -> None:
        for info in entry["inputs"]:
            if info["name"] in feed:
                info[point] = list(feed[info["name"]].shape)


def _at(expr, dims: dict[str, int]) -> int:
    """A dim expression at concrete sizes (a free dim the ranges lack counts 1)."""
    return int(concrete_shape(T.TensorType("Seq", (sympy.sympify(expr),), "f32"), dims)[0])


def _feed(names: list[str], args) -> dict[str, np.ndarray]:
    return {n: (a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a))
            for n, a in zip(names, args)}


def _compare(report: dict, graph: str, ref: dict, got: dict, point: str, dims: dict,
             tolerance: float, check: bool) -> None:
    compare_outputs(report, f"generation graph '{graph}'", ref, got, point, dims, tolerance,
                    check, how=" (with its KV cache)")


def _write_onnx(module, args: tuple, inputs: list[dict], outputs: list[dict], path: Path,
                opset: int) -> tuple[int, int, list[str]]:
    """Export (the legacy tracer, like the parts), check (full checker, strict shape
    inference), simplify; node counts and the graph's inputs (unused ones drop out)."""
    trace_export(module, args, path, [i["name"] for i in inputs],
                 [o["name"] for o in outputs], opset, _axes(inputs + outputs))
    kept = [i.name for i in check_onnx(path).graph.input]
    before, after = simplify(path)
    return before, after, kept
