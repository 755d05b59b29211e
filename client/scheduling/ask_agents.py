"""Placement across agents: ask every agent at once, keep those that can run the spec, pick the one with most room.

Each agent is asked GetCapabilities then CheckPlatform, each call bounded by `timeout`; every agent is asked from
its own thread, so the whole placement takes about the slowest agent's answer, never longer than the overall bound.
An agent that cannot be reached, answers too late, refuses the caller, refuses the platform or lacks memory or vCPUs
is rejected with its reason. What is left is scored: most free memory first, then most free vCPUs, then the address
(so ties are broken the same way every time). Addresses are reported exactly as given.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kvmplat.client.agent import AddressError, Client, TlsFiles
from kvmplat.client.errors import InvalidArgument, KvmplatError, ResourceExhausted, Unreachable
from kvmplat.v1 import agent_pb2 as pb

__all__ = ["Offer", "Placement", "Rejection", "ask", "decide", "place", "room_reasons", "score"]

ClientFactory = Callable[[str], Client]


@dataclass(frozen=True)
class Offer:
    """An agent that can run the spec, with the room it has left."""

    agent: str
    memory_free_mib: int
    vcpus_free: int

    def to_json(self) -> dict[str, Any]:
        """The offer as a JSON object in protobuf JSON's style (camelCase; a uint64 such as the memory a string)."""
        return {"agent": self.agent, "memoryFreeMib": str(self.memory_free_mib), "vcpusFree": self.vcpus_free}


@dataclass(frozen=True)
class Rejection:
    """An agent that cannot run the spec, and why."""

    agent: str
    reason: str

    def to_json(self) -> dict[str, str]:
        """The rejection as a JSON object."""
        return {"agent": self.agent, "reason": self.reason}


@dataclass(frozen=True)
class Placement:
    """The chosen agent (None when no agent can take the spec), the candidates in score order, the rejections."""

    chosen: str | None
    candidates: tuple[Offer, ...]
    rejected: tuple[Rejection, ...]

    def to_json(self) -> dict[str, Any]:
        """{"chosen": ADDR|null, "rejected": [{"agent", "reason"}], "candidates": [...]}."""
        return {
            "chosen": self.chosen,
            "rejected": [r.to_json() for r in self.rejected],
            "candidates": [o.to_json() for o in self.candidates],
        }


def score(offer: Offer) -> tuple[int, int, str]:
    """Sort key: most free memory, then most free vCPUs, then the address."""
    return (-offer.memory_free_mib, -offer.vcpus_free, offer.agent)


def room_reasons(spec: pb.VmSpec, caps: pb.Capabilities) -> list[str]:
    """Why the agent lacks room for `spec` (empty when it has room)."""
    reasons = []
    if spec.memory_mib > caps.memory_free_mib:
        reasons.append(f"needs {spec.memory_mib} MiB of memory, {caps.memory_free_mib} MiB free of {caps.memory_mib}")
    if spec.vcpus > caps.vcpus_free:
        reasons.append(f"needs {spec.vcpus} vCPUs, {caps.vcpus_free} free of {caps.vcpus_total}")
    if caps.max_vcpus and spec.vcpus > caps.max_vcpus:
        reasons.append(f"needs {spec.vcpus} vCPUs in one VM, the host allows {caps.max_vcpus}")
    return reasons


def _only_room(e: KvmplatError) -> bool:
    """Whether a CheckPlatform refusal is about memory or vCPUs only (room_reasons says it in the place's words)."""
    if isinstance(e, ResourceExhausted):
        return True
    fields = {f for f, _ in getattr(e, "violations", ())}
    return isinstance(e, InvalidArgument) and bool(fields) and fields <= {"spec.memory_mib", "spec.vcpus"}


def ask(agent: str, spec: pb.VmSpec, make_client: ClientFactory) -> Offer | Rejection:
    """One agent's answer: its offer, or why it cannot take the spec."""
    try:
        with make_client(agent) as client:
            caps = client.capabilities()
            reasons = room_reasons(spec, caps)
            try:
                client.check_platform(spec)
            except Unreachable:
                raise
            except KvmplatError as e:
                if not (reasons and _only_room(e)):  # CheckPlatform (a dry run of create) says what room_reasons say
                    reasons.insert(0, f"platform refused: {e.code + ': ' if e.code else ''}{e.one_line()}")
    except AddressError as e:
        return Rejection(agent, f"bad address: {e}")
    except Unreachable as e:
        return Rejection(agent, f"unreachable: {e.one_line()}")
    except KvmplatError as e:  # the agent answered, but not with its capabilities (e.g. PERMISSION_DENIED)
        return Rejection(agent, f"refused: {e.code + ': ' if e.code else ''}{e.one_line()}")
    if reasons:
        return Rejection(agent, "; ".join(reasons))
    return Offer(agent, int(caps.memory_free_mib), int(caps.vcpus_free))


def place(
    spec: pb.VmSpec,
    agents: Sequence[str],
    *,
    timeout: float = 5.0,
    tls: TlsFiles | None = None,
    make_client: ClientFactory | None = None,
) -> Placement:
    """Asks every agent concurrently and returns the placement (see the module docstring)."""
    agents = list(dict.fromkeys(agents))
    factory = make_client or (lambda a: Client(a, timeout=timeout, tls=tls))
    answers: dict[str, Offer | Rejection] = {}
    pool = cf.ThreadPoolExecutor(max_workers=max(1, min(32, len(agents))), thread_name_prefix="kvmplat-place")
    try:
        futures = {pool.submit(ask, a, spec, factory): a for a in agents}
        bound = 2 * timeout + 1.0  # two calls per agent, plus thread start-up
        for fut in cf.as_completed(futures, timeout=bound) if futures else ():
            answers[futures[fut]] = fut.result()
    except cf.TimeoutError:
        pass
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    for a in agents:
        answers.setdefault(a, Rejection(a, f"unreachable: no answer within {2 * timeout + 1.0:g} s"))
    return decide([answers[a] for a in agents])


def decide(answers: Sequence[Offer | Rejection]) -> Placement:
    """The placement from the agents' answers (pure: scores the offers, keeps the rejections in the given order)."""
    offers = sorted((a for a in answers if isinstance(a, Offer)), key=score)
    rejected = tuple(a for a in answers if isinstance(a, Rejection))
    return Placement(offers[0].agent if offers else None, tuple(offers), rejected)
