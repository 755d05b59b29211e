"""No overcommit under concurrency: three agents in network namespaces (TCP with mutual TLS, each its own
namespace; Placement on the host end of the first namespace's veth, the others routed to it) with room for 4 + 4 + 2
VMs of 16 MiB, and 20 `place_on_placement` calls at once. Exactly 10 VMs run, the other 10 callers are refused
with a reason, Placement's usages equal what runs, and every agent's own view of its free memory agrees.
Without network namespaces (no root or iproute2) the same test runs on unix sockets and says so with a warning."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kvmplat.client.scheduling.placement_engine import place_on_placement
from kvmplat.v1 import agent_pb2 as pb
from placement_harness import PlacedAgent, PlacementService, placement_unavailable
from scheduling.sched_harness import agent_tls_flags, make_pki, namespaces, netns_unavailable, tls_files

pytestmark = [pytest.mark.e2e, pytest.mark.kvm]
MEMORY = (64, 64, 32)  # room for 4 + 4 + 2 VMs of 16 MiB


@contextlib.contextmanager
def cluster(tmp: Path) -> Iterator[tuple[PlacementService, list[PlacedAgent], Any]]:
    """Placement and three agents: in network namespaces where they can be made, else on unix sockets."""
    assert not placement_unavailable(), placement_unavailable()
    if why := netns_unavailable():
        warnings.warn(f"no network namespaces here ({why}): the agents listen on unix sockets", stacklevel=1)
        with _unix_cluster(tmp) as c:
            yield c
        return
    with namespaces(3) as ns:
        for n in ns[1:]:  # Placement listens on the host end of ns[0]'s veth
            subprocess.run(["ip", "-n", n.name, "route", "add", ns[0].host_ip, "via", n.host_ip], check=True)
        service = PlacementService(ns[0].host_ip)
        pki = make_pki(tmp, [n.ip for n in ns])
        authz = tmp / "authz.yaml"
        authz.write_text("operator: operator\nreader: reader\n")
        tls = tls_files(pki, "operator")
        agents: list[PlacedAgent] = []
        try:
            for i, (n, mem) in enumerate(zip(ns, MEMORY, strict=True)):
                flags = [*agent_tls_flags(pki, authz), "--max-memory-mib", str(mem)]
                agents.append(
                    PlacedAgent(f"tcp://{n.ip}:7443", tmp / f"s{i}", service.url, *flags, netns=n.name, tls=tls)
                )
            yield service, agents, tls
        finally:
            for a in agents:
                a.close()
            service.close()


@contextlib.contextmanager
def _unix_cluster(tmp: Path) -> Iterator[tuple[PlacementService, list[PlacedAgent], Any]]:
    service = PlacementService()
    agents: list[PlacedAgent] = []
    try:
        for i, mem in enumerate(MEMORY):
            agents.append(
                PlacedAgent(f"unix://{tmp}/a{i}.sock", tmp / f"s{i}", service.url, "--max-memory-mib", str(mem))
            )
        yield service, agents, None
    finally:
        for a in agents:
            a.close()
        service.close()


def spec(i: int) -> pb.VmSpec:
    """VM p<i>: one vCPU, 16 MiB, the loop payload."""
    return pb.VmSpec(name=f"p{i}", vcpus=1, memory_mib=16, boot=pb.BootSpec(builtin="loop"))


def test_twenty_concurrent_placements_run_exactly_what_fits(tmp_path: Path) -> None:
    with cluster(tmp_path) as (service, agents, tls):
        with cf.ThreadPoolExecutor(max_workers=20) as pool:
            futures = [pool.submit(place_on_placement, spec(i), service.url, timeout=60, tls=tls) for i in range(20)]
            results = [f.result() for f in futures]
        chosen = [r for r in results if r.chosen is not None]
        refused = [r for r in results if r.chosen is None]
        assert len(chosen) == 10 and len(refused) == 10
        for r in refused:  # every refusal names a reason for every agent
            assert {x.agent for x in r.rejected} == {a.address for a in agents}, r
            assert all(x.reason for x in r.rejected)
        providers = service.providers()
        running = 0
        for a, mem in zip(agents, MEMORY, strict=True):
            vms = a.client.list_vms()
            assert all(v.state == pb.RUNNING for v in vms)
            running += len(vms)
            rp = providers[a.address]["uuid"]
            used = service.usages(rp).get("MEMORY_MB", 0)
            assert used == 16 * len(vms) == sum(r.chosen == a.address for r in chosen) * 16
            assert set(service.allocations(rp)) == {v.spec.uuid for v in vms}  # one allocation per VM, its own
            assert a.client.capabilities().memory_free_mib == mem - used  # the agent's view agrees
        assert running == 10
