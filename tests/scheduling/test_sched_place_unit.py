"""Placement without agents: scoring, room checks, and the bound on slow or failing agents (fake clients)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kvmplat.client.errors import FailedPrecondition, PermissionDenied, Unreachable
from kvmplat.client.scheduling.ask_agents import Offer, Rejection, decide, place, room_reasons
from kvmplat.v1 import agent_pb2 as pb

SPEC = pb.VmSpec(name="vm", vcpus=2, memory_mib=100, boot=pb.BootSpec(builtin="loop"))


class FakeClient:
    """Answers like a Client from a table: free memory/vCPUs, or an error."""

    def __init__(
        self,
        mem: int = 1000,
        cpus: int = 8,
        refuse: str = "",
        down: bool = False,
        denied: bool = False,
    ):
        self.mem, self.cpus, self.refuse, self.down = mem, cpus, refuse, down
        self.denied = denied

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def capabilities(self) -> pb.Capabilities:
        if self.down:
            raise Unreachable("cannot reach the kvmplat agent", "UNAVAILABLE")
        if self.denied:
            raise PermissionDenied("GetCapabilities needs role reader", "PERMISSION_DENIED")
        return pb.Capabilities(
            memory_mib=self.mem, memory_free_mib=self.mem, vcpus_total=self.cpus, vcpus_free=self.cpus, max_vcpus=64
        )

    def check_platform(self, spec: pb.VmSpec) -> pb.EffectivePlatform:
        if self.refuse:
            raise FailedPrecondition(self.refuse, "FAILED_PRECONDITION")
        return pb.EffectivePlatform()


def factory(table: dict[str, FakeClient]) -> Any:
    """A make_client over the table."""
    return lambda address: table[address]


def test_most_free_memory_wins_then_vcpus_then_address() -> None:
    offers = [Offer("c", 500, 4), Offer("b", 500, 8), Offer("a", 500, 8), Offer("d", 400, 64)]
    result = decide([*offers, Rejection("x", "full")])
    assert result.chosen == "a"
    assert [o.agent for o in result.candidates] == ["a", "b", "c", "d"]
    assert result.rejected == (Rejection("x", "full"),)


def test_no_offer_means_no_choice() -> None:
    result = decide([Rejection("a", "r1"), Rejection("b", "r2")])
    assert result.chosen is None and result.to_json() == {
        "chosen": None,
        "rejected": [{"agent": "a", "reason": "r1"}, {"agent": "b", "reason": "r2"}],
        "candidates": [],
    }


def test_room_reasons_name_what_is_short() -> None:
    caps = pb.Capabilities(memory_mib=128, memory_free_mib=64, vcpus_total=4, vcpus_free=1, max_vcpus=1)
    reasons = room_reasons(SPEC, caps)
    assert reasons == [
        "needs 100 MiB of memory, 64 MiB free of 128",
        "needs 2 vCPUs, 1 free of 4",
        "needs 2 vCPUs in one VM, the host allows 1",
    ]
    assert room_reasons(SPEC, pb.Capabilities(memory_free_mib=100, vcpus_free=2, max_vcpus=2)) == []


def test_place_explains_every_rejection_in_the_given_order() -> None:
    table = {
        "small": FakeClient(mem=50),
        "down": FakeClient(down=True),
        "refuses": FakeClient(refuse="compat x86-64-v4 cannot be honoured"),
        "big": FakeClient(mem=4000),
        "bigger-but-refuses": FakeClient(mem=9000, refuse="no hyperv"),
        "mid": FakeClient(mem=2000),
        "denies": FakeClient(mem=9000, denied=True),
    }
    result = place(SPEC, list(table), make_client=factory(table))
    assert result.chosen == "big"
    assert [o.agent for o in result.candidates] == ["big", "mid"]
    reasons = {r.agent: r.reason for r in result.rejected}
    assert list(reasons) == ["small", "down", "refuses", "bigger-but-refuses", "denies"]
    assert reasons["small"] == "needs 100 MiB of memory, 50 MiB free of 50"
    assert reasons["down"].startswith("unreachable: ")
    assert reasons["refuses"] == "platform refused: FAILED_PRECONDITION: compat x86-64-v4 cannot be honoured"
    assert reasons["denies"] == "refused: PERMISSION_DENIED: GetCapabilities needs role reader"  # answered: not down


def test_a_hanging_agent_is_a_rejection_within_the_bound() -> None:
    """place() answers while the hanging agent still has not: it never waits past its bound for one agent."""
    gate = threading.Event()
    answered: list[str] = []

    class Hangs(FakeClient):
        def capabilities(self) -> pb.Capabilities:
            gate.wait(30)
            answered.append("hangs")
            return super().capabilities()

    table = {"ok": FakeClient(), "hangs": Hangs()}
    try:
        result = place(SPEC, ["hangs", "ok"], timeout=0.2, make_client=factory(table))
        assert answered == [], "place() waited for the hanging agent"
    finally:
        gate.set()
    assert result.chosen == "ok"
    assert result.rejected == (Rejection("hangs", "unreachable: no answer within 1.4 s"),)


def test_agents_are_asked_concurrently() -> None:
    """Each of eight agents answers only once all eight are being asked at the same time (a barrier): asked one
    after another, the first would never answer."""
    everyone = threading.Barrier(8, timeout=20)

    class Waits(FakeClient):
        def capabilities(self) -> pb.Capabilities:
            everyone.wait()
            return super().capabilities()

    table = {f"a{i}": Waits(mem=1000 + i) for i in range(8)}
    result = place(SPEC, list(table), timeout=30, make_client=factory(table))
    assert result.rejected == ()
    assert result.chosen == "a7"


def test_bad_address_is_a_rejection() -> None:
    result = place(SPEC, ["tcp://nohostport"], timeout=1)
    assert result.chosen is None
    assert result.rejected[0].agent == "tcp://nohostport" and result.rejected[0].reason.startswith("bad address")


@pytest.mark.parametrize("agents", [[], ["a", "a"]])
def test_duplicates_and_empty(agents: list[str]) -> None:
    result = place(SPEC, agents, make_client=factory({"a": FakeClient()}))
    assert result.chosen == (agents[0] if agents else None)
    assert len(result.candidates) == len(set(agents))
