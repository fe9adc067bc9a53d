import logging
import re
import subprocess
import sys

import trio

from gate.services.control.events import QUEUE, EventBus, EventLogHandler


async def test_publish_reaches_every_subscriber_and_costs_nothing_without_one():
    bus = EventBus()
    bus.publish("x", {"n": 0})  # nobody listens: nothing kept
    async with bus.subscribe() as a, bus.subscribe() as b:
        bus.publish("x", {"n": 1})
        with trio.fail_after(2):
            assert (await anext(a)).data == {"n": 1}
            assert (await anext(b)).data == {"n": 1}
    assert bus.subscribers == 0


async def test_a_slow_subscriber_loses_events_and_is_told():
    bus = EventBus()
    async with bus.subscribe() as events:
        for n in range(QUEUE + 5):
            bus.publish("x", {"n": n})
        with trio.fail_after(2):
            first = await anext(events)
        assert first.kind == "dropped" and first.data == {"count": 5}
        assert (await anext(events)).data == {"n": 0}


async def test_close_ends_every_subscription():
    bus = EventBus()
    async with bus.subscribe() as events:
        bus.close()
        with trio.fail_after(2):
            assert await anext(events, None) is None
    async with bus.subscribe() as late:  # subscribing after close ends at once
        assert await anext(late, None) is None


async def test_log_records_become_events():
    bus = EventBus()
    handler = EventLogHandler(bus)
    logger = logging.getLogger("gate.test.events")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        async with bus.subscribe() as events:
            logger.info("hello %s", "world")
            with trio.fail_after(2):
                event = await anext(events)
    finally:
        logger.removeHandler(handler)
    assert event.kind == "log" and event.data["msg"] == "hello world"
    assert event.data["level"] == "info"
    # Stamped as the log file stamps it, so `gate logs -f` can tell a line it has shown.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", event.data["ts"])


def test_the_event_bus_loads_without_the_rpc_service():
    """The gateway and the peers import the event bus alone: that must not load the
    control plane's RPC service (and the config it edits) through the package (a fresh
    interpreter, as `gate serve` starts)."""
    script = (
        "import sys, gate.services.control.events\n"
        "print(sorted(m for m in sys.modules if m.startswith('gate.services.control.')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert loaded.stdout.strip() == "['gate.services.control.events']"
