"""What a DNS backend does for the relay: publish one TXT record and remove it again.

A backend is given fully qualified names without the trailing dot. Several values may
stand at one name at once (a DNS-01 order for a name and its wildcard, or a retried
order): each publish adds one, and removing a record leaves the others. Failures are
`DnsError`, whose message is fit for the node and the log (never a token)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["DnsBackend", "DnsError", "TxtRecord"]


class DnsError(Exception):
    """The backend could not do it (its API refused, failed or did not answer).
    `maybe_made`: a publish that failed may have made the record all the same (a
    timeout, a 5xx), so it must be looked for and removed."""

    def __init__(self, message: str, *, maybe_made: bool = False) -> None:
        super().__init__(message)
        self.maybe_made = maybe_made


@dataclass(frozen=True)
class TxtRecord:
    name: str  # e.g. _acme-challenge.<node-id>.relay.example.com
    value: str
    handle: str = ""  # the backend's own id for the record, where it has one


class DnsBackend(Protocol):
    name: str  # for logs and /health: "challtestsrv", "cloudflare"

    async def publish_txt(self, name: str, value: str) -> TxtRecord:
        """Add the record; returns once the backend has accepted it."""
        ...

    async def remove_txt(self, record: TxtRecord) -> None:
        """Remove the record; a record already gone, or never made, is not an error.
        Without a handle (its publish failed or was cut short), by name and value."""
        ...

    async def remove_leftovers(self) -> int:
        """Remove what an earlier run of this relay published and never removed (a
        crash); how many. 0 where the backend cannot tell its records from others'."""
        ...
