"""sonitor runtime: capture, scoring and alerting. Needs numpy and onnxruntime, never torch."""

import os

# onnxruntime (1.31) otherwise writes a device id under ~/.cache/Microsoft and looks up a
# Microsoft telemetry host; an industrial PC's monitor has no business doing either. Set before
# any module imports onnxruntime; a user's explicit setting wins.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"  # the one version number: pyproject.toml reads it from here
