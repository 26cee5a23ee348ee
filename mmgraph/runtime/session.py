"""One `Session` interface over a torch module, an ONNX file and a TensorRT engine.

Named inputs in, named outputs out. Inputs are checked against the spec's types before any
backend sees them: a wrong rank, dtype, a size outside the exported range or a token id
outside the vocabulary is an `InputError` naming the input and the dim or value, not an
onnxruntime stack trace (nor a silent wrap-around: ONNX's Gather takes -1 as the last row).
A `Pipeline` runs the parts of an export in order, feeding each part's outputs to the parts
after it; `open_export` builds one from an export folder it has validated first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmgraph.errors import InputError
from mmgraph.runtime.manifest import (
    REEXPORT,
    ExportFolder,
    ManifestError,
    Part,
    TensorInfo,
    open_folder,
)
from mmgraph.suggest import did_you_mean


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, int64, ...
    shape: tuple  # ints, or dim names / expressions (strings)
    kind: str | None = None  # the spec's kind: Tokens, Image, ...
    vocab: int | None = None  # for Tokens: ids run 0..vocab-1

    @staticmethod
    def of(info) -> TensorSpec:
        """From a manifest's tensor entry (a dict is validated like the manifest)."""
        t = TensorInfo.model_validate(info)
        return TensorSpec(t.name, t.dtype, tuple(t.shape), t.kind, t.vocab)


def _as_numpy(name: str, value) -> np.ndarray:
    try:
        if hasattr(value, "detach"):
            return value.detach().cpu().numpy()
        return np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged lists, dtypes numpy lacks (bfloat16)
        raise InputError(f"input '{name}' cannot be read as an array: {exc}") from None


def _check_token_ids(spec: TensorSpec, array: np.ndarray) -> None:
    """Token ids inside 0..vocab-1: a negative id would silently pick the last rows."""
    bad = array < 0 if spec.vocab is None else (array < 0) | (array >= spec.vocab)
    if not bad.any():
        return
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    valid = "0 or more" if spec.vocab is None else f"0..{spec.vocab - 1} (vocab {spec.vocab})"
    raise InputError(f"input '{spec.name}': token id {int(array[where])} at {list(where)} is "
                     f"outside the valid range {valid}")


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
            array = _as_numpy(spec.name, feed[spec.name])
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
            if spec.kind == "Tokens":
                _check_token_ids(spec, array)
            out[spec.name] = array
        return out

    def run(self, **feed) -> dict[str, np.ndarray]:
        return self._run(self.validate(feed))

    def run_trusted(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs `feed` without `validate`: for callers whose every input is already an array
        of the exported type (a generation loop feeding a graph its own outputs, a benchmark
        timing the graph alone), so the checks would only repeat themselves."""
        return self._run(feed)

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
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=providers or best_providers())
        except _onnxruntime_errors() as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ManifestError(f"{path}: onnxruntime cannot load it ({reason}): damaged or "
                                "not ONNX; " + REEXPORT) from None
        self.providers = self.session.get_providers()
        graph = [i.name for i in self.session.get_inputs()]
        if graph != [i.name for i in inputs]:
            raise ManifestError(f"{path} takes inputs {graph}, but its manifest entry says "
                                f"{[i.name for i in inputs]}: the file belongs to another "
                                "part or export; " + REEXPORT)

    def _run(self, feed):
        names = [o.name for o in self.outputs]
        return dict(zip(names, self.session.run(names, feed)))


def _onnxruntime_errors() -> tuple[type[Exception], ...]:
    """onnxruntime's own exception classes (they derive from Exception only)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(v for v in vars(state).values()
                 if isinstance(v, type) and issubclass(v, Exception))


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
            raise ManifestError(f"{path}: TensorRT {trt.__version__} cannot deserialize this "
                                "engine (damaged, or built by another TensorRT version or for "
                                "another GPU); rebuild it with build_engine.sh")
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
    """Parts in order: each part's outputs feed the later parts' inputs of the same name.

    `generation` is the export's generator (`mmgraph.runtime.generation.Generator`: its
    tokens input, vocab, context inputs, max_tokens...) when the export holds prefill/decode
    graphs, else None and `cannot_generate` says why; `generate(...)` runs it.
    """

    def __init__(self, sessions: list[Session], generation=None, cannot_generate: str = ""):
        self.sessions = sessions
        self.generation = generation
        self.cannot_generate = cannot_generate

    def generate(self, tokens, **kwargs) -> list[list[int]]:
        """The new token ids of each prompt: see `Generator.generate`."""
        if self.generation is None:
            raise InputError(f"this export cannot generate: {self.cannot_generate}")
        return self.generation.generate(tokens, **kwargs)

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


def check_choices(backend: str, precision: str) -> None:
    if backend not in ("onnxruntime", "tensorrt"):
        raise ValueError(f"backend {backend!r}: choose onnxruntime or tensorrt")
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision {precision!r}: choose fp32 or fp16")


def part_session(folder: ExportFolder, part: Part, ranges: dict, backend: str = "onnxruntime",
                 precision: str = "fp32", providers=None) -> Session:
    """One graph of an export folder (a part, or a generation graph) as a session: its
    engine for TensorRT, else its ONNX file at the precision asked."""
    inputs = [TensorSpec.of(i) for i in part.inputs]
    outputs = [TensorSpec.of(o) for o in part.outputs]
    what = f"part '{part.name}'"
    if backend == "tensorrt":
        engine = folder.path / f"{part.name}.engine"
        if not engine.exists():
            raise ManifestError(f"{engine} ({what}) is not built yet: run build_engine.sh "
                                "(or build_engine.py) on the target GPU")
        return TensorRTSession(folder.file(engine.name, what), inputs, outputs, ranges,
                               part.name)
    if precision == "fp16" and part.onnx_fp16 is None:
        raise ManifestError(f"{folder.path} has no fp16 ONNX file for {what} (it was "
                            f"exported at {folder.manifest.precision}): open it with "
                            "precision='fp32' or export with an fp16 target")
    path = folder.file(part.onnx_fp16 if precision == "fp16" else part.onnx, what)
    return OnnxSession(path, inputs, outputs, ranges, part.name, providers)


def open_export(dist: str | Path, backend: str = "onnxruntime", precision: str = "fp32",
                providers=None) -> Pipeline:
    """The parts of `mmgraph export`'s output directory as a pipeline, once the folder is
    validated (manifest, files inside the folder and unchanged since export), with its
    generator when the export can generate (its sessions open on the first `generate`)."""
    from mmgraph.runtime.generation import Generator

    check_choices(backend, precision)
    folder = open_folder(dist)
    ranges = {name: r.model_dump() for name, r in folder.manifest.dims.items()}
    sessions = [part_session(folder, part, ranges, backend, precision, providers)
                for part in folder.manifest.parts]
    manifest = folder.manifest
    generation = Generator(folder, backend, precision, providers) if manifest.generate else None
    why = manifest.cannot_generate or ("it holds no prefill/decode graphs (exported by an "
                                       "mmgraph without generation, or a model that does "
                                       "not generate): " + REEXPORT)
    return Pipeline(sessions, generation, why)
