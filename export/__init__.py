"""Exporters from trained model folders to GGUF and ONNX (installed as ``affedge.export``)."""
