"""Inference: one backend interface (torch, ONNX Runtime, OpenVINO, TensorRT) and folder prediction."""
