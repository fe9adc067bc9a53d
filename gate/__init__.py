"""Gate: secure access to the AI compute you own or trust."""

# The single source of the version: pyproject.toml reads it from here.
__version__ = "0.1.0"

__all__ = ["__version__"]
