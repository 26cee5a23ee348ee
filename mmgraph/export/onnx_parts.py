"""`mmgraph export`: one verified ONNX file per part of the spec's `export` block.

For each part: generate the part's module (it borrows the model's layers), export it with
`torch.onnx.export` (dynamic axes from the spec's symbolic dims, the target's opset), run the
full ONNX checker and strict shape inference, simplify it with onnxruntime's basic offline
optimisations (constant folding, redundant nodes), then prove it: the same random inputs go
through PyTorch and onnxruntime at the min, opt and max of every dim range, and the export
fails, naming the part and output, when the difference exceeds the target's tolerance.
An fp16 target writes the precision into the graph itself (TensorRT 10.12+ builds strongly
typed networks from it): weights and matmuls in fp16, while normalisations, softmax and
reductions stay in fp32 and the part's inputs and outputs keep the spec's dtypes. Its parity
against the fp32 PyTorch model is measured on onnxruntime's CPU provider and recorded.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import sympy
import torch

from mmgraph.backends.torch.codegen import generate_part
from mmgraph.backends.torch.fused_attention import OPSET as FUSED_ATTENTION_OPSET
from mmgraph.backends.torch.fused_attention import fused_attention
from mmgraph.backends.torch.half import Half
from mmgraph.backends.torch.inputs import TORCH_DTYPES, concrete_shape
from mmgraph.backends.torch.load import module_from_source
from mmgraph.build import instantiate, load_class
from mmgraph.errors import UserError, describe_os_error
from mmgraph.export.targets import Target
from mmgraph.ir import types as T
from mmgraph.ir.graph import ExportPart, Graph, Ref
from mmgraph.runtime import manifest as manifest_file

ONNX_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64",
               "i64": "int64", "i32": "int32", "i16": "int16", "i8": "int8", "u8": "uint8",
               "bool": "bool"}
DEFAULT_RANGE = {"min": 1, "opt": 2, "max": 4}  # for free dims the export block leaves open


class ExportError(UserError):
    """An export that cannot be trusted: the message names the part and the output."""


def plan_parts(g: Graph) -> list[ExportPart]:
    """The spec's parts, or one part from every input to every output when it names none."""
    if g.export is not None and g.export.parts:
        return list(g.export.parts)
    needed = g.upstream({r.node for r in g.outputs.values()})
    inputs = [n for n in g.inputs if n in needed]
    nodes = [n for n in g.nodes if n in needed and n not in inputs]
    return [ExportPart(g.name, inputs, list(g.outputs), nodes, g.span)]


def dim_ranges(g: Graph) -> dict[str, dict[str, int]]:
    ranges = {n: {"min": r.min, "opt": r.opt, "max": r.max}
              for n, r in (g.export.dims.items() if g.export else [])}
    for name in g.inputs:
        for d in g.nodes[name].type.dims:
            for s in d.free_symbols:
                ranges.setdefault(str(s), dict(DEFAULT_RANGE, assumed=True))
    return ranges


def value_ref(g: Graph, name: str) -> Ref:
    return {**g.values, **g.outputs}[name]


def value_type(g: Graph, name: str) -> T.TensorType:
    return g.type_of(value_ref(g, name))


def token_vocab(g: Graph, name: str) -> int | None:
    """The vocabulary a Tokens value is embedded with: the smallest `vocab` among the
    components that take it, following ops that pass token ids on (e.g. mask_tokens)."""
    vocabs, todo, seen = [], [value_ref(g, name)], set()
    while todo:
        ref = todo.pop()
        seen.add(ref)
        for node in g.nodes.values():
            if ref not in node.refs():
                continue
            if node.op == "call":
                vocab = getattr(g.instances[node.target].params, "vocab", None)
                if vocab:
                    vocabs.append(vocab)
            for port, t in node.types.items():
                if t.kind == "Tokens" and Ref(node.name, port) not in seen:
                    todo.append(Ref(node.name, port))
    return min(vocabs, default=None)


def tensor_info(g: Graph, name: str, ranges) -> dict:
    t = value_type(g, name)
    shape = [int(d) if d.is_Integer else T.format_dim(d) for d in t.dims]
    info = {"name": name, "type": str(t), "kind": t.kind, "dtype": ONNX_DTYPES[t.dtype],
            "shape": shape}
    if t.kind == "Tokens":
        info["vocab"] = token_vocab(g, name)
    for point in ("min", "opt", "max"):
        info[point] = list(concrete_shape(t, {k: v[point] for k, v in ranges.items()}))
    return info


def random_inputs(g: Graph, names: list[str], dims: dict[str, int], seed: int = 0,
                  int_high: int = 4) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in names:
        t = value_type(g, name)
        shape = concrete_shape(t, dims)
        if t.dtype == "bool":
            out[name] = torch.ones(shape, dtype=torch.bool)
        elif t.dtype in T.FLOAT_DTYPES:
            out[name] = torch.randn(shape, generator=gen).to(TORCH_DTYPES[t.dtype])
        else:
            high = 2 if t.kind == "Labels" else int_high
            out[name] = torch.randint(0, high, shape, generator=gen).to(TORCH_DTYPES[t.dtype])
    return out


def dynamic_axes(g: Graph, names: list[str]) -> dict[str, dict[int, str]]:
    axes = {}
    for name in names:
        t = value_type(g, name)
        dyn = {i: T.format_dim(d).replace(" ", "") for i, d in enumerate(t.dims)
               if not d.is_Integer}
        if dyn:
            axes[name] = dyn
    return axes


def part_module(model, g: Graph, spec: str, plan: ExportPart) -> torch.nn.Module:
    gen = generate_part(g, spec, plan.name, plan.inputs, plan.outputs, plan.nodes)
    module = module_from_source(gen, f"<mmgraph {spec} part {plan.name}>")
    return getattr(module, gen.class_name)(model).eval()


def _errors(ref: torch.Tensor, got: np.ndarray) -> tuple[float, float]:
    a = ref.detach().float().numpy()
    b = got.astype(np.float32)
    diff = np.abs(a - b)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(a), 1e-6)).max()) if diff.size else 0.0
    return max_abs, max_rel


def add_error(report: dict, name: str, point: str, dims: dict, ref: torch.Tensor,
              got: np.ndarray) -> float:
    """Record output `name`'s difference at `point` in a parity report (the worst of several
    comparisons at one point, e.g. a decoder's steps); its max abs difference."""
    max_abs, max_rel = _errors(ref, got)
    entry = report.setdefault(name, {"max_abs": 0.0, "max_rel": 0.0, "at": {}})
    at = entry["at"].setdefault(point, {"dims": dims, "max_abs": 0.0, "max_rel": 0.0})
    at["max_abs"], at["max_rel"] = max(at["max_abs"], max_abs), max(at["max_rel"], max_rel)
    entry["max_abs"] = max(entry["max_abs"], max_abs)
    entry["max_rel"] = max(entry["max_rel"], max_rel)
    return max_abs


def onnx_session(path: Path, providers=("CPUExecutionProvider",)):
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=chosen)


def trace_export(module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
                 opset: int, axes: dict) -> None:
    """torch's legacy tracing exporter, constants folded, its warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          opset_version=opset, dynamic_axes=axes, dynamo=False,
                          do_constant_folding=True)


def check_onnx(path: Path):
    """The written file, loaded and proved by the full checker and strict shape inference."""
    import onnx

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    return proto


def write_onnx(module, g: Graph, plan: ExportPart, x: dict, path: Path,
               opset: int, ranges: dict | None = None, log=print) -> tuple[int, int]:
    """Export, check (full checker, strict shape inference), simplify; node counts.
    From opset 23 (given the dim `ranges`), attention goes out as the fused `Attention` op,
    unless torch.export cannot trace the part (data-dependent shapes): then decomposed."""

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fused = opset >= FUSED_ATTENTION_OPSET and ranges is not None
            if fused:
                try:
                    export_fused(module, g, plan, path, opset, ranges)
                except torch.onnx.errors.OnnxExporterError as exc:  # e.g. MoE routing
                    fused = False
                    reason = " ".join(str(exc).split("Exception summary")[-1].split())[:200]
                    log(f"part {plan.name}: attention not fused (torch.export: {reason}); "
                        f"exported decomposed at opset {opset}")
            if not fused:
                trace_export(module, tuple(x.values()), path, plan.inputs, plan.outputs,
                             opset, dynamic_axes(g, plan.inputs + plan.outputs))
        check_onnx(path)
        return simplify(path)
    except ExportError:
        raise
    except Exception as exc:
        wrapped = [n for n in plan.nodes if g.nodes[n].op == "call"
                   and g.nodes[n].target in g.instances
                   and g.instances[g.nodes[n].target].component == "hf_model"]
        if not wrapped:
            raise
        # a wrapped transformers model is code mmgraph did not write: say which layer
        inst = g.instances[g.nodes[wrapped[0]].target]
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ExportError(
            f"part '{plan.name}' could not be exported to ONNX: it holds the hf_model layer "
            f"'{inst.name}' ({Path(inst.span.path).name}:{inst.span.line}), a wrapped "
            f"transformers model, and exporting it failed: {type(exc).__name__}: {reason}"
        ) from exc


def export_fused(module, g: Graph, plan: ExportPart, path: Path, opset: int,
                 ranges: dict) -> None:
    """torch's dynamo exporter (onnxscript) with attention as one `Attention` node per call.

    Traced at sizes of 2 or more: torch.export would bake a dim of size 1 into the graph.
    Without onnxscript's rewriting optimizer, which fuses a mixed-precision RMSNorm into an
    ill-typed `RMSNormalization` (an op TensorRT parses only from 10.15): its constant folding
    only.
    Each `Attention` node is told to run its softmax in fp32 (`softmax_precision`), what the
    decomposed fp16 graph says with its Casts.
    """
    import inspect

    import onnx
    import onnx_ir
    from onnxscript import optimizer

    dims = {k: min(max(2, v["opt"]), v["max"]) for k, v in ranges.items()}
    x = random_inputs(g, plan.inputs, dims)
    axes = dynamic_axes(g, plan.inputs + plan.outputs)  # per name: the inputs' are theirs
    shapes: tuple = tuple({i: torch.export.Dim.DYNAMIC for i in axes.get(n, {})}
                          for n in plan.inputs)
    if any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(module.forward).parameters
           .values()):
        shapes = (shapes,)  # Half(part): forward(*args)
    # torch's exporter warns, per export, that torchvision's ops are not registered when
    # torchvision is absent: noise for mmgraph, which uses none of them
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with fused_attention():
            torch.onnx.export(module, tuple(x.values()), str(path), input_names=plan.inputs,
                              output_names=plan.outputs, opset_version=opset,
                              dynamic_shapes=shapes, dynamo=True, optimize=False,
                              external_data=False, verbose=False)
    finally:
        quiet.setLevel(level)
    proto = onnx.load(str(path))
    # torch.export names dims s0, s1...: the spec's names, as the legacy exporter writes them
    names = {}
    for value in list(proto.graph.input) + list(proto.graph.output):
        for i, dim in enumerate(value.type.tensor_type.shape.dim):
            want = axes.get(value.name, {}).get(i)
            if want and dim.dim_param:
                names.setdefault(dim.dim_param, want)
    for value in list(proto.graph.input) + list(proto.graph.output) + list(
            proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]
    for node in proto.graph.node:
        if node.op_type == "Attention":
            kept = [a for a in node.attribute if a.name != "softmax_precision"]
            del node.attribute[:]
            node.attribute.extend(kept + [onnx.helper.make_attribute(
                "softmax_precision", onnx.TensorProto.FLOAT)])
    model = onnx_ir.from_proto(proto)  # fold constants (TensorRT wants constant axes)
    optimizer.fold_constants(model)
    optimizer.remove_unused_nodes(model)
    onnx.save(onnx_ir.to_proto(model), str(path))


def simplify(path: Path) -> tuple[int, int]:
    """onnxruntime's basic (portable) graph optimisations, written back; node counts."""
    import onnx
    import onnxruntime as ort

    before = len(onnx.load(str(path)).graph.node)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(path.with_suffix(".opt.onnx"))
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    simplified = onnx.load(options.optimized_model_filepath)
    try:  # keep the simpler graph only if it is still plain, valid ONNX
        onnx.checker.check_model(simplified, full_check=True)
        portable = all(n.domain in ("", "ai.onnx") for n in simplified.graph.node)
    except onnx.checker.ValidationError:
        portable = False
    # The CPU provider runs fp16 ops it has no fp16 kernel for in fp32, by inserting Casts
    # (InsertCastTransformer, nodes named InsertedPrecisionFreeCast_*): saved, they would make
    # an fp16 graph compute in fp32.
    portable = portable and not any(n.op_type == "Cast" and n.name.startswith("Inserted")
                                    for n in simplified.graph.node)
    if portable and len(simplified.graph.node) <= before:
        onnx.save(simplified, str(path))
    path.with_suffix(".opt.onnx").unlink()
    return before, len(onnx.load(str(path)).graph.node)


def parity(module, g: Graph, plan: ExportPart, path: Path, ranges: dict, tolerance: float,
           providers, points=("min", "opt", "max"), check: bool = True) -> dict:
    session = onnx_session(path, providers)
    report: dict = {}
    for i, point in enumerate(points):
        dims = {k: v[point] for k, v in ranges.items()}
        x = random_inputs(g, plan.inputs, dims, seed=i)
        with torch.no_grad():
            ref = module(*x.values())
        got = session.run(None, {k: v.numpy() for k, v in x.items()})
        compare_outputs(report, f"part '{plan.name}'", ref, dict(zip(plan.outputs, got)),
                        point, dims, tolerance, check)
    return report


def compare_outputs(report: dict, graph: str, ref: dict, got: dict, point: str, dims: dict,
                    tolerance: float, check: bool, how: str = "") -> None:
    """Record each output's error in `report` (`got`'s order); with `check`, an output
    over `tolerance` is an ExportError naming the graph, the output and the sizes."""
    for name, value in got.items():
        max_abs = add_error(report, name, point, dims, ref[name], value)
        if check and max_abs > tolerance:
            raise ExportError(
                f"{graph}, output '{name}': onnxruntime differs from PyTorch{how} "
                f"by {max_abs:.3g} (abs) at the {point} sizes {dims}, over the tolerance "
                f"{tolerance:g}")


def opset_range() -> tuple[int, int]:
    """The opsets this torch's exporter writes (its own table where it has one)."""
    import onnx

    limits = getattr(torch.onnx, "_constants", None)
    return (getattr(limits, "ONNX_MIN_OPSET", 7),
            getattr(limits, "ONNX_MAX_OPSET", onnx.defs.onnx_opset_version()))


@contextmanager
def writing(path: Path):
    """OS errors while writing `path` (disk full, permission) as an ExportError naming it."""
    try:
        yield
    except OSError as exc:
        what = describe_os_error(OSError(exc.errno, exc.strerror))
        raise ExportError(f"cannot write {path}: {what}") from None


def prepare_output(out: Path) -> None:
    """Create the export folder and prove it writable before minutes of work. Its old
    manifest goes first, so an export failing half-way (disk full) leaves no manifest
    vouching for half-written files."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file, not a folder: choose another output folder (-o)")
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
        (out / "manifest.json").unlink(missing_ok=True)


def export(spec: str | Path, out: str | Path, target: Target, *, overrides: dict | None = None,
           checkpoint: str | Path | None = None, model_name: str | None = None,
           lib_dirs=(), log=print, generation: bool = True) -> dict:
    """Export every part; returns (and writes) the manifest. `generation=False` leaves out
    the generation graphs (their export and proof), for callers that run the parts only."""
    low, high = opset_range()
    if not low <= target.opset <= high:
        raise ExportError(f"target {target.name}: opset {target.opset} is outside the opsets "
                          f"torch {torch.__version__} exports ({low}..{high})")
    start = time.perf_counter()
    out = Path(out)
    prepare_output(out)
    cls, g = load_class(spec, model_name, lib_dirs=lib_dirs, **(overrides or {}))
    torch.manual_seed(0)
    # pretrained parts' weights unless a checkpoint of the spec gives every weight
    model = instantiate(cls, g, pretrained=checkpoint is None)
    spec_hash = weights = None
    if checkpoint is not None:
        from mmgraph.backends.torch import weights as ckpt

        weights = ckpt.find(checkpoint)
        ckpt.load_weights(weights, model, g)
        spec_hash = ckpt.fingerprint(g)["hash"]
    model.eval()
    ranges = dim_ranges(g)
    layers = {name: f"{Path(i.span.path).name}:{i.span.line}" for name, i in g.instances.items()}
    # absolute paths, so that `mmgraph bench DIST` finds them from any folder
    manifest = {"format": manifest_file.FORMAT, "model": g.name,
                "spec": str(Path(spec).resolve()), "overrides": overrides or {},
                "lib_dirs": [str(Path(d).resolve()) for d in lib_dirs],
                "checkpoint": str(Path(weights).resolve()) if weights else None,
                "spec_hash": spec_hash, "target": target.to_json(), "opset": target.opset,
                "precision": target.precision, "dims": ranges, "parts": [], "files": {},
                "layers": layers, "torch": torch.__version__}
    for plan in plan_parts(g):
        t0 = time.perf_counter()
        module = part_module(model, g, str(spec), plan)
        x = random_inputs(g, plan.inputs, {k: v["opt"] for k, v in ranges.items()})
        path = out / f"{plan.name}.onnx"
        with writing(path):
            nodes_before, nodes_after = write_onnx(module, g, plan, x, path, target.opset,
                                                   ranges, log)
            manifest["files"][path.name] = manifest_file.record(path)
        entry = {"name": plan.name, "onnx": path.name,
                 "inputs": [tensor_info(g, n, ranges) for n in plan.inputs],
                 "outputs": [tensor_info(g, n, ranges) for n in plan.outputs],
                 "nodes": {"exported": nodes_before, "simplified": nodes_after},
                 "parity": {"fp32": parity(module, g, plan, path, ranges, target.tolerance,
                                           ("CPUExecutionProvider",))}}
        if target.precision == "fp16":
            half = out / f"{plan.name}.fp16.onnx"
            with writing(half):
                write_onnx(Half(module), g, plan, x, half, target.opset, ranges, log)
                manifest["files"][half.name] = manifest_file.record(half)
            entry["onnx_fp16"] = half.name
            entry["parity"]["fp16"] = parity(module, g, plan, half, ranges, target.tolerance,
                                             ("CPUExecutionProvider",), check=False)
        entry["seconds"] = time.perf_counter() - t0
        manifest["parts"].append(entry)
        fp32 = max(o["max_abs"] for o in entry["parity"]["fp32"].values())
        half_note = ""
        if "fp16" in entry["parity"]:
            half_err = max(o["max_abs"] for o in entry["parity"]["fp16"].values())
            half_note = f", fp16 vs fp32 max abs {half_err:.2e}"
        log(f"part {plan.name}: {path.name} ({nodes_after} nodes), parity fp32 max abs "
            f"{fp32:.2e}{half_note}")
    from mmgraph.export import decoder  # imported here: decoder builds on this module

    if generation:
        decoder.export_generation(model, g, target, out, ranges, manifest, log)
    else:
        manifest["cannot_generate"] = "exported without its generation graphs"
    with writing(out):
        deploy(manifest, out, target, log)
    manifest["seconds"] = time.perf_counter() - start
    path, partial = out / "manifest.json", out / "manifest.json.partial"
    with writing(path):  # whole or absent: written aside, then renamed
        partial.write_text(json.dumps(manifest, indent=2, default=_json))
        os.replace(partial, path)
    return manifest


def deploy(manifest: dict, out: Path, target: Target, log) -> None:
    """What the target adds beside the ONNX files: TensorRT checks and scripts, Triton."""
    if target.runtime == "tensorrt":
        from mmgraph.export import tensorrt

        reports = {}
        for part in _trt_parts(manifest):  # the generation graphs too
            onnx_file = out / part.get("onnx_fp16", part["onnx"])
            report = tensorrt.check_compatibility(onnx_file, target.tensorrt,
                                                  manifest["layers"])
            reports[part["name"]] = report.as_dict()
            log(report.render())
        manifest["tensorrt"] = {"version": target.tensorrt, "compatibility": reports}
        sh, py = tensorrt.build_script(_trt_parts(manifest), target.to_json(), out)
        ok, why = tensorrt.engine_available()
        if ok:
            engines = tensorrt.build_engines(_trt_parts(manifest), target.to_json(), out)
            manifest["tensorrt"]["engines"] = [str(e.name) for e in engines]
            log("built " + ", ".join(e.name for e in engines))
        else:
            manifest["tensorrt"]["engines"] = []
            log(f"no engine built here ({why}); on the target device run {sh.name} "
                f"(or {py.name})")
    elif target.runtime == "triton":
        from mmgraph.export import triton

        repo = triton.write_repository(manifest, out, out / "triton", target.backend,
                                       providers=target.providers)
        problems = triton.validate_repository(repo)
        if problems:
            raise ExportError("triton repository is invalid: " + "; ".join(problems))
        manifest["triton"] = {"repository": str(repo.relative_to(out))}
        log(f"wrote the Triton model repository {repo}")


def _trt_parts(manifest: dict) -> list[dict]:
    """The parts as TensorRT builds them: the fp16 graph when there is one; then the
    generation graphs, their profiles spanning the past length."""
    from mmgraph.export.decoder import trt_graphs

    return [{**p, "onnx": p.get("onnx_fp16", p["onnx"])}
            for p in manifest["parts"] + trt_graphs(manifest)]


def _json(v):
    if isinstance(v, (sympy.Basic, np.generic)):
        return str(v)
    return float(v)
