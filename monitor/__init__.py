"""sonitor runtime: capture, scoring and alerting. Needs numpy and onnxruntime, never torch."""

__version__ = "0.1.0"
