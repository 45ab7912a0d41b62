"""The version of camlens (written into checkpoints; ``camlens.__version__``)."""

__version__ = "0.2.0"
