"""Metrics: the exposition format checked by a strict parser, and the bounds on labels."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field

import pytest

from gate.services.gateway.metrics import BUCKETS, CONTENT_TYPE, OTHER, Metrics

# --- a strict parser for the text format 0.0.4 ---

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"({_NAME})(?:\{{(.*)\}})? (\S+)\Z")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|\Z)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}

Labels = tuple[tuple[str, str], ...]


@dataclass
class Family:
    name: str
    type: str
    help: str
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)


def parse(text: str) -> dict[str, Family]:
    """Parse exposition text, failing on anything the format does not allow."""
    assert text.endswith("\n")
    families: dict[str, Family] = {}
    current: Family | None = None
    helps: dict[str, str] = {}
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert re.fullmatch(_NAME, name) and name not in helps, line
            assert not re.search(r"\\[^\\n]", help_text), line
            helps[name] = re.sub(r"\\[\\n]", lambda m: _UNESCAPE[m.group()], help_text)
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert kind in _TYPES and name not in families, line
            assert name in helps, f"HELP must come before TYPE: {line}"
            current = families[name] = Family(name, kind, helps[name])
        else:
            assert not line.startswith("#") and line, f"unexpected line {line!r}"
            match = _SAMPLE.match(line)
            assert match, f"not a sample: {line!r}"
            name, label_text, value = match.groups()
            assert current is not None, f"sample before any TYPE: {line!r}"
            allowed = {current.name}
            if current.type == "histogram":
                allowed = {current.name + s for s in ("_bucket", "_sum", "_count")}
            assert name in allowed, f"{name} outside its family (samples must be grouped)"
            labels: list[tuple[str, str]] = []
            rest = label_text or ""
            while rest:
                m = _LABEL.match(rest)
                assert m, f"bad labels in {line!r}"
                labels.append((m[1], re.sub(r"\\[\\\"n]", lambda e: _UNESCAPE[e.group()], m[2])))
                rest = rest[m.end() :]
            names = [k for k, _ in labels]
            assert len(set(names)) == len(names), line
            key = (name, tuple(labels))
            assert key not in current.samples, f"duplicate sample {line!r}"
            current.samples[key] = float(value)  # accepts +Inf, -Inf, NaN too
    for family in families.values():
        if family.type == "histogram":
            check_histogram(family)
    return families


def check_histogram(family: Family) -> None:
    """Buckets ascending, cumulative, ending in +Inf equal to _count; _sum present."""
    series: dict[Labels, list[tuple[float, float]]] = {}
    for (name, labels), value in family.samples.items():
        if name.endswith("_bucket"):
            le = dict(labels)["le"]
            rest = tuple(kv for kv in labels if kv[0] != "le")
            series.setdefault(rest, []).append((float(le), value))
    for labels, buckets in series.items():
        bounds = [b for b, _ in buckets]
        assert bounds == sorted(bounds) and bounds[-1] == math.inf
        counts = [c for _, c in buckets]
        assert counts == sorted(counts), f"not cumulative: {counts}"
        assert family.samples[(family.name + "_count", labels)] == counts[-1]
        assert (family.name + "_sum", labels) in family.samples


def scrape(metrics: Metrics) -> dict[str, Family]:
    return parse(metrics.render().decode("utf-8"))


def value(families: dict[str, Family], family: str, sample: str, **labels: str) -> float:
    for (name, sample_labels), v in families[family].samples.items():
        if name == sample and dict(sample_labels) == labels:
            return v
    raise KeyError((sample, labels))


def finish(metrics: Metrics, model: str = "llama3", provider: str = "ollama", **kw: object) -> None:
    args: dict[str, object] = {
        "endpoint": "/v1/chat/completions",
        "status": 200,
        "latency_s": 0.2,
        "ttft_s": 0.05,
        "tokens_in": 10,
        "tokens_out": 20,
        "error_type": None,
    }
    args.update(kw)
    metrics.request_started(provider, model)
    metrics.request_finished(provider, model, **args)  # type: ignore[arg-type]


# --- tests ---


def test_an_empty_registry_renders_every_family() -> None:
    families = scrape(Metrics())
    assert {name: f.type for name, f in families.items()} == {
        "gate_requests_total": "counter",
        "gate_requests_in_flight": "gauge",
        "gate_request_duration_seconds": "histogram",
        "gate_time_to_first_token_seconds": "histogram",
        "gate_tokens_total": "counter",
        "gate_errors_total": "counter",
    }
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_requests_tokens_errors_and_in_flight() -> None:
    metrics = Metrics()
    finish(metrics)
    finish(metrics, status=502, error_type="upstream_timeout", tokens_out=None, ttft_s=None)
    finish(metrics, endpoint="/v1/messages")
    metrics.request_started("ollama", "llama3")
    metrics.request_started("peer-a", "qwen")
    f = scrape(metrics)
    pm = {"provider": "ollama", "model": "llama3"}
    total = "gate_requests_total"
    assert value(f, total, total, **pm, endpoint="/v1/chat/completions", status="200") == 1
    assert value(f, total, total, **pm, endpoint="/v1/chat/completions", status="502") == 1
    assert value(f, total, total, **pm, endpoint="/v1/messages", status="200") == 1
    assert value(f, "gate_tokens_total", "gate_tokens_total", **pm, direction="in") == 30
    assert value(f, "gate_tokens_total", "gate_tokens_total", **pm, direction="out") == 40
    errors = "gate_errors_total"
    assert value(f, errors, errors, **pm, type="upstream_timeout") == 1
    assert len(f[errors].samples) == 1
    in_flight = "gate_requests_in_flight"
    assert value(f, in_flight, in_flight, **pm) == 1
    assert value(f, in_flight, in_flight, provider="peer-a", model="qwen") == 1
    ttft = "gate_time_to_first_token_seconds"
    assert value(f, ttft, ttft + "_count", **pm) == 2  # the request without a first token


def test_histogram_buckets_are_cumulative_with_le_inclusive() -> None:
    metrics = Metrics()
    observed = [0.003, 0.005, 0.007, 0.5, 0.75, 59.0, 100.0, -1.0]
    for latency in observed:
        finish(metrics, latency_s=latency)
    f = scrape(metrics)
    name = "gate_request_duration_seconds"
    pm = {"provider": "ollama", "model": "llama3"}
    got = {le: value(f, name, name + "_bucket", **pm, le=le) for le in ("0.005", "0.01", "0.5")}
    assert got == {"0.005": 3, "0.01": 4, "0.5": 5}  # -1 is clamped to 0; 0.005 <= 0.005
    assert value(f, name, name + "_bucket", **pm, le="60.0") == 7
    assert value(f, name, name + "_bucket", **pm, le="+Inf") == 8
    assert value(f, name, name + "_count", **pm) == 8
    assert value(f, name, name + "_sum", **pm) == pytest.approx(sum(observed) + 1.0)
    les = [dict(k[1])["le"] for k in f[name].samples if k[0] == name + "_bucket"]
    assert [float(le) for le in les] == [*BUCKETS, math.inf]


def test_nan_latency_does_not_poison_the_sum() -> None:
    metrics = Metrics()
    finish(metrics, latency_s=math.nan, ttft_s=math.nan)
    finish(metrics, latency_s=1.0)
    f = scrape(metrics)
    name = "gate_request_duration_seconds"
    assert value(f, name, name + "_sum", provider="ollama", model="llama3") == 1.0


@pytest.mark.parametrize(
    "model", ['quote"d', "back\\slash", "new\nline", 'all\\"\n\\n', "ünï", "{}=,# "]
)
def test_label_values_are_escaped(model: str) -> None:
    metrics = Metrics()
    finish(metrics, model=model, error_type='weird "type"\n')
    f = scrape(metrics)
    total = "gate_requests_total"
    labels = {"provider": "ollama", "model": model}
    assert value(f, total, total, **labels, endpoint="/v1/chat/completions", status="200") == 1
    assert value(f, "gate_errors_total", "gate_errors_total", **labels, type='weird "type"\n') == 1


def test_a_lone_surrogate_cannot_break_the_scrape() -> None:
    metrics = Metrics()
    finish(metrics, model="bad\ud800")
    scrape(metrics)


def test_model_labels_are_capped_and_folded_into_other() -> None:
    metrics = Metrics(max_series=10)
    for i in range(50):
        metrics.request_started("ollama", f"model-{i}")
    for i in range(50):
        metrics.request_finished(
            "ollama", f"model-{i}", "/v1/chat/completions", 200, 0.1, None, 1, 1, None
        )
    f = scrape(metrics)
    total = f["gate_requests_total"].samples
    models = {dict(labels)["model"] for _, labels in total}
    assert len(models) == 11 and OTHER in models
    assert sum(total.values()) == 50  # nothing is lost, only folded
    pm = {"provider": "ollama", "model": OTHER}
    assert (
        value(f, "gate_requests_total", "gate_requests_total", **pm,
              endpoint="/v1/chat/completions", status="200")
        == 40
    )  # fmt: skip
    in_flight = f["gate_requests_in_flight"].samples.values()
    assert set(in_flight) == {0}  # started and finished fold alike


def test_providers_are_folded_too_past_the_margin() -> None:
    metrics = Metrics(max_series=10)  # margin: one more "other" pair
    for i in range(30):
        finish(metrics, provider=f"p{i}", model=f"m{i}")
    f = scrape(metrics)
    pairs = {
        (dict(labels)["provider"], dict(labels)["model"])
        for _, labels in f["gate_requests_in_flight"].samples
    }
    assert len(pairs) == 12
    assert ("p10", OTHER) in pairs and (OTHER, OTHER) in pairs
    assert sum(f["gate_requests_total"].samples.values()) == 30


def test_endpoints_and_error_types_are_capped_per_series() -> None:
    metrics = Metrics()
    for i in range(300):
        finish(metrics, endpoint=f"/path/{i}", error_type=f"error-{i}")
    f = scrape(metrics)
    assert len(f["gate_requests_total"].samples) == 101
    assert len(f["gate_errors_total"].samples) == 101
    pm = {"provider": "ollama", "model": "llama3"}
    assert value(f, "gate_errors_total", "gate_errors_total", **pm, type=OTHER) == 200
    assert sum(f["gate_requests_total"].samples.values()) == 300


def test_registered_values_are_read_at_render_time() -> None:
    metrics = Metrics()
    dropped = [0]
    metrics.register_counter(
        "gate_usage_dropped_total", "Usage records lost.\nSee the log.", lambda: dropped[0]
    )
    metrics.register_gauge("gate_peers", 'Peers "connected".', lambda: 2.5)
    dropped[0] = 7
    f = scrape(metrics)
    assert f["gate_usage_dropped_total"].type == "counter"
    assert f["gate_usage_dropped_total"].help == "Usage records lost.\nSee the log."
    assert value(f, "gate_usage_dropped_total", "gate_usage_dropped_total") == 7
    assert f["gate_peers"].type == "gauge"
    assert f["gate_peers"].help == 'Peers "connected".'
    assert value(f, "gate_peers", "gate_peers") == 2.5


def test_a_failing_callback_is_left_out_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    metrics.register_gauge("gate_broken", "Broken.", lambda: 1 / 0)
    metrics.register_gauge("gate_fine", "Fine.", lambda: 1)
    with caplog.at_level(logging.ERROR, logger="gate.metrics"):
        f = scrape(metrics)
    assert "gate_broken" not in f and "gate_fine" in f
    assert any("gate_broken" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "name",
    ["", "1abc", "has space", "gate_requests_total", "gate_request_duration_seconds_bucket"],
)
def test_bad_or_taken_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        Metrics().register_gauge(name, "x", lambda: 0)


def test_a_name_is_registered_once() -> None:
    metrics = Metrics()
    metrics.register_counter("gate_x_total", "x", lambda: 0)
    with pytest.raises(ValueError):
        metrics.register_gauge("gate_x_total", "x", lambda: 0)


@pytest.mark.parametrize("v", [0.0, 1.5, 1e20, 1e-7, math.inf, -math.inf, math.nan])
def test_special_values_render_parseably(v: float) -> None:
    metrics = Metrics()
    metrics.register_gauge("gate_v", "v", lambda: v)
    got = value(scrape(metrics), "gate_v", "gate_v")
    assert got == v or (math.isnan(v) and math.isnan(got))


def test_the_parser_is_strict() -> None:
    """The parser used above rejects what a scraper would."""
    bad = [
        "x 1\n",  # no TYPE
        '# HELP x h\n# TYPE x counter\nx{a="b} 1\n',  # unterminated value
        '# HELP x h\n# TYPE x counter\nx{a="\\t"} 1\n',  # unknown escape
        "# HELP x h\n# TYPE x counter\nx 1\nx 1\n",  # duplicate
        "# HELP x h\n# TYPE x counter\n# HELP y h\n# TYPE y gauge\ny 1\nx 1\n",  # not grouped
        '# HELP h h\n# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\n'
        "h_sum 1\nh_count 1\n",  # not cumulative
        "# HELP x h\n# TYPE x counter\nx 1",  # no final newline
    ]
    for text in bad:
        with pytest.raises(AssertionError):
            parse(text)


def test_a_request_that_never_reached_a_provider_leaves_the_gauge_alone():
    metrics = Metrics()
    metrics.request_finished(
        "none", "m", "chat.completions", 404, 0.001, None, None, None, "not_found", in_flight=False
    )
    text = metrics.render().decode()
    assert 'gate_requests_in_flight{provider="none",model="m"} 0' in text
    assert 'status="404"} 1' in text
