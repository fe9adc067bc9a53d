"""Request metrics, rendered in the Prometheus text exposition format, version 0.0.4.

Hand-written rather than prometheus_client: the request path needs only a few counters
and two histograms, updated in O(1) with no locks (Gate runs on one trio thread).

Theory of operation
-------------------
Every per-request metric is labelled at least by ``provider`` and ``model``, so all of
them live in one `_Series` object per (provider, model) pair: the request path does one
dict lookup and then increments attributes and list slots. Labels that vary below that
pair (``endpoint`` and ``status`` of ``gate_requests_total``, ``type`` of
``gate_errors_total``) are small dicts inside the series.

Model names come from requests, so the gateway never labels with a name as the client
wrote it: the label is the model as routed when it exists (here or at a peer), else
``model="unknown"`` (`UNKNOWN`). As a second bound on memory, at most ``max_series``
(provider, model) pairs are kept; past that, a new model is counted as
``model="other"`` of its provider, and past ``max_series + max_series // 10`` pairs as
``provider="other", model="other"``. The same fold happens at `Metrics.request_started`
and `Metrics.request_finished` (pairs are never removed, so the decision cannot change
between the two), which keeps the in-flight gauge balanced. Endpoints and error types are
capped the same way per series (folded into "other").

Values that other parts own (the usage recorder's drops, the relay's connection counts)
are read by callbacks at scrape time (`Values`); the relay's status renders only those.

Histograms keep one count per bucket (not cumulative) and are made cumulative when
rendered. `Metrics.render` is O(series) and runs on a scrape, not on the request path.
"""

from __future__ import annotations

import logging
import math
import re
from bisect import bisect_left
from collections.abc import Callable, Mapping
from typing import Final, Literal

from gate.services.http.router import Send

__all__ = ["BUCKETS", "CONTENT_TYPE", "OTHER", "UNKNOWN", "Metrics", "Values", "send_exposition"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds in seconds of the duration histograms, before the implicit ``+Inf``."""
OTHER: Final = "other"
UNKNOWN: Final = "unknown"  # the model label of every request for a model that does not exist
_MAX_SUBLABELS: Final = 100  # endpoints x statuses, or error types, per series
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_log = logging.getLogger("gate.metrics")


class _Series:
    """Everything counted for one (provider, model) pair."""

    __slots__ = (
        "errors",
        "in_flight",
        "labels",
        "latency_buckets",
        "latency_sum",
        "requests",
        "tokens_in",
        "tokens_out",
        "ttft_buckets",
        "ttft_sum",
    )

    def __init__(self, provider: str, model: str) -> None:
        self.labels = f'provider="{_escape(provider)}",model="{_escape(model)}"'
        self.in_flight = 0
        self.requests: dict[tuple[str, int], int] = {}  # (endpoint, status) -> count
        self.errors: dict[str, int] = {}  # type -> count
        self.latency_buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.latency_sum = 0.0
        self.ttft_buckets = [0] * (len(BUCKETS) + 1)
        self.ttft_sum = 0.0
        self.tokens_in = 0
        self.tokens_out = 0


class Values:
    """Metrics whose values others own, read by a callback at scrape time: unlabelled
    gauges and counters, and families by one label (``fn()`` returns label value ->
    number). The node's `Metrics` is one, with the request families rendered first; the
    relay (gate.services.relay.status) has only these."""

    def __init__(self, reserved: frozenset[str] = frozenset()) -> None:
        self._reserved = reserved
        self._values: dict[str, tuple[str, str, str | None, Callable[[], object]]] = {}

    def register_gauge(self, name: str, help: str, fn: Callable[[], float]) -> None:
        """Add an unlabelled gauge whose value ``fn()`` gives at render time."""
        self._register(name, "gauge", help, None, fn)

    def register_counter(self, name: str, help: str, fn: Callable[[], float]) -> None:
        """Add an unlabelled counter (``fn()`` must never decrease), e.g.
        ``gate_usage_dropped_total`` from the usage recorder."""
        self._register(name, "counter", help, None, fn)

    def register_family(
        self,
        name: str,
        kind: Literal["gauge", "counter"],
        help: str,
        label: str,
        fn: Callable[[], Mapping[str, float]],
    ) -> None:
        """Add a family with one label: a sample per item of ``fn()``."""
        if not _NAME.match(label):
            raise ValueError(f"invalid label name {label!r}")
        self._register(name, kind, help, label, fn)

    def _register(
        self, name: str, kind: str, help: str, label: str | None, fn: Callable[[], object]
    ) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        if name in self._values or name in self._reserved:
            raise ValueError(f"metric {name!r} is already registered")
        self._values[name] = (kind, help, label, fn)

    def render_into(self, out: list[str]) -> None:
        for name, (kind, help, label, fn) in list(self._values.items()):
            try:
                value = fn()
                if label is None:
                    samples = [f"{name} {_number(float(value))}"]  # type: ignore[arg-type]
                else:
                    assert isinstance(value, Mapping)
                    samples = [
                        f'{name}{{{label}="{_escape(str(key))}"}} {_number(float(v))}'
                        for key, v in sorted(value.items())
                    ]
            except Exception:  # a broken callback must not break the scrape
                _log.exception("metric %s: the value callback failed; left out", name)
                continue
            _header(out, name, kind, help)
            out.extend(samples)

    def render(self) -> bytes:
        """The text exposition format 0.0.4 of these values alone."""
        out: list[str] = []
        self.render_into(out)
        out.append("")
        return "\n".join(out).encode("utf-8", "replace")


class Metrics(Values):
    """The node's metrics. Call `request_started` and then `request_finished` once per
    request (the latter also for failed ones), and `render` for a scrape. Values that
    others own are registered as on any `Values` (`register_gauge` and the rest), and
    render after the request families."""

    def __init__(self, *, max_series: int = 1000) -> None:
        if max_series < 1:
            raise ValueError("max_series must be at least 1")
        super().__init__(_RESERVED)
        self.max_series = max_series
        self._series: dict[tuple[str, str], _Series] = {}

    # --- the request path ---

    def request_started(self, provider: str, model: str) -> None:
        series = self._series.get((provider, model)) or self._new_series(provider, model)
        series.in_flight += 1

    def request_finished(
        self,
        provider: str,
        model: str,
        endpoint: str,
        status: int,
        latency_s: float,
        ttft_s: float | None,
        tokens_in: int | None,
        tokens_out: int | None,
        error_type: str | None,
        *,
        in_flight: bool = True,
    ) -> None:
        """Count a finished request. `in_flight=False`: it never went through
        request_started (it ended before reaching a provider), so the gauge stays."""
        series = self._series.get((provider, model)) or self._new_series(provider, model)
        if in_flight:
            series.in_flight -= 1
        requests = series.requests
        key = (endpoint, status)
        if key in requests:
            requests[key] += 1
        elif len(requests) < _MAX_SUBLABELS:
            requests[key] = 1
        else:
            key = (OTHER, status)
            requests[key] = requests.get(key, 0) + 1
        if not latency_s >= 0.0:  # also NaN: one bad value must not poison the sum
            latency_s = 0.0
        series.latency_buckets[bisect_left(BUCKETS, latency_s)] += 1
        series.latency_sum += latency_s
        if ttft_s is not None:
            if not ttft_s >= 0.0:
                ttft_s = 0.0
            series.ttft_buckets[bisect_left(BUCKETS, ttft_s)] += 1
            series.ttft_sum += ttft_s
        if tokens_in:
            series.tokens_in += tokens_in
        if tokens_out:
            series.tokens_out += tokens_out
        if error_type is not None:
            errors = series.errors
            if error_type in errors:
                errors[error_type] += 1
            elif len(errors) < _MAX_SUBLABELS:
                errors[error_type] = 1
            else:
                errors[OTHER] = errors.get(OTHER, 0) + 1

    def _new_series(self, provider: str, model: str) -> _Series:
        series = self._series
        if len(series) >= self.max_series:
            model = OTHER
            if (provider, model) in series:
                return series[provider, model]
            if len(series) >= self.max_series + self.max_series // 10:
                provider = OTHER
                if (provider, model) in series:
                    return series[provider, model]
        new = series[provider, model] = _Series(provider, model)
        return new

    # --- the scrape ---

    def render(self) -> bytes:
        """The text exposition format 0.0.4: ``# HELP``, ``# TYPE``, then the samples."""
        all_series = list(self._series.values())
        out: list[str] = []
        emit = out.append

        _header(out, "gate_requests_total", "counter", "Requests finished.")
        for s in all_series:
            for (endpoint, status), count in s.requests.items():
                emit(
                    f'gate_requests_total{{{s.labels},endpoint="{_escape(endpoint)}",'
                    f'status="{status}"}} {count}'
                )
        _header(out, "gate_requests_in_flight", "gauge", "Requests started and not finished.")
        for s in all_series:
            emit(f"gate_requests_in_flight{{{s.labels}}} {s.in_flight}")
        _header(
            out,
            "gate_request_duration_seconds",
            "histogram",
            "Time from receiving a request to its last response byte.",
        )
        for s in all_series:
            _histogram(
                out, "gate_request_duration_seconds", s.labels, s.latency_buckets, s.latency_sum
            )
        _header(
            out,
            "gate_time_to_first_token_seconds",
            "histogram",
            "Time from receiving a request to its first generated token.",
        )
        for s in all_series:
            _histogram(
                out, "gate_time_to_first_token_seconds", s.labels, s.ttft_buckets, s.ttft_sum
            )
        _header(out, "gate_tokens_total", "counter", "Tokens processed, by direction.")
        for s in all_series:
            emit(f'gate_tokens_total{{{s.labels},direction="in"}} {s.tokens_in}')
            emit(f'gate_tokens_total{{{s.labels},direction="out"}} {s.tokens_out}')
        _header(out, "gate_errors_total", "counter", "Failed requests, by error type.")
        for s in all_series:
            for error_type, count in s.errors.items():
                emit(f'gate_errors_total{{{s.labels},type="{_escape(error_type)}"}} {count}')

        self.render_into(out)
        emit("")
        # "replace": a lone surrogate in a client's model name must not break the scrape.
        return "\n".join(out).encode("utf-8", "replace")


async def send_exposition(send: Send, body: bytes) -> None:
    """A scrape's answer: `body` (from a `render`) as a 200 in the exposition format."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", CONTENT_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


_FAMILIES: Final = frozenset(
    {
        "gate_requests_total",
        "gate_requests_in_flight",
        "gate_request_duration_seconds",
        "gate_time_to_first_token_seconds",
        "gate_tokens_total",
        "gate_errors_total",
    }
)
_RESERVED: Final = _FAMILIES | {
    f"{family}{suffix}"
    for family in ("gate_request_duration_seconds", "gate_time_to_first_token_seconds")
    for suffix in ("_bucket", "_sum", "_count")
}
_LE: Final = (*(f'le="{bound!r}"' for bound in BUCKETS), 'le="+Inf"')


def _header(out: list[str], name: str, kind: str, help: str) -> None:
    out.append(f"# HELP {name} {_escape_help(help)}")
    out.append(f"# TYPE {name} {kind}")


def _histogram(out: list[str], name: str, labels: str, buckets: list[int], total: float) -> None:
    cumulative = 0
    for le, count in zip(_LE, buckets, strict=True):
        cumulative += count
        out.append(f"{name}_bucket{{{labels},{le}}} {cumulative}")
    out.append(f"{name}_sum{{{labels}}} {_number(total)}")
    out.append(f"{name}_count{{{labels}}} {cumulative}")


def _escape(value: str) -> str:
    """A label value: backslash, double quote and line feed escaped (format 0.0.4)."""
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _escape_help(text: str) -> str:
    """HELP text: backslash and line feed escaped (quotes stay as they are)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
