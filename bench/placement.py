"""Benchmark: scheduling through a real OpenStack Placement (SQLite, noauth2, wsgiref; the tests' harness).

Three agents (64, 64 and 32 MiB, unix sockets) register with Placement. Measured: one `allocation_candidates` query,
one `place_on_placement` (query + CreateVm started, whose claim is a PUT /allocations) and one DestroyVm of the
stopped VM (release), each p50/p99 over --cycles sequential place+destroy cycles; then 20 concurrent placements
against room for 10: the wall time and the slowest call. Figures are printed, not asserted. Last line:
{"candidates_ms": {"p50", "p99"}, "place_ms": {...}, "destroy_ms": {...}, "concurrent20_wall_ms": ..,
 "concurrent20_max_ms": .., "concurrent20_ok": 10}
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "placement")]  # one Placement harness, the tests'

from kvmplat.client.scheduling.placement_engine import candidates_query, place_on_placement  # noqa: E402
from kvmplat.v1 import agent_pb2 as pb  # noqa: E402
from placement_harness import PlacedAgent, PlacementService  # noqa: E402


def spec(name: str) -> pb.VmSpec:
    """A 1-vCPU, 16 MiB `loop` VM."""
    return pb.VmSpec(name=name, vcpus=1, memory_mib=16, boot=pb.BootSpec(builtin="loop"))


def ms(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(milliseconds, result) of one call."""
    t = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t) * 1000, out


def pct(xs: list[float]) -> dict[str, float]:
    """p50 and p99 (nearest rank) in ms, one decimal."""
    s = sorted(xs)
    return {"p50": round(statistics.median(s), 1), "p99": round(s[min(len(s) - 1, int(0.99 * len(s)))], 1)}


@contextlib.contextmanager
def cluster(tmp: Path) -> Iterator[tuple[PlacementService, list[PlacedAgent]]]:
    """Placement and three registered agents; all stopped afterwards."""
    service = PlacementService()
    agents: list[PlacedAgent] = []
    try:
        for i, mem in enumerate((64, 64, 32)):
            addr = f"unix://{tmp}/a{i}.sock"
            agents.append(PlacedAgent(addr, tmp / f"s{i}", service.url, "--max-memory-mib", str(mem)))
        yield service, agents
    finally:
        for a in agents:
            a.close()
        service.close()


def main() -> None:
    """Runs the benchmark and prints the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cycles", type=int, default=20, help="sequential place+destroy cycles (default 20)")
    cycles = p.parse_args().cycles
    with tempfile.TemporaryDirectory(prefix="kvmplat-bench-plc-") as d, cluster(Path(d)) as (service, agents):
        by_addr = {a.address: a for a in agents}
        query = candidates_query(spec("x"))
        cand, place, destroy = [], [], []
        for i in range(cycles):
            cand.append(ms(lambda: service.get(query))[0])
            t, result = ms(lambda i=i: place_on_placement(spec(f"s{i}"), service.url, timeout=60))
            place.append(t)
            client = by_addr[result.chosen].client
            client.stop_vm(f"s{i}")
            destroy.append(ms(lambda i=i, c=client: c.destroy_vm(f"s{i}"))[0])
        with cf.ThreadPoolExecutor(max_workers=20) as pool:
            t0 = time.perf_counter()
            futs = [
                pool.submit(ms, lambda i=i: place_on_placement(spec(f"c{i}"), service.url, timeout=120))
                for i in range(20)
            ]
            done = [f.result() for f in futs]
            wall = (time.perf_counter() - t0) * 1000
    out = {
        "candidates_ms": pct(cand),
        "place_ms": pct(place),
        "destroy_ms": pct(destroy),
        "concurrent20_wall_ms": round(wall, 1),
        "concurrent20_max_ms": round(max(t for t, _ in done), 1),
        "concurrent20_ok": sum(r.chosen is not None for _, r in done),
    }
    print(
        f"allocation_candidates: {out['candidates_ms']} ms; place (query + CreateVm with claim): {out['place_ms']} ms"
    )
    print(f"destroy (with release): {out['destroy_ms']} ms")
    print(f"20 concurrent places vs room for 10: {out['concurrent20_ok']} placed, wall {wall:.0f} ms")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
