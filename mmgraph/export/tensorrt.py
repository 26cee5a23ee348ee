"""TensorRT: check an ONNX part against a TensorRT version, write build scripts, build engines.

The check needs only `onnx` and the tables in `trt_ops`, so a part meant for a Jetson can be
vetted on a laptop. Engines need the `tensorrt` package and an NVIDIA GPU; without them
`build_engines` says so and points at the `build_engine.sh` written next to the parts.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mmgraph.escape import TEMPLATE_FILTERS
from mmgraph.export import trt_ops

TEMPLATES = Path(__file__).parent / "templates"


class TensorRTUnavailable(RuntimeError):
    """No tensorrt package or no CUDA GPU here: build with build_engine.sh on the target."""


# ---------------------------------------------------------------------------------------------
# Compatibility check


@dataclass
class Finding:
    severity: str  # "error" | "warning"
    node: str  # ONNX node name, or the tensor name for graph inputs/outputs/initializers
    op: str  # op type, or "input"/"output"/"initializer"
    problem: str
    spec: str | None = None  # "file.mmg:line" of the spec node it came from
    instance: str | None = None  # that spec node's instance name


@dataclass
class CompatReport:
    onnx: str
    trt_version: str
    opset: int | None
    findings: list[Finding] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def as_dict(self) -> dict:
        return {"onnx": self.onnx, "tensorrt": self.trt_version, "opset": self.opset,
                "ok": self.ok, "ops": dict(self.ops), "notes": list(self.notes),
                "findings": [asdict(f) for f in self.findings]}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def render(self) -> str:
        head = (f"TensorRT {self.trt_version} vs {Path(self.onnx).name} (opset {self.opset}): "
                + ("OK" if self.ok else "NOT OK")
                + f" - {len(self.errors)} error(s), {len(self.warnings)} warning(s), "
                + f"{sum(self.ops.values())} nodes, {len(self.ops)} op types")
        lines = [head] + [f"  note: {n}" for n in self.notes]
        for f in sorted(self.findings, key=lambda f: (f.severity != "error", f.spec or "", f.node)):
            where = f" [{f.spec} {f.instance}]" if f.spec else ""
            lines.append(f"  {f.severity:7} {f.op} {f.node or '-'}{where}: {f.problem}")
        return "\n".join(lines)


def spec_location(name: str, layers: dict[str, str] | None) -> tuple[str | None, str | None]:
    """(instance, "file.mmg:line") for an ONNX node or tensor name, or (None, None).

    torch's exporter names nodes by module path ("/vision/blocks/layers.0/attn/MatMul") and
    parameters by dotted path ("vision.blocks.layers.0.attn.weight"); the longest instance name
    in `layers` that prefixes that path, component-wise, is the spec node it came from.
    """
    if not layers or not name:
        return None, None
    if name.startswith("/"):
        parts = [p for p in name.split("/") if p]
        path = ".".join(parts[:-1]) if len(parts) > 1 else (parts[0] if parts else "")
    else:
        path = name
    components = path.split(".")
    # an exported part (and its fp16 copy) holds the model under `part`: skip such prefixes
    for start in range(len(components)):
        path = ".".join(components[start:])
        best = None
        for key in layers:
            if (path == key or path.startswith(key + ".")) and \
                    (best is None or len(key) > len(best)):
                best = key
        if best:
            return best, layers[best]
        if components[start] != "part":
            break
    return None, None


def _module_path(node) -> str:
    """The node's torch module path: dynamo-exported nodes carry it in their metadata
    ("pkg.torch.onnx.name_scopes"), the legacy exporter in their names."""
    import ast

    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = [s for s in ast.literal_eval(prop.value)[:-1] if s]
            except (ValueError, SyntaxError):
                break
            if scopes:
                return scopes[-1]
    return node.name


def _dtype_name(elem_type: int) -> str:
    import onnx

    return onnx.TensorProto.DataType.Name(elem_type) if elem_type else "UNDEFINED"


def _dims(value_info) -> list | None:
    """A value's dims (int, symbolic name, or None when unknown), or None when its rank is."""
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tensor.shape.dim]


def _opset(model) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return None


def _subgraphs(node):
    import onnx

    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


class _Checker:
    """One walk over the graph and its subgraphs, collecting findings."""

    def __init__(self, model, table: trt_ops.TrtVersion, layers):
        self.table, self.layers = table, layers
        self.findings: list[Finding] = []
        self.ops: Counter = Counter()
        self.types: dict[str, str] = {}
        self.shapes: dict[str, list | None] = {}  # None: rank unknown; dims int, str or None
        self.values: dict[str, object] = {}  # constant tensors' values (numpy), for Rule "below"
        self.consumed: set[str] = set()  # tensors some node or graph output reads
        self.scopes: dict[str, str] = {}  # node name -> torch module path, where not the same
        try:  # intermediate dtypes, for the per-op dtype check
            import onnx

            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001 - inference is a nicety; the check stands without it
            inferred = model
        self._collect_types(inferred.graph)

    def _collect_types(self, graph):
        import numpy as np
        import onnx
        from onnx import numpy_helper

        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            if vi.type.HasField("tensor_type"):
                self.types[vi.name] = _dtype_name(vi.type.tensor_type.elem_type)
                self.shapes[vi.name] = _dims(vi)
        self.consumed.update(o.name for o in graph.output)
        for init in graph.initializer:
            self.types[init.name] = _dtype_name(init.data_type)
            self.shapes[init.name] = list(init.dims)
            small = init.data_location != onnx.TensorProto.EXTERNAL and \
                int(np.prod(init.dims)) <= 16  # scalars and short vectors (TopK's K)
            if small:
                self.values[init.name] = numpy_helper.to_array(init)
        for node in graph.node:
            self.consumed.update(i for i in node.input if i)
            scope = _module_path(node)
            if scope != node.name:
                self.scopes[node.name] = scope
            if node.op_type == "Constant" and node.output:
                value = next((a for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    self.values[node.output[0]] = numpy_helper.to_array(value.t)
            for sub in _subgraphs(node):
                self._collect_types(sub)

    def add(self, severity, node, op, problem, name=None):
        instance, spec = spec_location(name or self.scopes.get(node) or node, self.layers)
        self.findings.append(Finding(severity, node, op, problem, spec, instance))

    # -- tensors -------------------------------------------------------------------------------
    def check_tensor(self, name: str, dtype: str, kind: str):
        t = self.table
        if dtype in t.later_types:
            self.add("error", name, kind, f"{dtype} is not a TensorRT {t.version} type (added in "
                     f"{t.later_types[dtype]}, per the Changelog)")
        elif dtype == "DOUBLE":
            if kind == "initializer":
                self.add("warning", name, kind, "DOUBLE weights: the parser casts them down to "
                         "FLOAT, clamping to +-FLT_MAX")
            else:
                self.add("error", name, kind, "DOUBLE is not a TensorRT data type (engine I/O "
                         "can only be FLOAT); cast to float32 in the model")
        elif dtype == "INT64" and t.int64 == "cast":
            self.add("warning", name, kind, f"INT64 is cast to INT32 by the TensorRT "
                     f"{t.version} ONNX parser (values clamped to +-INT_MAX); bind it as int32")
        elif dtype == "BFLOAT16" and not t.bf16:
            self.add("error", name, kind, f"BF16 is not supported by TensorRT {t.version} "
                     "(added in 9.0)")
        elif dtype == "UINT8" and kind == "initializer":
            self.add("warning", name, kind, "UINT8 is supported only as network input/output")
        elif dtype in ("INT8", "FLOAT8E4M3FN", "INT4", "FLOAT4E2M1") and kind != "initializer":
            self.add("warning", name, kind, f"{dtype} is a quantized type in TensorRT: only "
                     "reachable through Q/DQ from a wider float type")
        elif dtype not in trt_ops.ONNX_TO_TABLE and dtype != "UNDEFINED":
            self.add("error", name, kind, f"{dtype} has no TensorRT equivalent")

    # -- nodes ---------------------------------------------------------------------------------
    def walk(self, graph, outer_consts: frozenset = frozenset()):
        consts = set(outer_consts) | {i.name for i in graph.initializer}
        # Names whose value depends on no graph input: foldable, but not constants to the parser.
        foldable = set(consts)
        for node in graph.node:
            default = node.domain in ("", "ai.onnx")
            op = node.op_type if default else f"{node.domain}::{node.op_type}"
            self.ops[op] += 1
            self.check_node(node, op, consts, foldable)
            if node.op_type == "Constant":
                consts.update(node.output)
            if node.op_type in ("Constant", "Identity") and all(i in consts for i in node.input):
                consts.update(node.output)
            if (all((not i) or i in foldable for i in node.input) and not list(_subgraphs(node))
                    and not node.op_type.startswith("Random")):
                foldable.update(node.output)
            for sub in _subgraphs(node):
                self.walk(sub, frozenset(consts))

    def check_node(self, node, op, consts, foldable):
        t, name = self.table, node.name or (node.output[0] if node.output else "")
        if node.domain not in ("", "ai.onnx"):
            self.add("error", name, op, f"custom-domain op: TensorRT {t.version} needs a plugin "
                     "registered under this name")
            return
        if not t.supports(op):
            if op in t.unsupported:
                why = f"documented as unsupported by TensorRT {t.version}"
            else:
                why = f"not in TensorRT {t.version}'s operator table"
            later = [v for v in trt_ops.versions_supporting(op)
                     if trt_ops._key(v) > trt_ops._key(t.version)]
            if later:
                why += f" (supported from TensorRT {later[0]})"
            self.add("error", name, op, why)
            return
        self.check_op_dtype(node, op, name)
        for idx, (arg, doc) in t.const_inputs.get(op, {}).items():
            if idx < len(node.input) and node.input[idx] and node.input[idx] not in consts:
                src = node.input[idx]
                if src in foldable:
                    self.add("warning", name, op, f"input '{arg}' ({src}) is computed from "
                             f"constants; TensorRT {t.version} wants a constant ({doc}) - fold "
                             "constants first (onnxsim, or polygraphy surgeon sanitize "
                             "--fold-constants)")
                else:
                    self.add("error", name, op, f"input '{arg}' ({src}) is computed at run "
                             f"time; TensorRT {t.version} needs a build-time constant ({doc})")
        for idx, (arg, doc) in t.caveats.get(op, {}).items():
            if idx < len(node.input) and node.input[idx] and node.input[idx] not in consts:
                self.add("warning", name, op, f"input '{arg}' ({node.input[idx]}) is computed "
                         f"at run time: TensorRT {t.version} accepts it only when {doc}")
        for rule in t.rules.get(op, ()):
            for severity, problem in getattr(self, f"_rule_{rule.kind}")(node, rule, consts):
                self.add(severity, name, op, f"{problem}; TensorRT {t.version}: {rule.doc} "
                         f"({rule.source})")

    # -- restrictions: one method per trt_ops.Rule kind, each yielding (severity, problem) ----
    def _inputs(self, node, rule):
        for idx, arg in zip(rule.index, rule.names):
            if idx < len(node.input) and node.input[idx]:
                yield arg, node.input[idx]

    def _rule_rank(self, node, rule, consts):
        for arg, src in self._inputs(node, rule):
            dims = self.shapes.get(src)
            if dims is None:
                yield "warning", f"the rank of input '{arg}' ({src}) is unknown here"
            elif len(dims) != rule.value:
                yield "error", f"input '{arg}' ({src}) is {len(dims)}D"

    def _rule_no_input(self, node, rule, consts):
        for arg, src in self._inputs(node, rule):
            yield "error", f"input '{arg}' ({src}) is given"

    def _rule_no_output(self, node, rule, consts):
        for idx, arg in zip(rule.index, rule.names):
            if idx < len(node.output) and node.output[idx]:
                yield "error", f"output '{arg}' ({node.output[idx]}) is requested"

    def _rule_attr(self, node, rule, consts):
        import onnx

        attr = next((a for a in node.attribute if a.name == rule.attr), None)
        if attr is None:
            return
        value = onnx.helper.get_attribute_value(attr)
        value = value.decode() if isinstance(value, bytes) else value
        if value != rule.value:
            yield "error", f"attribute {rule.attr}={value!r}"

    def _rule_below(self, node, rule, consts):
        for arg, src in self._inputs(node, rule):
            if src in self.values:
                value = int(max(self.values[src].reshape(-1).tolist(), default=0))
                if value >= rule.value:
                    yield "error", f"input '{arg}' ({src}) is {value}"
            else:
                yield "warning", (f"input '{arg}' ({src}) is computed at run time, so its bound "
                                  "cannot be checked here")

    def _rule_dtype(self, node, rule, consts):
        for arg, src in self._inputs(node, rule):
            dtype = self.types.get(src)
            if dtype and dtype != "UNDEFINED" and dtype not in rule.value:
                yield "error", f"input '{arg}' ({src}) is {dtype}"

    def _branch_dims(self, node):
        branches = {a.name: a.g for a in node.attribute if a.name in ("then_branch", "else_branch")}
        if len(branches) == 2:
            then, other = branches["then_branch"], branches["else_branch"]
            for i, (a, b) in enumerate(zip(then.output, other.output)):
                yield i, self.shapes.get(a.name), self.shapes.get(b.name)

    def _rule_branches_same_rank(self, node, rule, consts):
        for i, a, b in self._branch_dims(node):
            if a is not None and b is not None and len(a) != len(b):
                yield "error", f"output {i} is {len(a)}D in then_branch, {len(b)}D in else_branch"

    def _rule_branches_broadcastable(self, node, rule, consts):
        for i, a, b in self._branch_dims(node):
            if a is None or b is None:
                continue
            pairs = zip(reversed(a), reversed(b))
            if any(isinstance(x, int) and isinstance(y, int) and 1 not in (x, y) and x != y
                   for x, y in pairs):
                yield "error", f"output {i} has shapes {a} and {b} in the two branches"

    def _rule_static_scan(self, node, rule, consts):
        body = next((a.g for a in node.attribute if a.name == "body"), None)
        carried = max(len(node.input) - 2, 0)
        scans = len(body.output) - 1 - carried if body is not None else 0
        if scans <= 0:
            return
        trip = node.input[0] if node.input else ""
        if not trip:
            yield "error", f"{scans} scan output(s) and no trip count 'M': their length is dynamic"
        elif trip not in consts:
            yield "error", (f"{scans} scan output(s) and the trip count 'M' ({trip}) is not a "
                            "build-time constant: their length is dynamic")

    def _rule_einsum_plain(self, node, rule, consts):
        import onnx

        attr = next((a for a in node.attribute if a.name == "equation"), None)
        if attr is None:
            return
        equation = onnx.helper.get_attribute_value(attr).decode().replace(" ", "")
        terms = equation.split("->")[0].split(",")
        if "..." in equation:
            yield "error", f"equation {equation!r} has an ellipsis"
        for term in terms:
            repeated = sorted({c for c in term if c.isalpha() and term.count(c) > 1})
            if repeated:
                yield "error", f"equation {equation!r} takes a diagonal over {''.join(repeated)}"
        sizes: dict[str, set] = {}
        for term, src in zip(terms, node.input):
            dims = self.shapes.get(src)
            if dims is not None and len(dims) == len(term):
                for c, d in zip(term, dims):
                    if isinstance(d, int):
                        sizes.setdefault(c, set()).add(d)
        broadcast = sorted(c for c, ds in sizes.items() if len(ds) > 1 and 1 in ds)
        if broadcast:
            yield "error", f"equation {equation!r} broadcasts over {''.join(broadcast)}"

    _OUTPUT_TYPED = {"Constant", "ConstantOfShape", "Shape", "Size", "RandomNormal",
                     "RandomUniform", "EyeLike", "Cast", "CastLike", "QuantizeLinear"}

    def check_op_dtype(self, node, op, name):
        """The op's data tensor against the table's "Supported Types" cell (a warning: the cell
        describes the common case, and the parser inserts casts for some)."""
        if op in ("Cast", "CastLike", "QuantizeLinear", "DequantizeLinear", "Constant"):
            return
        tensor = (node.output[0] if op in self._OUTPUT_TYPED else
                  next((i for i in node.input if i), None))
        dtype = self.types.get(tensor or "")
        if not dtype or dtype == "UNDEFINED":
            return
        if dtype == "INT64" and self.table.int64 == "cast":
            dtype = "INT32"
        if dtype == "DOUBLE":
            dtype = "FLOAT"
        short = trt_ops.ONNX_TO_TABLE.get(dtype, dtype)
        allowed = self.table.ops[op]
        if short not in allowed:
            self.add("warning", name, op, f"{dtype} data is not among the types TensorRT "
                     f"{self.table.version} documents for {op} ({', '.join(allowed)})")


def check_compatibility(onnx_path, trt_version: str,
                        layers: dict[str, str] | None = None) -> CompatReport:
    """Every node of `onnx_path` (subgraphs of If/Loop/Scan included) against `trt_version`.

    `layers` maps spec instance names ("vision", "lm.3.attn") to "file.mmg:line", so each
    finding names the spec node to change rather than an anonymous ONNX node.
    """
    import onnx

    table, stand_in = trt_ops.resolve(trt_version)
    model = onnx.load(str(onnx_path), load_external_data=False)
    opset = _opset(model)
    report = CompatReport(str(onnx_path), str(trt_version), opset)
    if stand_in:
        report.notes.append(stand_in)
    report.notes.append(f"table: {table.source}")
    checker = _Checker(model, table, layers)
    if table.max_opset is None:
        report.notes.append(f"the max opset of TensorRT {table.version} is not stated in the "
                            "sources read; the opset was not checked")
    else:
        report.notes.append(f"max opset {table.max_opset} ({table.opset_source})")
    if table.max_opset is None:
        pass
    elif opset is not None and opset > table.max_opset:
        checker.add("error", "", "opset", f"model opset {opset} > {table.max_opset}, the newest "
                    f"TensorRT {table.version} parses; re-export with opset_version="
                    f"{table.max_opset}")
    elif opset is not None and opset < 9 and table.version.startswith("10."):
        checker.add("warning", "", "opset", f"opset {opset} < 9: TensorRT 10 supports 9 and up")
    graph = model.graph
    init_names = {i.name for i in graph.initializer}
    for vi in graph.input:
        if vi.name not in init_names and vi.type.HasField("tensor_type"):
            checker.check_tensor(vi.name, _dtype_name(vi.type.tensor_type.elem_type), "input")
    for vi in graph.output:
        if vi.type.HasField("tensor_type"):
            checker.check_tensor(vi.name, _dtype_name(vi.type.tensor_type.elem_type), "output")
    for init in graph.initializer:
        checker.check_tensor(init.name, _dtype_name(init.data_type), "initializer")
    checker.walk(graph)
    report.findings = checker.findings
    report.ops = dict(sorted(checker.ops.items()))
    return report


# ---------------------------------------------------------------------------------------------
# Build scripts and engines

_PRECISIONS = ("fp32", "fp16", "bf16")


def _target_dict(target) -> dict:
    return target.to_json() if hasattr(target, "to_json") else dict(target)


def _shape_arg(inputs: list[dict], key: str) -> str:
    """trtexec's shape syntax: "image:1x3x16x16,text:1x8" (only inputs that declare `key`)."""
    return ",".join(f"{i['name']}:{'x'.join(str(int(d)) for d in i[key])}"
                    for i in inputs if i.get(key) is not None)


def _is_low_precision_graph(part: dict, out_dir: Path) -> bool:
    """True when the part's ONNX itself is fp16/bf16 (then its types, not builder flags, rule)."""
    low = {"float16", "bfloat16", "fp16", "bf16", "FLOAT16", "BFLOAT16"}
    path = out_dir / part["onnx"]
    if path.is_file():
        try:
            import onnx

            m = onnx.load(str(path), load_external_data=False)
            io = list(m.graph.input) + list(m.graph.output)
            if any(_dtype_name(v.type.tensor_type.elem_type) in low for v in io):
                return True
            return any(_dtype_name(i.data_type) in low for i in m.graph.initializer)
        except Exception:  # noqa: BLE001 - fall back to the manifest's dtypes
            pass
    return any(str(t.get("dtype")) in low for t in part.get("inputs", []) + part.get("outputs", []))


def _plan(parts: list[dict], target, out_dir: Path) -> list[dict]:
    """Per part: everything the .sh, the .py and build_engines need, decided once."""
    tgt = _target_dict(target)
    precision = str(tgt.get("precision", "fp32")).lower()
    if precision not in _PRECISIONS:
        raise ValueError(f"precision {precision!r}: TensorRT builds here take {_PRECISIONS}")
    version = str(tgt.get("tensorrt") or "10.3")
    try:
        typed_ok = trt_ops.resolve(version)[0].strongly_typed
    except ValueError:
        typed_ok = not version.startswith("8.")
    plans = []
    for part in parts:
        strongly = typed_ok and _is_low_precision_graph(part, out_dir)
        dynamic = [i for i in part.get("inputs", [])
                   if any(not isinstance(d, int) or d < 0 for d in i.get("shape", []))
                   or i.get("min") is not None]
        for i in dynamic:
            if not all(i.get(k) is not None for k in ("min", "opt", "max")):
                raise ValueError(f"part {part['name']}: dynamic input {i['name']} needs "
                                 "min/opt/max shapes")
        plans.append({
            "name": part["name"], "onnx": part["onnx"], "engine": f"{part['name']}.engine",
            "precision": precision, "strongly_typed": strongly,
            "profile": [{"name": i["name"], "min": [int(d) for d in i["min"]],
                         "opt": [int(d) for d in i["opt"]], "max": [int(d) for d in i["max"]]}
                        for i in dynamic],
            "min_shapes": _shape_arg(dynamic, "min"), "opt_shapes": _shape_arg(dynamic, "opt"),
            "max_shapes": _shape_arg(dynamic, "max"),
        })
    return plans


def _render(name: str, **ctx) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters.update(TEMPLATE_FILTERS)
    return env.get_template(name).render(**ctx)


def build_script(parts: list[dict], target, out_dir) -> tuple[Path, Path]:
    """Write build_engine.sh (trtexec) and build_engine.py (tensorrt API) into `out_dir`.

    They run where the engine must be built -- a TensorRT engine is specific to the GPU and
    TensorRT version that built it, so a Jetson builds its own.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tgt = _target_dict(target)
    ctx = {"plans": _plan(parts, tgt, out_dir), "target": tgt,
           "workspace_mb": int(tgt.get("workspace_mb", 1024)),
           "timing_cache": "timing.cache", "trt_version": str(tgt.get("tensorrt") or "")}
    sh = out_dir / "build_engine.sh"
    sh.write_text(_render("build_engine.sh.j2", **ctx))
    sh.chmod(0o755)
    py = out_dir / "build_engine.py"
    py.write_text(_render("build_engine.py.j2", plans_json=json.dumps(ctx["plans"], indent=4),
                          **ctx))
    py.chmod(0o755)
    return sh, py


def _cuda_device_count() -> int:
    """CUDA devices visible through the driver API (works on Jetson, needs no torch)."""
    import ctypes

    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(lib)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def engine_available() -> tuple[bool, str]:
    """(True, "") when engines can be built here: tensorrt imports and a CUDA GPU is visible."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return False, f"the tensorrt Python package is not installed ({exc})"
    if _cuda_device_count() < 1:
        return False, "no CUDA GPU is visible (libcuda missing or no device)"
    return True, ""


def _gpu_name() -> str:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    model = Path("/proc/device-tree/model")  # Jetson
    if model.is_file():
        return model.read_text(errors="replace").strip("\x00\n ")
    return "unknown"


def _parser_errors(parser) -> str:
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = getattr(err, "node_name", lambda: "")() or f"#{err.node()}"
        op = getattr(err, "node_operator", lambda: "")()
        lines.append(f"  node {node}{f' ({op})' if op else ''}: {err.desc()}")
    return "\n".join(lines)


def build_engines(parts: list[dict], target, out_dir) -> list[Path]:
    """Build `<part>.engine` + `<part>.engine.json` for every part with the tensorrt API."""
    ok, why = engine_available()
    if not ok:
        raise TensorRTUnavailable(f"cannot build TensorRT engines here: {why}. Run "
                                  f"{Path(out_dir) / 'build_engine.sh'} (trtexec) or "
                                  "build_engine.py on the target machine instead.")
    import tensorrt as trt

    out_dir = Path(out_dir)
    tgt = _target_dict(target)
    workspace = int(tgt.get("workspace_mb", 1024)) << 20
    logger = trt.Logger(trt.Logger.WARNING)
    cache_path = out_dir / "timing.cache"
    built = []
    for plan in _plan(parts, tgt, out_dir):
        builder = trt.Builder(logger)
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and \
                int(trt.__version__.split(".")[0]) < 10:
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        if plan["strongly_typed"]:  # fp16 graph: its own types decide, no builder flags
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(out_dir / plan["onnx"])):
            raise RuntimeError(f"TensorRT {trt.__version__} could not parse {plan['onnx']}:\n"
                               + _parser_errors(parser))
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
        if not plan["strongly_typed"]:
            if plan["precision"] == "fp16":
                config.set_flag(trt.BuilderFlag.FP16)
            elif plan["precision"] == "bf16":
                config.set_flag(trt.BuilderFlag.BF16)
        profile = builder.create_optimization_profile()
        shapes = {p["name"]: p for p in plan["profile"]}
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            if any(d < 0 for d in tensor.shape):
                if tensor.name not in shapes:
                    raise ValueError(f"part {plan['name']}: input {tensor.name} is dynamic "
                                     f"{tuple(tensor.shape)} but has no min/opt/max shapes")
                s = shapes[tensor.name]
                profile.set_shape(tensor.name, s["min"], s["opt"], s["max"])
        config.add_optimization_profile(profile)
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file()
                                           else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT failed to build an engine for {plan['name']}")
        cache_path.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
        engine = out_dir / plan["engine"]
        engine.write_bytes(bytes(memoryview(serialized)))
        manifest = {"part": plan["name"], "onnx": plan["onnx"], "tensorrt": trt.__version__,
                    "gpu": _gpu_name(), "precision": plan["precision"],
                    "strongly_typed": plan["strongly_typed"], "profiles": [plan["profile"]],
                    "workspace_mb": workspace >> 20}
        (out_dir / f"{plan['engine']}.json").write_text(json.dumps(manifest, indent=2) + "\n")
        built.append(engine)
    return built


__all__ = ["CompatReport", "Finding", "TensorRTUnavailable", "build_engines", "build_script",
           "check_compatibility", "engine_available", "spec_location"]

