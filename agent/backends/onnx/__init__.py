"""ONNX: graph builder, quantizers (FP16, INT8) and the ONNX Runtime runtime."""
