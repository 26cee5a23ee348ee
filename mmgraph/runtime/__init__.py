"""Runtime: one Session interface over torch, onnxruntime and TensorRT; generation from an
export folder (`open_export(dir).generate(...)`)."""

from mmgraph.runtime.generation import Generator
from mmgraph.runtime.session import (
                                     InputError,
                                     OnnxSession,
                                     Pipeline,
                                     Session,
                                     TensorRTSession,
                                     TensorSpec,
                                     TorchSession,
                                     open_export,
)

__all__ = ["Generator", "InputError", "OnnxSession", "Pipeline", "Session", "TensorRTSession",
           "TensorSpec", "TorchSession", "open_export"]
