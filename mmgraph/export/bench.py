"""`mmgraph bench`: latency and throughput of every available backend, side by side.

Each export part runs on the same inputs in torch eager, torch.compile, onnxruntime and
TensorRT (where an engine and a GPU exist). Calls are interleaved (one call of each backend
per round) so machine noise hits all alike; p50/p90/p99 latencies, throughput at p50 and the
ratio of each backend's p50 to torch eager's are reported. It measures; it never asserts.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mmgraph.build import instantiate, load_class
from mmgraph.errors import UsageError, UserError
from mmgraph.export import targets
from mmgraph.export.onnx_parts import export, part_module, plan_parts, random_inputs
from mmgraph.runtime.manifest import REEXPORT, ExportFolder, ManifestError, open_folder
from mmgraph.runtime.session import OnnxSession, TensorRTSession, TensorSpec


def _percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q))


def bench(source: str | Path, dims: dict[str, int] | None = None, runs: int = 50,
          warmup: int = 5, compile: bool = True, overrides: dict | None = None,
          model_name: str | None = None, lib_dirs=(), log=print) -> dict:
    """Benchmark a spec (exported on the fly) or an `mmgraph export` folder.

    A spec is exported twice, at opset 18 (attention as MatMul/Softmax) and at opset 23
    (attention as one fused `Attention` node), and onnxruntime runs both: rows `onnxruntime`
    and `onnxruntime@23`, measured side by side in the same interleaved rounds."""
    source = Path(source)
    if source.is_dir():
        if overrides or model_name or lib_dirs:
            raise UsageError(f"{source} is an export folder: it keeps the model and constants "
                             "it was exported with (--set, --model and --lib apply to a spec)")
        return _bench(open_folder(source), source, dims, runs, warmup, compile, log)
    if not source.exists():
        raise UserError(f"{source}: no such spec file or export folder")
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as tmp23:
        # the parts only: bench never runs the generation graphs
        export(source, tmp, targets.load("onnx"), overrides=overrides, model_name=model_name,
               lib_dirs=lib_dirs, log=lambda _: None, generation=False)
        # the same model with attention as ONNX's fused Attention op
        export(source, tmp23, targets.load("onnxruntime-fused"), overrides=overrides,
               model_name=model_name, lib_dirs=lib_dirs, log=lambda _: None, generation=False)
        return _bench(open_folder(tmp), source, dims, runs, warmup, compile, log,
                      open_folder(tmp23))


def _sizes(folder: ExportFolder, source: Path, dims: dict[str, int]) -> dict[str, int]:
    """The sizes to run at: the export's opt sizes, with `dims` inside the exported ranges."""
    ranges = folder.manifest.dims
    for name, value in dims.items():
        if name not in ranges:
            raise UsageError(f"--dims {name}: {source} has no dim {name} (its dims: "
                             f"{', '.join(ranges) or 'none'})")
        r = ranges[name]
        if not r.min <= value <= r.max:
            raise UsageError(f"--dims {name}={value} is outside the range {r.min}..{r.max} "
                             f"that {source} is exported for")
    return {**{k: r.opt for k, r in ranges.items()}, **dims}


def _bench(folder: ExportFolder, source: Path, dims: dict[str, int] | None, runs: int,
           warmup: int, compile: bool, log, fused: ExportFolder | None = None) -> dict:
    manifest = folder.manifest
    use = _sizes(folder, source, dims or {})
    onnx_files = {p.name: folder.file(p.onnx, f"part '{p.name}'") for p in manifest.parts}
    spec = Path(manifest.spec)
    if not spec.is_file():
        raise ManifestError(f"{folder.manifest_path}: the spec it was exported from, {spec} "
                            "(field 'spec'), is not there; bench needs it for the torch "
                            "backends")
    cls, g = load_class(spec, manifest.model, lib_dirs=manifest.lib_dirs, **manifest.overrides)
    torch.manual_seed(0)
    # the weights the export wrote: its checkpoint's, else the pretrained parts'
    model = instantiate(cls, g, pretrained=not manifest.checkpoint)
    if manifest.checkpoint:
        from mmgraph.backends.torch import weights as ckpt

        ckpt.load_weights(ckpt.find(manifest.checkpoint), model, g)
    model.eval()
    from mmgraph.export import tensorrt

    trt_ok, trt_why = tensorrt.engine_available()
    report = {"model": g.name, "dims": use, "runs": runs, "threads": torch.get_num_threads(),
              "opset": manifest.opset,
              "tensorrt": "available" if trt_ok else trt_why, "parts": []}
    plans = {p.name: p for p in plan_parts(g)}
    for part in manifest.parts:
        if part.name not in plans:
            raise ManifestError(f"{folder.manifest_path}: part '{part.name}' is not in {spec} "
                                "any more; " + REEXPORT)
        plan = plans[part.name]
        module = part_module(model, g, str(spec), plan)
        x = random_inputs(g, plan.inputs, use)
        arrays = {k: v.numpy() for k, v in x.items()}
        args = tuple(x.values())
        backends = {"torch": lambda m=module, a=args: m(*a)}
        if compile:
            compiled = torch.compile(module)
            start = time.perf_counter()
            with torch.no_grad():
                compiled(*x.values())
            log(f"part {plan.name}: torch.compile took {time.perf_counter() - start:.1f} s")
            backends["torch.compile"] = lambda m=compiled, a=args: m(*a)
        what = f"part '{part.name}'"
        inputs = [TensorSpec.of(i) for i in part.inputs]
        outputs = [TensorSpec.of(o) for o in part.outputs]
        onnx = OnnxSession(onnx_files[part.name], inputs, outputs, name=part.name,
                           providers=["CPUExecutionProvider"])
        backends["onnxruntime"] = lambda s=onnx, a=arrays: s.run_trusted(a)
        if fused is not None:
            path = fused.file(next(p.onnx for p in fused.manifest.parts if p.name == part.name),
                              what)
            onnx23 = OnnxSession(path, inputs, outputs, name=part.name,
                                 providers=["CPUExecutionProvider"])
            backends[f"onnxruntime@{fused.manifest.opset}"] = \
                lambda s=onnx23, a=arrays: s.run_trusted(a)
        engine = folder.path / f"{part.name}.engine"
        if trt_ok and engine.exists():
            trt = TensorRTSession(folder.file(engine.name, what), inputs, outputs,
                                  name=part.name)
            backends["tensorrt"] = lambda s=trt, a=arrays: s.run_trusted(a)
        times: dict[str, list[float]] = {k: [] for k in backends}
        with torch.inference_mode():
            for _ in range(warmup):
                for fn in backends.values():
                    fn()
            for _ in range(runs):
                for name, fn in backends.items():
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
        batch = next(iter(x.values())).shape[0]
        eager = statistics.median(times["torch"])
        rows = {}
        for name, ts in times.items():
            p50 = statistics.median(ts)
            rows[name] = {"p50_ms": p50 * 1e3, "p90_ms": _percentile(ts, 90) * 1e3,
                          "p99_ms": _percentile(ts, 99) * 1e3,
                          "samples_per_s": batch / p50, "ratio_to_torch": p50 / eager}
        report["parts"].append({"name": plan.name, "batch": batch, "backends": rows})
    return report


def table(report: dict) -> str:
    dims = ", ".join(f"{k}={v}" for k, v in report["dims"].items())
    lines = [f"{report['model']} at {dims}, {report['runs']} interleaved runs, "
             f"{report['threads']} threads; TensorRT: {report['tensorrt']}",
             f"{'part':12} {'backend':14} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
             f"{'samples/s':>10} {'vs torch':>9}"]
    for part in report["parts"]:
        for name, r in part["backends"].items():
            lines.append(f"{part['name']:12} {name:14} {r['p50_ms']:9.3f} {r['p90_ms']:9.3f} "
                         f"{r['p99_ms']:9.3f} {r['samples_per_s']:10.1f} "
                         f"{r['ratio_to_torch']:9.3f}")
        fused = [k for k in part["backends"] if k.startswith("onnxruntime@")]
        if fused and "onnxruntime" in part["backends"]:
            ratio = (part["backends"][fused[0]]["p50_ms"]
                     / part["backends"]["onnxruntime"]["p50_ms"])
            lines.append(f"{part['name']:12} onnxruntime opset {fused[0].split('@')[1]} "
                         f"(fused Attention) / opset {report.get('opset', '?')}: p50 x{ratio:.3f}")
    return "\n".join(lines)
