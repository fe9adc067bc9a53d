"""Cloudflare as the relay's DNS, through its API v4 with an API token (Zone: DNS edit).

- Publish: `POST /zones/{zone}/dns_records` with a TXT record and a comment naming this
  relay (`gate relay <relay-id>`); the answer's `result.id` is the handle. Remove:
  `DELETE /zones/{zone}/dns_records/{id}` (404: already gone). Leftovers of an earlier run
  (a crash): `GET /zones/{zone}/dns_records?type=TXT&comment.exact=...`, page by page,
  each deleted; records of other relays sharing the zone carry other comments.
- Errors: 401/403 and other 4xx are final, with Cloudflare's own messages (a token
  without DNS edit rights on the zone says so at the first challenge); 429 waits
  `Retry-After` (at most `max_retry_after`) and tries again; 5xx, timeouts and broken
  connections try again with doubling backoff. At most `attempts` tries per call.
- A POST whose outcome is unknown (5xx, timeout, cut connection: Cloudflare may have
  created the record) is never blindly repeated: the record is looked up by name,
  content and comment first, and taken if it is there. A record without its id (its
  publish failed or was cut short) is removed the same way: looked up, then deleted.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final
from urllib.parse import quote, urlencode

import trio

from gate.services.engines.client import UpstreamClient, UpstreamConnectError, UpstreamError
from gate.services.relay.dns.backend import DnsError, TxtRecord

__all__ = ["CloudflareBackend"]

log = logging.getLogger("gate.relay")

_MAX_BODY: Final = 4 * 1024 * 1024
_MAX_PAGES: Final = 50  # of 100 records each, when listing


class CloudflareBackend:
    name = "cloudflare"

    def __init__(
        self,
        *,
        zone_id: str,
        token: str,
        client: UpstreamClient,
        comment: str,
        api_base: str = "https://api.cloudflare.com/client/v4",
        ttl: int = 60,
        timeout: float = 30.0,
        attempts: int = 4,
        backoff: float = 1.0,
        max_retry_after: float = 60.0,
    ) -> None:
        self.zone = quote(zone_id, safe="")
        self.api_base = api_base.rstrip("/")
        self.comment = comment
        self.ttl = ttl
        self._token = token
        self._client = client
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff
        self._max_retry_after = max_retry_after

    async def publish_txt(self, name: str, value: str) -> TxtRecord:
        body = {
            "type": "TXT",
            "name": name,
            "content": value,
            "ttl": self.ttl,
            "comment": self.comment,
        }
        path = f"/zones/{self.zone}/dns_records"
        uncertain = False
        for attempt in range(1, self._attempts + 1):
            try:
                if uncertain and (found := await self._find(name, value)):
                    return TxtRecord(name, value, found[0])  # the earlier try created it
                result = await self._call("POST", path, body, retry=False)
                return TxtRecord(name, value, str(result["id"]))
            except _Retry as retry:
                uncertain = uncertain or retry.uncertain
                if attempt == self._attempts:
                    raise DnsError(
                        f"Cloudflare: gave up after {attempt} tries: {retry}",
                        maybe_made=uncertain,
                    ) from None
                await trio.sleep(retry.wait(attempt, self._backoff))
            except DnsError as exc:  # final (a 4xx): an earlier try may have made it
                raise DnsError(str(exc), maybe_made=uncertain) from None
        raise AssertionError("unreachable")

    async def remove_txt(self, record: TxtRecord) -> None:
        handles = [record.handle] if record.handle else await self._find(record.name, record.value)
        for handle in handles:
            path = f"/zones/{self.zone}/dns_records/{quote(handle, safe='')}"
            await self._call("DELETE", path, missing_ok=True)

    async def remove_leftovers(self) -> int:
        ids = await self._list({"type": "TXT", "comment.exact": self.comment})
        for record_id in ids:
            await self.remove_txt(TxtRecord("", "", record_id))
        return len(ids)

    async def _find(self, name: str, value: str) -> list[str]:
        query = {
            "type": "TXT",
            "name.exact": name,
            "content.exact": value,
            "comment.exact": self.comment,
        }
        return await self._list(query)

    async def _list(self, query: dict[str, str]) -> list[str]:
        ids: list[str] = []
        for page in range(1, _MAX_PAGES + 1):
            params = urlencode({**query, "per_page": "100", "page": str(page)})
            path = f"/zones/{self.zone}/dns_records?{params}"
            result, info = await self._call("GET", path, with_info=True)
            ids += [str(record["id"]) for record in result]
            if page >= int((info or {}).get("total_pages") or 1):
                break
        return ids

    async def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        retry: bool = True,
        missing_ok: bool = False,
        with_info: bool = False,
    ) -> Any:
        """One API call's `result` (with `result_info` if asked); DnsError if it failed.
        With `retry`, 429, 5xx and transport failures are tried again (bounded); without,
        they raise _Retry for the caller to decide."""
        for attempt in range(1, self._attempts + 1):
            try:
                return await self._once(method, path, body, missing_ok, with_info)
            except _Retry as failure:
                if not retry:
                    raise
                if attempt == self._attempts:
                    raise DnsError(
                        f"Cloudflare: gave up after {attempt} tries: {failure}"
                    ) from None
                await trio.sleep(failure.wait(attempt, self._backoff))
        raise AssertionError("unreachable")

    async def _once(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        missing_ok: bool,
        with_info: bool,
    ) -> Any:
        headers = [(b"authorization", f"Bearer {self._token}".encode())]
        if body is not None:
            headers.append((b"content-type", b"application/json"))
        what = f"{method} {path.split('?')[0]}"
        try:
            response = await self._client.request(
                method,
                self.api_base + path,
                headers=headers,
                body=json.dumps(body).encode() if body is not None else b"",
                response_timeout=self._timeout,
                read_timeout=self._timeout,
            )
            async with response:
                text = await response.read(_MAX_BODY)
        except UpstreamConnectError as exc:
            raise _Retry(f"{what}: {exc}", uncertain=False) from None
        except UpstreamError as exc:
            raise _Retry(f"{what}: {exc}", uncertain=True) from None
        status = response.status
        if status == 404 and missing_ok:
            return None
        if status == 429:
            raise _Retry(
                f"{what}: HTTP 429 (rate limited)",
                uncertain=False,
                retry_after=_retry_after(response.header(b"retry-after"), self._max_retry_after),
            )
        if status >= 500:
            raise _Retry(f"{what}: HTTP {status}", uncertain=True)
        try:
            envelope = json.loads(text)
        except ValueError:
            envelope = None
        if not isinstance(envelope, dict):
            raise DnsError(f"Cloudflare {what}: HTTP {status}, not a JSON object")
        if status in (401, 403):
            raise DnsError(
                f"Cloudflare {what}: HTTP {status}: {_messages(envelope)} (the API token "
                "needs the permission Zone: DNS: Edit on this zone)"
            )
        if status >= 400 or not envelope.get("success"):
            raise DnsError(f"Cloudflare {what}: HTTP {status}: {_messages(envelope)}")
        result = envelope.get("result")
        return (result or [], envelope.get("result_info")) if with_info else result


class _Retry(Exception):
    def __init__(self, message: str, *, uncertain: bool, retry_after: float | None = None):
        super().__init__(message)
        self.uncertain = uncertain
        self.retry_after = retry_after

    def wait(self, attempt: int, backoff: float) -> float:
        if self.retry_after is not None:
            return self.retry_after
        return float(backoff * 2 ** (attempt - 1))


def _retry_after(value: bytes | None, cap: float) -> float | None:
    """Retry-After in seconds (Cloudflare sends an integer), capped; None if absent."""
    try:
        return min(cap, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None


def _messages(envelope: dict[str, Any]) -> str:
    errors = envelope.get("errors")
    parts = (
        [f"{e.get('message', '')} ({e.get('code', '?')})" for e in errors if isinstance(e, dict)]
        if isinstance(errors, list)
        else []
    )
    return "; ".join(parts)[:300] or "no error message"
