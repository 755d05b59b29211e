"""Agents registered with a real Placement (on loopback; agents on unix sockets): the provider (named after the
advertised address, UUID kept in the state dir), inventory and traits from the measured truth, following a restart;
claims made before a runner starts and released at destroy; a refused claim is RESOURCE_EXHAUSTED naming what is
short; reconciliation after SIGKILL; 409 generation conflicts retried."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kvmplat.agent.platform.traits import FEATURE_TRAITS, traits_from_caps
from kvmplat.agent.registry.placement import Provider
from kvmplat.agent.registry.placement_http import PlacementHttp
from kvmplat.client.errors import AlreadyExists, InvalidArgument, KvmplatError, ResourceExhausted
from kvmplat.v1 import agent_pb2 as pb
from placement_harness import PlacedAgent, PlacementService

pytestmark = [pytest.mark.e2e, pytest.mark.kvm]
Agents = Callable[..., PlacedAgent]
KVMPLAT = str(Path(sys.executable).parent / "kvmplat")


def loop(name: str, memory_mib: int = 16, vm_uuid: str = "") -> pb.VmSpec:
    """A one-vCPU loop VM."""
    return pb.VmSpec(name=name, vcpus=1, memory_mib=memory_mib, boot=pb.BootSpec(builtin="loop"), uuid=vm_uuid)


def inventory(placement: PlacementService, rp: str) -> dict[str, Any]:
    """The provider's inventories."""
    inv: dict[str, Any] = placement.get(f"/resource_providers/{rp}/inventories")["inventories"]
    return inv


def claim_body(rp: str, memory_mib: int) -> dict[str, Any]:
    """An allocation of `memory_mib` MEMORY_MB and one VCPU on provider `rp` for a new consumer."""
    return {
        "allocations": {rp: {"resources": {"MEMORY_MB": memory_mib, "VCPU": 1}}},
        "project_id": "kvmplat",
        "user_id": "kvmplat-agent",
        "consumer_generation": None,
        "consumer_type": "INSTANCE",
    }


def test_provider_inventory_and_traits_follow_the_measured_truth_and_restarts(
    placement: PlacementService, placed_agents: Agents
) -> None:
    a = placed_agents("reg", "--max-memory-mib", "64", "--max-vcpus", "8")
    rp = placement.providers()[a.address]
    assert rp["uuid"] == a.provider_uuid()
    caps = a.client.capabilities()
    traits = placement.traits(rp["uuid"])
    assert traits == traits_from_caps(caps)
    seen = {FEATURE_TRAITS[f.name] for f in caps.cpu_features if f.seen and f.name in FEATURE_TRAITS}
    assert {t for t in traits if t.startswith("HW_CPU_")} == seen
    for f in caps.cpu_features:  # a feature KVM claims but no guest sees is never published
        if f.name in FEATURE_TRAITS and not f.seen:
            assert FEATURE_TRAITS[f.name] not in traits
    assert any(t.startswith("CUSTOM_KVMPLAT_LEVEL_") for t in traits)
    generation = placement.get(f"/resource_providers/{rp['uuid']}")["generation"]
    body = {"resource_provider_generation": generation, "traits": ["HW_CPU_X86_SSE"]}
    placement.request("PUT", f"/resource_providers/{rp['uuid']}/traits", body)  # drifted
    a.client.capabilities(refresh=True)  # measured again: the traits are published again
    assert placement.traits(rp["uuid"]) == traits_from_caps(a.client.capabilities())
    inv = inventory(placement, rp["uuid"])
    assert (inv["MEMORY_MB"]["total"], inv["VCPU"]["total"]) == (64, 8)
    assert (inv["MEMORY_MB"]["reserved"], inv["MEMORY_MB"]["allocation_ratio"]) == (0, 1.0)
    a.stop()
    a.start("--max-memory-mib", "128", "--reserved-memory-mib", "32", "--memory-allocation-ratio", "1.5")
    assert placement.providers()[a.address]["uuid"] == rp["uuid"]  # the same provider, not a second one
    inv = inventory(placement, rp["uuid"])
    assert (inv["MEMORY_MB"]["total"], inv["MEMORY_MB"]["reserved"], inv["MEMORY_MB"]["allocation_ratio"]) == (
        128,
        32,
        1.5,
    )
    assert a.client.capabilities().memory_mib == 144  # the agent's own limit is Placement's capacity: (128-32)*1.5


def test_claims_are_made_before_the_runner_and_released_at_destroy(
    placement: PlacementService, placed_agents: Agents
) -> None:
    a = placed_agents("claims", "--max-memory-mib", "40")
    rp = a.provider_uuid()
    vm = a.client.create_vm(loop("c1"), start=True)
    assert uuid.UUID(vm.spec.uuid)  # the agent gave the VM its UUID
    assert placement.allocations(rp) == {vm.spec.uuid: {"MEMORY_MB": 16, "VCPU": 1}}
    mine = str(uuid.uuid4())
    assert a.client.create_vm(loop("c2", vm_uuid=mine)).spec.uuid == mine
    with pytest.raises(ResourceExhausted, match=r"exceeds what is left: 8 MiB"):  # the agent's own view first
        a.client.create_vm(loop("c3"))
    outsider = str(uuid.uuid4())  # room taken behind the agent's back: Placement's answer decides
    placement.request("PUT", f"/allocations/{outsider}", claim_body(rp, 8))
    with pytest.raises(ResourceExhausted, match=r"Placement has no room .*MEMORY_MB: 4 asked, 0 of 40 left"):
        a.client.create_vm(loop("c3", 4))
    assert "c3" not in {v.spec.name for v in a.client.list_vms()}
    placement.request("DELETE", f"/allocations/{outsider}")
    with pytest.raises(AlreadyExists, match=r"spec\.uuid"):
        a.client.create_vm(loop("c4", 4, vm_uuid=mine))
    with pytest.raises(InvalidArgument, match=r"spec\.uuid"):
        a.client.create_vm(loop("c5", 4, vm_uuid=mine.upper()))
    a.client.stop_vm("c1")  # a stopped VM may start again: it keeps its claim, and the agent counts it
    assert placement.usages(rp)["MEMORY_MB"] == 32
    assert a.client.capabilities().memory_free_mib == 8
    a.client.destroy_vm("c1")
    assert set(placement.allocations(rp)) == {mine}
    assert a.client.capabilities().memory_free_mib == 24 == 40 - placement.usages(rp)["MEMORY_MB"]


def test_after_sigkill_the_allocations_are_reconciled_with_the_readopted_vms(
    placement: PlacementService, placed_agents: Agents
) -> None:
    a = placed_agents("recon", "--max-memory-mib", "64")
    rp = a.provider_uuid()
    vms = [a.client.create_vm(loop(f"r{i}"), start=True) for i in range(2)]
    a.kill()
    placement.request("DELETE", f"/allocations/{vms[0].spec.uuid}")  # lost: the VM runs unclaimed
    leaked = str(uuid.uuid4())  # a claim whose VM never got recorded
    placement.request("PUT", f"/allocations/{leaked}", claim_body(rp, 16))
    a.start()
    assert placement.allocations(rp) == {vm.spec.uuid: {"MEMORY_MB": 16, "VCPU": 1} for vm in vms}
    assert {v.state for v in a.client.list_vms()} == {pb.RUNNING}
    assert a.client.capabilities().memory_free_mib == 64 - placement.usages(rp)["MEMORY_MB"] == 32


def test_place_cli_creates_through_placement_with_json_and_exit_codes(
    placement: PlacementService, placed_agents: Agents, tmp_path: Path
) -> None:
    a = placed_agents("cli", "--max-memory-mib", "16")
    f = tmp_path / "p.json"
    f.write_text('{"name":"p1","vcpus":1,"memory_mib":16,"boot":{"builtin":"loop"}}')
    run = [KVMPLAT, "place", "--spec", str(f), "--placement", placement.url, "--json"]
    ok = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["chosen"] == a.address
    assert a.client.get_vm("p1").state == pb.RUNNING
    full = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert full.returncode == 1 and "Traceback" not in full.stderr
    assert json.loads(full.stdout)["chosen"] is None
    reasons = [r["reason"] for r in json.loads(full.stdout)["rejected"] if r["agent"] == a.address]
    assert reasons and reasons[0].startswith("not a Placement candidate: no room for VCPU:1, MEMORY_MB:16")
    bad = subprocess.run([*run[:-2], "http://127.0.0.1:9"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "cannot ask Placement" in bad.stderr


class Racing(PlacementHttp):
    """Placement HTTP that lets another writer change the provider just before this client's first PUT of it."""

    def __init__(self, url: str, rival: Callable[[], None]) -> None:
        super().__init__(url)
        self.rival: Callable[[], None] | None = rival
        self.conflicts = 0

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Runs the rival once, before the first PUT carrying a provider generation."""
        if self.rival is not None and isinstance(body, dict) and "resource_provider_generation" in body:
            rival, self.rival = self.rival, None
            rival()
            self.conflicts += 1
        return super().request(method, path, body)


def test_generation_conflicts_are_retried(placement: PlacementService) -> None:
    rp = str(uuid.uuid4())
    setup = Provider(PlacementHttp(placement.url), rp, f"race-{rp}")
    setup.ensure()

    def rival() -> None:  # another writer bumps the generation between our GET and our PUT
        generation = placement.get(f"/resource_providers/{rp}")["generation"]
        body = {"resource_provider_generation": generation, "traits": ["HW_CPU_X86_SSE"]}
        placement.request("PUT", f"/resource_providers/{rp}/traits", body)

    http = Racing(placement.url, rival)
    inv = {"MEMORY_MB": {"total": 64, "reserved": 0, "allocation_ratio": 1.0, "min_unit": 1, "max_unit": 64}}
    Provider(http, rp, f"race-{rp}").set_inventory(inv)
    assert http.conflicts == 1
    assert inventory(placement, rp)["MEMORY_MB"]["total"] == 64
    assert placement.traits(rp) == {"HW_CPU_X86_SSE"}  # the rival's change stands


def test_a_second_agent_advertising_a_taken_address_is_refused_at_start(
    placement: PlacementService, placed_agents: Agents, tmp_path: Path
) -> None:
    a = placed_agents("first", "--max-memory-mib", "16")
    argv = [str(Path(sys.executable).parent / "kvmplat-agent"), "--listen", f"unix://{tmp_path}/second.sock"]
    argv += ["--state-dir", str(tmp_path / "second"), "--placement-url", placement.url, "--advertise", a.address]
    second = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert second.returncode == 2
    assert f"another provider is named {a.address!r}" in second.stderr
    assert [n for n in placement.providers() if n == a.address] == [a.address]


def test_migration_moves_the_claim_and_a_full_target_refuses_it(
    placement: PlacementService, placed_agents: Agents, tmp_path: Path
) -> None:
    a, b = placed_agents("src", "--max-memory-mib", "32"), placed_agents("dst", "--max-memory-mib", "32")
    vm = a.client.create_vm(loop("mv"), start=True)
    list(a.client.migrate_vm("mv", b.address))
    assert placement.allocations(a.provider_uuid()) == {}  # the source gave its share back
    assert placement.allocations(b.provider_uuid()) == {vm.spec.uuid: {"MEMORY_MB": 16, "VCPU": 1}}
    assert b.client.get_vm("mv").spec.uuid == vm.spec.uuid
    outsider = str(uuid.uuid4())  # the source's provider is full behind its agent's back
    placement.request("PUT", f"/allocations/{outsider}", claim_body(a.provider_uuid(), 32))
    with pytest.raises(KvmplatError, match="MEMORY_MB"):
        list(b.client.migrate_vm("mv", a.address))
    assert b.client.get_vm("mv").state == pb.RUNNING  # still at home, still claimed there only
    assert placement.allocations(b.provider_uuid()) == {vm.spec.uuid: {"MEMORY_MB": 16, "VCPU": 1}}
    assert set(placement.allocations(a.provider_uuid())) == {outsider}
    placement.request("DELETE", f"/allocations/{outsider}")
    b.client.pause_vm("mv")
    snap = tmp_path / "mv.snap"
    b.client.snapshot_to_file("mv", str(snap))
    copy = b.client.restore_from_file("mv2", str(snap))  # beside its original: a UUID and a claim of its own
    assert copy.spec.uuid != vm.spec.uuid
    assert set(placement.allocations(b.provider_uuid())) == {vm.spec.uuid, copy.spec.uuid}
