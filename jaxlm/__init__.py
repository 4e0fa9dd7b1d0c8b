"""jaxlm: a JAX library and experiment runner for research on efficient sequence models."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("jaxlm")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
