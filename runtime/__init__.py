"""Tiled inference over images of any size on ONNX Runtime, TensorRT or PyTorch.

Heavy backends (onnxruntime, tensorrt, torch) are imported inside the functions that need them.
"""
