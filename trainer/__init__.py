"""Vigil trainer: fits autoencoders on normal telemetry and writes ONNX bundles.

The only part of Vigil that imports torch.
"""

__all__: list[str] = []
