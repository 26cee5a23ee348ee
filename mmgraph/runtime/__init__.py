"""Runtime: one Session interface over torch, onnxruntime and TensorRT."""

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

__all__ = ["InputError", "OnnxSession", "Pipeline", "Session", "TensorRTSession", "TensorSpec",
           "TorchSession", "open_export"]
