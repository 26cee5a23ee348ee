"""One `Session` interface over a torch module, an ONNX file and a TensorRT engine.

Named inputs in, named outputs out. Inputs are checked against the spec's types before any
backend sees them: a wrong rank, dtype or a size outside the exported range is an
`InputError` naming the input and the dim, not an onnxruntime stack trace. A `Pipeline` runs
the parts of an export in order, feeding each part's outputs to the parts after it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmgraph.errors import UserError
from mmgraph.lang.diagnostics import did_you_mean


class InputError(UserError, ValueError):
    """A bad input to a session, worded for people."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, int64, ...
    shape: tuple  # ints, or dim names / expressions (strings)

    @staticmethod
    def of(info: dict) -> TensorSpec:
        return TensorSpec(info["name"], info["dtype"], tuple(info["shape"]))


def _as_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


class Session:
    """Validates inputs against the exported types; subclasses run them."""

    backend = "?"

    def __init__(self, inputs: list[TensorSpec], outputs: list[TensorSpec],
                 ranges: dict[str, dict[str, int]] | None = None, name: str = "model"):
        self.inputs, self.outputs = inputs, outputs
        self.ranges = ranges or {}
        self.name = name

    def validate(self, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        names = [i.name for i in self.inputs]
        for key in feed:
            if key not in names:
                hint = did_you_mean(key, names)
                raise InputError(f"{self.name} has no input '{key}'" +
                                 (f"; {hint}" if hint else f"; its inputs are: {', '.join(names)}"))
        bound: dict[str, tuple[int, str]] = {}
        out = {}
        for spec in self.inputs:
            if spec.name not in feed:
                raise InputError(f"{self.name} needs input '{spec.name}' "
                                 f"({spec.dtype} {list(spec.shape)})")
            array = _as_numpy(feed[spec.name])
            if array.ndim != len(spec.shape):
                raise InputError(f"input '{spec.name}': expected rank {len(spec.shape)} "
                                 f"{list(spec.shape)}, got shape {list(array.shape)}")
            if array.dtype != np.dtype(spec.dtype):
                raise InputError(f"input '{spec.name}': expected dtype {spec.dtype}, got "
                                 f"{array.dtype}")
            for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
                if isinstance(want, int):
                    if got != want:
                        raise InputError(f"input '{spec.name}': axis {axis} must be {want}, "
                                         f"got {got} (shape {list(array.shape)})")
                    continue
                if not str(want).isidentifier():
                    continue  # an expression of other dims: checked through them
                if want in bound and bound[want][0] != got:
                    first, where = bound[want]
                    raise InputError(f"input '{spec.name}': dim {want} is {got} here but "
                                     f"{first} in input '{where}'")
                bound[want] = (got, spec.name)
                r = self.ranges.get(want)
                if r and not r["min"] <= got <= r["max"]:
                    raise InputError(f"input '{spec.name}': dim {want} = {got} is outside the "
                                     f"exported range {r['min']}..{r['max']}")
            out[spec.name] = array
        return out

    def run(self, **feed) -> dict[str, np.ndarray]:
        return self._run(self.validate(feed))

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError


class TorchSession(Session):
    backend = "torch"

    def __init__(self, module, inputs, outputs, ranges=None, name="model", device="cpu"):
        super().__init__(inputs, outputs, ranges, name)
        self.module, self.device = module.eval(), device

    def _run(self, feed):
        import torch

        with torch.no_grad():
            out = self.module(*(torch.from_numpy(feed[i.name]).to(self.device)
                                for i in self.inputs))
        return {k: v.detach().cpu().numpy() for k, v in out.items()}


def best_providers(preferred=("TensorrtExecutionProvider", "CUDAExecutionProvider",
                              "CPUExecutionProvider")) -> list[str]:
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    return [p for p in preferred if p in available] or ["CPUExecutionProvider"]


class OnnxSession(Session):
    """onnxruntime with the best execution provider available: TensorRT, CUDA, then CPU."""

    backend = "onnxruntime"

    def __init__(self, path, inputs, outputs, ranges=None, name="model", providers=None):
        import onnxruntime as ort

        super().__init__(inputs, outputs, ranges, name)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options,
                                            providers=providers or best_providers())
        self.providers = self.session.get_providers()

    def _run(self, feed):
        names = [o.name for o in self.outputs]
        return dict(zip(names, self.session.run(names, feed)))


class TensorRTSession(Session):
    """A serialized TensorRT engine, run with the tensorrt runtime on CUDA tensors."""

    backend = "tensorrt"

    def __init__(self, path, inputs, outputs, ranges=None, name="model"):
        import tensorrt as trt
        import torch

        super().__init__(inputs, outputs, ranges, name)
        self.torch = torch
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        self.engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"cannot deserialize the TensorRT engine {path}")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()

    def _run(self, feed):
        torch = self.torch
        tensors = {}
        for spec in self.inputs:
            t = torch.from_numpy(feed[spec.name]).cuda().contiguous()
            self.context.set_input_shape(spec.name, tuple(t.shape))
            self.context.set_tensor_address(spec.name, t.data_ptr())
            tensors[spec.name] = t
        outs = {}
        for spec in self.outputs:
            shape = tuple(self.context.get_tensor_shape(spec.name))
            t = torch.empty(shape, dtype=getattr(torch, spec.dtype), device="cuda")
            self.context.set_tensor_address(spec.name, t.data_ptr())
            outs[spec.name] = t
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to run {self.name}")
        self.stream.synchronize()
        return {k: v.cpu().numpy() for k, v in outs.items()}


class Pipeline:
    """Parts in order: each part's outputs feed the later parts' inputs of the same name."""

    def __init__(self, sessions: list[Session]):
        self.sessions = sessions

    @property
    def inputs(self) -> list[TensorSpec]:
        produced = {o.name for s in self.sessions for o in s.outputs}
        return [i for s in self.sessions for i in s.inputs if i.name not in produced]

    def run(self, **feed) -> dict[str, np.ndarray]:
        # check the pipeline's own inputs together, so dims agree across parts' inputs
        first = self.sessions[0]
        Session(self.inputs, [], first.ranges, "the pipeline").validate(feed)
        values = dict(feed)
        produced = {o.name for s in self.sessions for o in s.outputs}
        results = {}
        for session in self.sessions:
            out = session.run(**{i.name: values[i.name] for i in session.inputs})
            values.update(out)
            results.update(out)
        consumed = {i.name for s in self.sessions for i in s.inputs}
        return {k: v for k, v in results.items() if k not in consumed or k not in produced}


def open_export(dist: str | Path, backend: str = "onnxruntime", precision: str = "fp32",
                providers=None) -> Pipeline:
    """The parts of `mmgraph export`'s output directory as a pipeline."""
    dist = Path(dist)
    manifest = json.loads((dist / "manifest.json").read_text())
    sessions: list[Session] = []
    for part in manifest["parts"]:
        inputs = [TensorSpec.of(i) for i in part["inputs"]]
        outputs = [TensorSpec.of(o) for o in part["outputs"]]
        if backend == "tensorrt":
            sessions.append(TensorRTSession(dist / f"{part['name']}.engine", inputs, outputs,
                                            manifest["dims"], part["name"]))
        else:
            path = dist / (part.get("onnx_fp16", part["onnx"]) if precision == "fp16"
                           else part["onnx"])
            sessions.append(OnnxSession(path, inputs, outputs, manifest["dims"], part["name"],
                                        providers))
    return Pipeline(sessions)
