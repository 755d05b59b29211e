"""Prometheus metrics of the agent, served over HTTP with `--metrics-listen HOST:PORT` (off by default).

RPC counters and latency histograms are updated by `instrument` / `instrument_stream`, which wrap the servicer's
methods. Everything about VMs is read from the controller at scrape time: the HTTP thread asks the agent's event
loop for a snapshot (runner stats included) and renders it, so no VM state is copied or cached between scrapes,
except exit counts of runners that have gone (kept so `kvmplat_vm_exits_total` never goes down).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from kvmplat.agent.kvm.fds import exit_reason_name
from kvmplat.agent.registry.lifecycle import REPORTED
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from kvmplat.agent.registry.controller import Controller

__all__ = ["REGISTRY", "ControllerCollector", "Snapshot", "families", "instrument", "instrument_stream", "serve"]

T = TypeVar("T")
disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: scrapers of this agent have no use for them
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # process_* (the agent's CPU, RSS, fds), as every exporter has
RPC_REQUESTS = Counter(
    "kvmplat_rpc_requests", "gRPC requests handled, by method and status code", ["method", "code"], registry=REGISTRY
)
RPC_DURATION = Histogram(
    "kvmplat_rpc_duration_seconds",
    "gRPC handling time by method and status code (streams: until the stream ends)",
    ["method", "code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
    registry=REGISTRY,
)
STATES = tuple(s.name for s in REPORTED)


def _code(context: Any, exc: BaseException | None) -> str:
    """The status code a call ended with: the one it was aborted with, OK, or UNKNOWN for an uncaught error."""
    code = None
    with contextlib.suppress(AttributeError, NotImplementedError):
        code = context.code()
    if code is not None and hasattr(code, "name"):
        return str(code.name)
    if exc is None or isinstance(exc, asyncio.CancelledError):
        return "OK" if exc is None else "CANCELLED"
    return "UNKNOWN"


def _observe(method: str, context: Any, start: float, exc: BaseException | None) -> None:
    """Counts one finished call and its duration."""
    code = _code(context, exc)
    RPC_REQUESTS.labels(method, code).inc()
    RPC_DURATION.labels(method, code).observe(time.perf_counter() - start)


def instrument(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Wraps a unary servicer method so each call is counted by code and timed."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Any) -> T:
        start = time.perf_counter()
        try:
            result = await fn(self, request, context)
        except BaseException as e:
            _observe(fn.__name__, context, start, e)
            raise
        _observe(fn.__name__, context, start, None)
        return result

    return wrapper


def instrument_stream(fn: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
    """Wraps a server-streaming servicer method the same way (timed until the stream ends)."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Any) -> AsyncIterator[T]:
        start = time.perf_counter()
        try:
            async for item in fn(self, request, context):
                yield item
        except BaseException as e:
            _observe(fn.__name__, context, start, e)
            raise
        _observe(fn.__name__, context, start, None)

    return wrapper


@dataclass
class Snapshot:
    """What a scrape reports about VMs (pure data, rendered by `families`)."""

    states: Tally[str] = field(default_factory=Tally)
    vcpus: int = 0
    memory_committed_mib: int = 0
    vcpus_capacity: int = 0
    memory_capacity_mib: int = 0
    exits: Tally[str] = field(default_factory=Tally)
    watchers: int = 0


def families(s: Snapshot) -> Iterator[Metric]:
    """The metric families of a snapshot."""
    vms = GaugeMetricFamily("kvmplat_vms", "VMs by lifecycle state", labels=["state"])
    for state in STATES:
        vms.add_metric([state.lower()], s.states.get(state, 0))
    yield vms
    yield GaugeMetricFamily("kvmplat_vcpus", "vCPUs held by VMs that have a guest", value=s.vcpus)
    yield GaugeMetricFamily("kvmplat_vcpus_capacity", "vCPUs this agent may run in all", value=s.vcpus_capacity)
    mib = 1024 * 1024
    yield GaugeMetricFamily(
        "kvmplat_memory_committed_bytes", "guest memory held by VMs", value=s.memory_committed_mib * mib
    )
    yield GaugeMetricFamily(
        "kvmplat_memory_capacity_bytes", "guest memory this agent may give", value=s.memory_capacity_mib * mib
    )
    exits = CounterMetricFamily("kvmplat_vm_exits", "KVM_RUN returns by exit reason, all VMs", labels=["reason"])
    for reason in sorted(s.exits):
        exits.add_metric([reason], s.exits[reason])
    yield exits
    yield GaugeMetricFamily("kvmplat_event_watchers", "open WatchEvents streams that follow", value=s.watchers)


class ControllerCollector(Collector):
    """Reads VM metrics from the controller on the agent's event loop at each scrape."""

    def __init__(self, controller: Controller, loop: asyncio.AbstractEventLoop, timeout: float = 5.0) -> None:
        self.c, self.loop, self.timeout = controller, loop, timeout
        self._last: dict[tuple[str, float], Tally[str]] = {}
        self._retired: Tally[str] = Tally()

    def describe(self) -> Iterator[Metric]:
        """Nothing up front: registering must not scrape (it runs on the event loop the scrape waits for)."""
        return iter(())

    def collect(self) -> Iterator[Metric]:
        """The families of a fresh snapshot (called in the HTTP server's thread)."""
        snap = asyncio.run_coroutine_threadsafe(self.snapshot(), self.loop).result(self.timeout)
        yield from families(snap)

    async def snapshot(self) -> Snapshot:
        """A snapshot of the controller (runs on the event loop)."""
        recs = list(self.c.vms.values())
        stats = await asyncio.gather(*(self.c.stats(r) for r in recs))
        mem, cpus = self.c.used()
        s = Snapshot(vcpus=cpus, memory_committed_mib=mem, watchers=self.c.bus.watcher_count())
        s.vcpus_capacity, s.memory_capacity_mib = self.c.total_vcpus, self.c.total_memory_mib
        s.states.update(r.state.name for r in recs)
        current = {
            (r.name, r.created): Tally({exit_reason_name(k): v for k, v in st.by_reason})
            for r, st in zip(recs, stats, strict=True)
            if st is not None
        }
        for key, tally in self._last.items():
            if key not in current:
                self._retired.update(tally)  # its runner is gone: keep what it last reported
        self._last = current
        s.exits.update(self._retired)
        for tally in current.values():
            s.exits.update(tally)
        return s


def serve(listen: str, controller: Controller, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Starts the HTTP endpoint on HOST:PORT (GET /metrics); returns the function that stops it."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"--metrics-listen takes HOST:PORT, not {listen!r}")
    collector = ControllerCollector(controller, loop)
    REGISTRY.register(collector)
    try:
        httpd, thread = start_http_server(int(port), addr=host.strip("[]") or "0.0.0.0", registry=REGISTRY)
    except OSError as e:
        REGISTRY.unregister(collector)
        raise ValueError(f"--metrics-listen {listen}: {e.strerror or e}") from None

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=2)

    return stop
