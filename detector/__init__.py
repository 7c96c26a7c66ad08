"""Vigil detector: scores Kafka streams with an autoencoder bundle in ONNX Runtime.

Never imports torch: the daemon and the offline scorer run on ONNX Runtime alone.
"""

from detector.errors import BundleError, ConfigError, DataError, PublishError, VigilError

__version__ = "0.1.0"

__all__ = ["BundleError", "ConfigError", "DataError", "PublishError", "VigilError", "__version__"]
