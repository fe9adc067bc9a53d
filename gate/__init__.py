"""Gate: secure access to the AI compute you own or trust."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gate")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
