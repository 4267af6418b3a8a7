"""TensorRT: engine builder and runtime (JetPack's tensorrt + pycuda)."""
