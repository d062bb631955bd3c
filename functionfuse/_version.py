"""The single source of functionfuse's version."""

__version__ = "0.1.0"
