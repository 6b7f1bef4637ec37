"""sonitor export: encoders and separator to ONNX, packed into a model package."""
