"""Triton Inference Server deployment: a model repository from an export manifest.

Each exported part becomes one Triton model (`<model>_<part>/config.pbtxt` + `1/model.onnx`
or `1/model.plan`) and an ensemble model `<model>/` chains them, so a client sends the
model's external inputs once and Triton moves the intermediate tensors (e.g. the visual
features `v`) between parts on the server. A model that generates also gets its context,
prefill and decode graphs as models, and GENERATE.md: the client-side loop that drives them
(`_generation_models` says why the loop is not a server-side BLS model).

The configs are protobuf text of Triton's `ModelConfig`. `validate_repository` parses them
with Triton's own schema (shipped by the `tritonclient` package) instead of a home-made
one, so a field or enum name Triton would reject is caught here, not at server start.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2

from mmgraph.escape import TEMPLATE_FILTERS
from mmgraph.runtime.manifest import inside

__all__ = ["write_repository", "validate_repository", "triton_dtype", "instance_kind",
           "BACKENDS"]

# backend -> (Triton platform, model file in the version directory)
BACKENDS = {
    "onnxruntime": ("onnxruntime_onnx", "model.onnx"),
    "tensorrt": ("tensorrt_plan", "model.plan"),
}

# manifest dtype (torch/numpy spelling) -> Triton DataType enum name
DTYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
    "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
    "string": "TYPE_STRING",
}
ALIASES = {"half": "float16", "float": "float32", "double": "float64", "long": "int64",
           "int": "int32", "fp16": "float16", "fp32": "float32", "bf16": "bfloat16",
           # mmgraph's own spellings (types like Image[B, 3, H, W, f32])
           "f16": "float16", "f32": "float32", "f64": "float64", "i8": "int8", "i16": "int16",
           "i32": "int32", "i64": "int64", "u8": "uint8"}

# onnxruntime execution providers that run on the CPU; any other one needs a GPU
CPU_PROVIDERS = {"CPUExecutionProvider", "DnnlExecutionProvider", "OpenVINOExecutionProvider",
                 "XnnpackExecutionProvider", "ACLExecutionProvider", "ArmNNExecutionProvider"}

BATCH = "B"  # the dim name that Triton's batcher may own
# A short wait lets concurrent requests coalesce into one batch; small enough not to matter
# for a single interactive client.
QUEUE_DELAY_US = 100


def triton_dtype(dtype: str) -> str:
    """Triton's DataType name for a manifest dtype ('float32', 'torch.int64', ...)."""
    name = str(dtype).removeprefix("torch.").removeprefix("numpy.")
    name = ALIASES.get(name, name)
    if name not in DTYPES:
        raise ValueError(f"dtype {dtype!r} has no Triton data type (known: {sorted(DTYPES)})")
    return DTYPES[name]


def instance_kind(backend: str, providers: Sequence[str] = ("CPUExecutionProvider",)) -> str:
    """Where Triton places the model's instances: a TensorRT plan needs the GPU; an ONNX
    model follows the target's providers (a CPU target must load on a CPU-only server)."""
    if backend == "tensorrt" or any(p not in CPU_PROVIDERS for p in providers):
        return "KIND_GPU"
    return "KIND_CPU"


# ----------------------------------------------------------------------------- writing


def write_repository(manifest: dict, dist: Path, out: Path, backend: str = "onnxruntime",
                     *, instances: int = 1,
                     providers: Sequence[str] = ("CPUExecutionProvider",)) -> Path:
    """Write a Triton model repository for the exported parts in `dist` into `out`.

    Returns `out`. For backend "tensorrt" a part's plan is copied from
    `dist/<part>.engine` when it was built; otherwise a README.txt in the version directory
    says how to build it, since a plan only runs on the GPU and TensorRT it was built with.
    The instances' kind follows the backend and the target's `providers` (`instance_kind`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown Triton backend {backend!r} (known: {sorted(BACKENDS)})")
    platform = BACKENDS[backend][0]
    kind = instance_kind(backend, providers)
    dist, out = Path(dist), Path(out)
    model = manifest["model"]
    parts = manifest["parts"]
    if not parts:
        raise ValueError("the manifest has no parts to deploy")
    origin = f"{model}, {manifest.get('precision', '?')}"

    configs = []
    dims = manifest.get("dims", {})
    for part in parts:
        name = f"{model}_{part['name']}"
        configs.append(_part_config(part, name, platform, dims, instances, kind, origin))
        _place_model(part, name, model, dist, out, backend)
    configs.append(_ensemble_config(model, parts, configs, origin))
    configs += _generation_models(manifest, dist, out, backend, instances, kind, origin)

    template = _env().get_template("triton_config.pbtxt.j2")
    for config in configs:
        (out / config["name"]).mkdir(parents=True, exist_ok=True)
        (out / config["name"] / "config.pbtxt").write_text(template.render(m=config))
    return out


def _place_model(part: dict, name: str, model: str, dist: Path, out: Path,
                 backend: str) -> None:
    """The model file of one Triton model: the part's ONNX, or its engine (or a README
    saying how to build it)."""
    filename = BACKENDS[backend][1]
    version = out / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    if backend == "onnxruntime":
        # an fp16 export keeps fp32 inputs/outputs (keep_io_types), so the config holds
        source = part.get("onnx_fp16") or part.get("onnx", f"{part['name']}.onnx")
        shutil.copyfile(inside(dist, source, f"part '{part['name']}'"), version / filename)
        return
    engine_name = part.get("engine", f"{part['name']}.engine")
    engine = dist / engine_name
    if engine.exists() or engine.is_symlink():
        shutil.copyfile(inside(dist, engine_name, f"part '{part['name']}'"),
                        version / filename)
        (version / "README.txt").unlink(missing_ok=True)
    else:
        (version / "README.txt").write_text(_env().get_template(
            "triton_plan_readme.txt.j2").render(
                part=part["name"], model=model, name=name, engine=engine,
                engine_name=engine.name, target=f"{name}/1/{filename}"))


def _generation_models(manifest: dict, dist: Path, out: Path, backend: str, instances: int,
                       kind: str, origin: str) -> list[dict]:
    """`<model>_generate_context`, `_prefill` and `_decode` (context: unless a part computes
    it) and GENERATE.md, the client-side loop that drives them.

    The loop runs in the client, not in a BLS (python backend) model: the next token is
    chosen by `mmgraph.sampling`, the numpy code every backend shares so that torch,
    onnxruntime, TensorRT and Triton pick the same tokens; a BLS model would run a second
    copy of it inside Triton's Python stub (which has neither mmgraph nor pydantic) and
    could be checked only against a running server, whereas these three plain ONNX/plan
    models are validated here like the parts. The price: the KV cache travels between
    client and server at every step (keep them on one host, or use Triton's shared memory,
    for large models).
    """
    section = manifest.get("generate")
    if not section:
        return []
    model, platform = manifest["model"], BACKENDS[backend][0]
    configs, names = [], {}
    for key in ("context", "prefill", "decode"):
        graph = section[key]
        if graph is None:
            continue
        if graph.get("reuses_part"):
            names[key] = f"{model}_{graph['reuses_part']}"
            continue
        name = names[key] = f"{model}_{graph['name']}"
        configs.append(_part_config(graph, name, platform, manifest.get("dims", {}), instances,
                                    kind, origin))
        _place_model(graph, name, model, dist, out, backend)
    (out / "GENERATE.md").write_text(_env().get_template("triton_generate_readme.md.j2").render(
        model=model, names=names, g=section))
    return configs


def _part_config(part: dict, name: str, platform: str, dims: dict, instances: int,
                 kind: str, origin: str) -> dict:
    """The config of one part; batched when every tensor leads with the batch dim."""
    tensors = part["inputs"] + part["outputs"]
    batch_max = dims.get(BATCH, {}).get("max")
    batched = bool(batch_max) and all(t["shape"] and t["shape"][0] == BATCH for t in tensors)
    return {
        "name": name, "platform": platform, "origin": origin,
        "max_batch_size": int(batch_max) if batched else 0,
        "inputs": [_tensor(t, batched) for t in part["inputs"]],
        "outputs": [_tensor(t, batched) for t in part["outputs"]],
        "instance_group": {"count": instances, "kind": kind},
        "dynamic_batching": {"max_queue_delay_microseconds": QUEUE_DELAY_US} if batched else None,
        "steps": None,
    }


def _tensor(t: dict, batched: bool) -> dict:
    """Name, Triton dtype and dims (-1 for any named or computed dim) of one tensor."""
    shape = list(t["shape"])[1:] if batched else list(t["shape"])
    dims = [d if isinstance(d, int) else -1 for d in shape]
    reshape = None
    if not dims:  # a scalar per item: Triton wants non-empty dims, so reshape [1] away
        dims, reshape = [1], []
    return {"name": t["name"], "data_type": triton_dtype(t["dtype"]), "dims": dims,
            "reshape": reshape}


def _ensemble_config(model: str, parts: list[dict], configs: list[dict], origin: str) -> dict:
    """The ensemble chaining the parts in manifest order.

    An ensemble tensor is named after the part tensor that produces it: a part input with
    the name of an earlier part's output is fed from that output; any other part input is
    an ensemble input; part outputs that no later part reads are the ensemble outputs.
    """
    # Triton lets the ensemble batch only if every step can take its whole batch.
    sizes = [c["max_batch_size"] for c in configs]
    max_batch = min(sizes) if all(sizes) else 0
    produced: dict[str, tuple[dict, dict]] = {}  # tensor -> (manifest tensor, its config)
    inputs: dict[str, dict] = {}
    consumed: set[str] = set()
    steps = []
    for part, config in zip(parts, configs):
        for t in part["inputs"]:
            if t["name"] in produced:
                consumed.add(t["name"])
                continue
            seen = inputs.get(t["name"])
            if seen is not None and triton_dtype(seen["dtype"]) != triton_dtype(t["dtype"]):
                raise ValueError(f"ensemble input {t['name']!r} is {seen['dtype']} in one part "
                                 f"and {t['dtype']} in part {part['name']!r}")
            inputs.setdefault(t["name"], t)
        for t in part["outputs"]:
            if t["name"] in produced or t["name"] in inputs:
                raise ValueError(f"tensor {t['name']!r} of part {part['name']!r} is already "
                                 "produced or fed in the ensemble; names must be unique")
            produced[t["name"]] = t
        steps.append({
            "model_name": config["name"],
            "input_map": [(t["name"], t["name"]) for t in part["inputs"]],
            "output_map": [(t["name"], t["name"]) for t in part["outputs"]],
        })
    outputs = [t for name, t in produced.items() if name not in consumed]
    return {
        "name": model, "platform": "ensemble", "origin": origin,
        "max_batch_size": max_batch,
        "inputs": [_tensor(t, bool(max_batch)) for t in inputs.values()],
        "outputs": [_tensor(t, bool(max_batch)) for t in outputs],
        "instance_group": None, "dynamic_batching": None, "steps": steps,
    }


@functools.cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("mmgraph.export", "templates"),
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    env.filters.update(TEMPLATE_FILTERS)
    return env


# ----------------------------------------------------------------------------- checking


@functools.cache
def model_config_pb2() -> Any:
    """Triton's generated `model_config_pb2` module, from the `tritonclient` package.

    `tritonclient.grpc`'s package init needs grpcio, which the schema itself does not, so
    without grpcio the generated file is loaded on its own.
    """
    try:
        return importlib.import_module("tritonclient.grpc.model_config_pb2")
    except (ImportError, RuntimeError):  # tritonclient.grpc raises RuntimeError sans grpcio
        pass
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("validating a Triton repository needs Triton's model config schema: "
                          "pip install tritonclient")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    file_spec = importlib.util.spec_from_file_location("_mmgraph_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def validate_repository(path: Path) -> list[str]:
    """Problems in the Triton repository at `path`; empty when it looks servable.

    Each config.pbtxt must parse as Triton's ModelConfig; then the checks Triton makes
    only when loading: the model name matches its directory, the model file exists (a
    missing plan next to the README that explains how to build it counts as pending, not
    broken), an ONNX file declares the config's tensors, and every ensemble step names an
    existing model and maps tensors that model declares, with agreeing data types and dims.
    """
    from google.protobuf import text_format

    pb2 = model_config_pb2()
    path = Path(path)
    problems: list[str] = []
    configs: dict[str, Any] = {}
    broken: set[str] = set()  # unparseable: reported once, not again from each ensemble
    files = sorted(path.glob("*/config.pbtxt"))
    if not files:
        return [f"{path}: no model directory with a config.pbtxt"]
    for file in files:
        where = file.relative_to(path)
        try:
            config = text_format.Parse(file.read_text(), pb2.ModelConfig())
        except text_format.ParseError as error:
            problems.append(f"{where}: not a valid Triton ModelConfig: {error}")
            broken.add(file.parent.name)
            continue
        directory = file.parent.name
        if config.name and config.name != directory:
            problems.append(f"{where}: name {config.name!r} differs from its directory")
        configs[directory] = config
        problems += [f"{where}: {p}" for p in _check_model(config, file.parent, pb2)]
    for name, config in configs.items():
        if config.platform == "ensemble":
            found = _check_ensemble(config, configs, broken)
            problems += [f"{name}/config.pbtxt: {p}" for p in found]
    return problems


def _check_model(config: Any, directory: Path, pb2: Any) -> list[str]:
    """Checks of one config by itself."""
    problems = []
    tensors = list(config.input) + list(config.output)
    for t in tensors:
        if t.data_type == pb2.TYPE_INVALID:
            problems.append(f"tensor {t.name!r} has no data_type")
        if not t.dims:
            problems.append(f"tensor {t.name!r} has no dims")
    names = [t.name for t in config.input] + [t.name for t in config.output]
    for name in {n for n in names if names.count(n) > 1}:
        problems.append(f"tensor name {name!r} is declared twice")
    if config.max_batch_size < 0:
        problems.append("max_batch_size is negative")
    if config.platform == "ensemble":
        if not config.ensemble_scheduling.step:
            problems.append("ensemble without ensemble_scheduling steps")
        return problems
    if config.platform not in {p for p, _ in BACKENDS.values()}:
        problems.append(f"platform {config.platform!r} is not one mmgraph deploys")
        return problems
    if config.HasField("dynamic_batching") and config.max_batch_size == 0:
        problems.append("dynamic_batching needs max_batch_size > 0")
    filename = dict(BACKENDS.values()).get(config.platform)
    versions = [d for d in directory.iterdir() if d.is_dir() and d.name.isdigit()]
    if not versions:
        problems.append("no numbered version directory")
    for version in versions:
        if (version / filename).exists():
            if filename.endswith(".onnx"):
                problems += [f"{version.name}/{filename}: {p}"
                             for p in _check_onnx(config, version / filename, pb2)]
        elif not (version / "README.txt").exists():
            problems.append(f"{version.name}/{filename} is missing")
    return problems


def _check_onnx(config: Any, file: Path, pb2: Any) -> list[str]:
    """The ONNX graph's inputs and outputs against the config (names, types, ranks)."""
    try:
        import onnx
    except ImportError:  # the repository may be checked where onnx is not installed
        return []
    try:
        graph = onnx.load(str(file), load_external_data=False).graph
    except Exception as error:  # whatever makes it unreadable is the finding
        return [f"cannot be read as ONNX: {error}"]
    problems = []
    for kind, declared, actual in (("input", config.input, graph.input),
                                   ("output", config.output, graph.output)):
        found = {v.name: v.type.tensor_type for v in actual}
        for t in declared:
            if t.name not in found:
                problems.append(f"the graph has no {kind} {t.name!r} (it has {sorted(found)})")
                continue
            numpy_name = onnx.helper.tensor_dtype_to_np_dtype(found[t.name].elem_type).name
            data_type = pb2.DataType.Name(t.data_type)
            if DTYPES.get(numpy_name) != data_type:
                problems.append(f"{kind} {t.name!r} is {numpy_name} in the graph, "
                                f"{data_type} in the config")
            rank = len(_full_dims(t, config.max_batch_size))
            if found[t.name].HasField("shape") and len(found[t.name].shape.dim) != rank:
                problems.append(f"{kind} {t.name!r} has rank {len(found[t.name].shape.dim)} "
                                f"in the graph, {rank} in the config")
    return problems


def _check_ensemble(config: Any, configs: dict[str, Any], broken: set[str]) -> list[str]:
    """An ensemble's steps against the configs of the models they call."""
    problems = []
    # ensemble tensor -> (data_type, full dims), or None behind a step to a broken config
    known = {t.name: (t.data_type, _full_dims(t, config.max_batch_size)) for t in config.input}
    produced = set()
    for i, step in enumerate(config.ensemble_scheduling.step):
        target = configs.get(step.model_name)
        if step.model_name in broken:
            produced.update(step.output_map.values())
            known.update(dict.fromkeys(step.output_map.values()))
            continue
        if target is None:
            problems.append(f"step {i} calls model {step.model_name!r}, not in the repository")
            continue
        if config.max_batch_size > target.max_batch_size:
            problems.append(f"step {i}: ensemble max_batch_size {config.max_batch_size} "
                            f"exceeds {step.model_name!r}'s {target.max_batch_size}")
        declared_in = {t.name: t for t in target.input}
        declared_out = {t.name: t for t in target.output}
        for key, value in step.input_map.items():
            if key not in declared_in:
                problems.append(f"step {i}: {step.model_name!r} has no input {key!r}")
            elif value not in known:
                problems.append(f"step {i}: ensemble tensor {value!r} is neither an ensemble "
                                "input nor produced by an earlier step")
            elif known[value] is not None:
                problems += _agree(f"step {i}: {step.model_name}.{key} <- {value}",
                                   declared_in[key], target.max_batch_size, known[value])
        for key in declared_in.keys() - step.input_map.keys():
            if not declared_in[key].optional:
                problems.append(f"step {i}: input {key!r} of {step.model_name!r} is not mapped")
        for key, value in step.output_map.items():
            if key not in declared_out:
                problems.append(f"step {i}: {step.model_name!r} has no output {key!r}")
                continue
            if value in produced or value in {t.name for t in config.input}:
                problems.append(f"step {i}: ensemble tensor {value!r} is produced twice")
            produced.add(value)
            t = declared_out[key]
            known[value] = (t.data_type, _full_dims(t, target.max_batch_size))
    for t in config.output:
        if t.name not in produced:
            problems.append(f"ensemble output {t.name!r} is produced by no step")
        elif known[t.name] is not None:
            problems += _agree(f"ensemble output {t.name}", t, config.max_batch_size,
                               known[t.name])
    return problems


def _full_dims(t: Any, max_batch_size: int) -> list[int]:
    """Dims including the batch axis (which a batched config leaves implicit)."""
    dims = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
    return [-1, *dims] if max_batch_size else dims


def _agree(what: str, t: Any, max_batch_size: int, other: tuple[int, list[int]]) -> list[str]:
    """Data type and dims of a declared tensor against what the ensemble feeds it."""
    data_type, dims = other
    problems = []
    if t.data_type != data_type:
        names = type(t).DESCRIPTOR.fields_by_name["data_type"].enum_type.values_by_number
        problems.append(f"{what}: data type {names[t.data_type].name} vs "
                        f"{names[data_type].name}")
    mine = _full_dims(t, max_batch_size)
    if len(mine) != len(dims) or any(a != b and -1 not in (a, b) for a, b in zip(mine, dims)):
        problems.append(f"{what}: dims {mine} vs {dims} (batch axis included)")
    return problems
