"""Export: ONNX parts, parity, TensorRT and Triton deployment."""
