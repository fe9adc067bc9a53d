"""Service-level errors: the branch of the tree in gate.protocol.errors that involves IO.

Library exceptions (OSError, sqlite3.Error, msgspec.ValidationError, ...) are mapped
into these at the boundary of the module that meets them, so callers handle one tree.
"""

from __future__ import annotations

from gate.protocol.errors import GateError

__all__ = [
    "ConfigError",
    "GateError",
    "IdentityError",
    "ServiceError",
    "StoreError",
]


class ServiceError(GateError):
    """A service could not do its job."""


class ConfigError(GateError):
    """The configuration is invalid. The message names the source, the key and the problem."""


class IdentityError(GateError):
    """The node key cannot be created, read or written. Never answered by replacing the key."""


class StoreError(ServiceError):
    """The database cannot be opened, migrated or written."""
