"""Limits against the real agent: a watcher that stops reading while a guest floods its console is cut off with
RESOURCE_EXHAUSTED after a bounded buffer, and the agent's memory stops growing once it is (no timed asserts: the
test waits on the agent's watcher gauge and on event counts, and compares memory with the bytes published)."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import grpc
import pytest
from agent_harness import AgentFactory, flood_kernel, kernel_spec, rss_kib
from kvmplat.agent.registry.events import RING, WATCH_BUFFER
from kvmplat.v1 import agent_pb2 as pb
from kvmplat.v1 import agent_pb2_grpc as pbg

pytestmark = [pytest.mark.e2e, pytest.mark.kvm]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gauge(port: int, name: str) -> float:
    """One unlabelled metric of the agent's /metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        for line in page.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_a_watcher_that_stops_reading_is_cut_off_and_memory_stays_bounded(
    agent_factory: AgentFactory, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    kernel = flood_kernel(images, line=100)
    port = free_port()
    agent = agent_factory("--image-dir", str(images), "--metrics-listen", f"127.0.0.1:{port}")
    agent.stub.CreateVm(pb.CreateVmRequest(spec=kernel_spec("flood", kernel), start=True), timeout=30)
    # no BDP probing: the stalled client's receive window stays small, so the agent's side fills soon
    stalled_channel = grpc.insecure_channel(agent.address, options=[("grpc.http2.bdp_probe", 0)])
    stalled = pbg.AgentStub(stalled_channel).WatchEvents(  # type: ignore[no-untyped-call]
        pb.WatchEventsRequest(vm="flood", follow=True), timeout=600
    )
    both, cut_at, start, rss, published = False, 0, 0, [], 0
    for ev in agent.stub.WatchEvents(pb.WatchEventsRequest(vm="flood", follow=True), timeout=600):
        if not cut_at and ev.seq % 100 == 0:
            watchers = gauge(port, "kvmplat_event_watchers")
            both = both or watchers == 2
            if both and watchers == 1:
                cut_at = ev.seq  # only this reader is left: the stalled stream was cut off
                # from here on the events it still holds leave the ring (and become its alone): measure after that
                start = cut_at + RING + 500
        elif cut_at and ev.seq == start:
            rss.append(rss_kib(agent.proc.pid))
        elif cut_at and ev.seq > start:
            published += len(ev.console.text)
            if ev.seq == start + 3 * WATCH_BUFFER:
                rss.append(rss_kib(agent.proc.pid))
                break
    growth = (rss[1] - rss[0]) * 1024
    # a buffer that kept them would hold at least every byte published
    assert growth < published, f"agent RSS grew {growth} bytes while {published} console bytes went by: {rss}"
    got = 0
    with pytest.raises(grpc.RpcError) as info:
        for _ in stalled:
            got += 1
    err: grpc.RpcError = info.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    assert "cut off" in str(err.details()) and str(WATCH_BUFFER) in str(err.details())
    assert 0 < got < cut_at
    stalled_channel.close()
    agent.stub.StopVm(pb.VmRequest(name="flood"), timeout=30)
