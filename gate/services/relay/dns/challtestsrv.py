"""pebble-challtestsrv as the relay's DNS: its management API (`POST /set-txt`,
`POST /clear-txt`) for tests and private setups with a private ACME CA such as pebble.

challtestsrv keeps a list of values per name and clears them only all at once, so
removing one record clears the name and sets the others again (a moment without them,
which only a validation at that very moment would notice). It lives in memory: nothing
survives its restart, and it has no way to list what an earlier relay left."""

from __future__ import annotations

import collections
import json

from gate.services.engines.client import UpstreamClient, UpstreamConnectError, UpstreamError
from gate.services.relay.dns.backend import DnsError, TxtRecord

__all__ = ["ChalltestsrvBackend"]


class ChalltestsrvBackend:
    name = "challtestsrv"

    def __init__(self, url: str, client: UpstreamClient, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._client = client
        self._timeout = timeout
        self._values: dict[str, list[str]] = collections.defaultdict(list)  # what we set

    async def publish_txt(self, name: str, value: str) -> TxtRecord:
        await self._post("/set-txt", {"host": f"{name}.", "value": value})
        self._values[name].append(value)
        return TxtRecord(name, value)

    async def remove_txt(self, record: TxtRecord) -> None:
        values = self._values.get(record.name, [])
        if record.value in values:
            values.remove(record.value)
        await self._post("/clear-txt", {"host": f"{record.name}."})
        for value in values:
            await self._post("/set-txt", {"host": f"{record.name}.", "value": value})
        if not values:
            self._values.pop(record.name, None)

    async def remove_leftovers(self) -> int:
        return 0  # challtestsrv cannot list its records

    async def _post(self, path: str, body: dict[str, str]) -> None:
        try:
            response = await self._client.request(
                "POST",
                self.url + path,
                headers=[(b"content-type", b"application/json")],
                body=json.dumps(body).encode(),
                response_timeout=self._timeout,
                read_timeout=self._timeout,
            )
            async with response:
                text = await response.read(64 * 1024)
        except UpstreamConnectError as exc:
            raise DnsError(f"challtestsrv {path}: {exc}") from None
        except UpstreamError as exc:  # sent: it may have been done
            raise DnsError(f"challtestsrv {path}: {exc}", maybe_made=True) from None
        if response.status != 200:
            detail = text.decode(errors="replace").strip()[:200]
            raise DnsError(
                f"challtestsrv {path}: HTTP {response.status} {detail}",
                maybe_made=response.status >= 500,
            )
