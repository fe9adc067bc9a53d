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
    "IdentityStorageError",
    "ServiceError",
    "StoreError",
    "collapse_group",
    "describe",
]


class ServiceError(GateError):
    """A service could not do its job."""


class ConfigError(GateError):
    """The configuration is invalid. The message names the source, the key and the problem."""


class IdentityError(GateError):
    """The node key cannot be created, read or written. Never answered by replacing the key."""


class IdentityStorageError(IdentityError):
    """The system refused to read or write the key file or its directory (an OS error),
    as opposed to a key that is missing, malformed, foreign or wrongly protected."""


class StoreError(ServiceError):
    """The database cannot be opened, migrated or written."""


def collapse_group(error: BaseException) -> BaseException:
    """The one real error inside nested single-member ExceptionGroups, else `error` itself.

    Every trio nursery between a failure and its handler adds a group of one; reports
    and messages should name the failure, not the nesting.
    """
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def describe(error: BaseException) -> str:
    """A one-line account of an error for logs and the CLI."""
    error = collapse_group(error)
    if isinstance(error, GateError):
        return str(error)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
