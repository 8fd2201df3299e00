"""ONNX export: fuse, freeze, export, check, simplify."""
