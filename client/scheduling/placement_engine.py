"""Placement through OpenStack Placement: `kvmplat place --spec F --placement URL` and `place_on_placement()`.

1. The spec's platform becomes required traits (kvmplat.agent.platform.traits.required_traits, the names the agents
   publish) and its size resources VCPU and MEMORY_MB; `GET /allocation_candidates` answers which providers have
   both. A provider's name is its agent's address (each agent registers under its `--advertise` address).
2. The candidates are tried in order of most free memory, then most free vCPUs, then name: CreateVm (started) on
   the provider's agent. The agent's claim (PUT /allocations/{vm uuid}, consumer generation null) is the one atomic
   step, so there is exactly one allocation per VM and it is owned by the agent that runs the VM.
3. Every attempt carries the same fresh VM UUID: if an agent created the VM but its answer was lost, another agent's
   claim for that UUID is refused, so a retry can never start the VM twice.
An agent that refuses (RESOURCE_EXHAUSTED: another caller claimed the room first; FAILED_PRECONDITION: the platform;
or it cannot be reached) is rejected with its reason and the next candidate is tried. Providers that are no
candidate at all are rejected with Placement's reason. The answer has the shape of `kvmplat place --agents`.
"""

from __future__ import annotations

import urllib.parse
import uuid as uuidlib
from collections.abc import Callable, Iterable
from typing import Any

from kvmplat.client.agent import AddressError, Client, TlsFiles
from kvmplat.client.errors import InvalidArgument, KvmplatError, Unreachable
from kvmplat.client.scheduling.ask_agents import Offer, Placement, Rejection, score
from kvmplat.v1 import agent_pb2 as pb

__all__ = ["candidates_query", "place_on_placement"]

ClientFactory = Callable[[str], Client]


def _required(spec: pb.VmSpec) -> list[str]:
    """The spec's required traits; the client's InvalidArgument for a compat that names no level."""
    from kvmplat.agent.errors import InvalidArgument as AgentInvalid
    from kvmplat.agent.platform.traits import required_traits

    try:
        return required_traits(spec.platform)
    except AgentInvalid as e:
        raise InvalidArgument(str(e), "INVALID_ARGUMENT", tuple(e.violations)) from None


def candidates_query(spec: pb.VmSpec) -> str:
    """The allocation_candidates path for `spec` (resources, required traits)."""
    params = {"resources": f"VCPU:{spec.vcpus},MEMORY_MB:{spec.memory_mib}"}
    required = _required(spec)
    if required:
        params["required"] = ",".join(required)
    return "/allocation_candidates?" + urllib.parse.urlencode(params, safe=":,")


def _offers(answer: dict[str, Any], names: dict[str, str]) -> list[Offer]:
    """Candidates as offers (free room from the provider summaries), best first."""
    offers = []
    for rp, summary in answer["provider_summaries"].items():
        res = summary["resources"]
        free = {rc: int(r["capacity"]) - int(r["used"]) for rc, r in res.items()}
        offers.append(Offer(names.get(rp, rp), free.get("MEMORY_MB", 0), free.get("VCPU", 0)))
    return sorted(offers, key=score)


def _outsiders(names: dict[str, str], offers: Iterable[Offer], spec: pb.VmSpec) -> list[Rejection]:
    """Providers that are no candidate, with Placement's reason."""
    picked = {o.agent for o in offers}
    want = f"VCPU:{spec.vcpus}, MEMORY_MB:{spec.memory_mib}"
    traits = _required(spec)
    why = f"not a Placement candidate: no room for {want}" + (f" or lacks one of {', '.join(traits)}" if traits else "")
    return [Rejection(name, why) for name in sorted(names.values()) if name not in picked]


def _try(agent: str, spec: pb.VmSpec, make_client: ClientFactory) -> Rejection | None:
    """CreateVm (started) on `agent`; None when the VM runs there, else why not."""
    try:
        with make_client(agent) as client:
            client.create_vm(spec, start=True)
    except AddressError as e:
        return Rejection(agent, f"bad address (provider name): {e}")
    except Unreachable as e:
        return Rejection(agent, f"unreachable: {e.one_line()}")
    except KvmplatError as e:
        return Rejection(agent, f"refused: {e.code + ': ' if e.code else ''}{e.one_line()}")
    return None


def place_on_placement(
    spec: pb.VmSpec,
    url: str,
    *,
    token: str = "admin",
    timeout: float = 10.0,
    tls: TlsFiles | None = None,
    make_client: ClientFactory | None = None,
) -> Placement:
    """Places and creates (started) the VM through Placement at `url` (see the module docstring). Unreachable when
    Placement cannot be asked; InvalidArgument for a compat that names no level."""
    from kvmplat.agent.registry.placement_http import PlacementError, PlacementHttp, PlacementUnreachable

    query = candidates_query(spec)
    chosen = pb.VmSpec()
    chosen.CopyFrom(spec)
    chosen.uuid = spec.uuid or str(uuidlib.uuid4())
    try:
        http = PlacementHttp(url, token, timeout)
        answer = http.get(query)
        names = {rp["uuid"]: rp["name"] for rp in http.get("/resource_providers")["resource_providers"]}
    except (PlacementError, PlacementUnreachable, ValueError, KeyError, TypeError) as e:
        raise Unreachable(f"cannot ask Placement at {url}: {e}", "UNAVAILABLE", url) from None
    offers = _offers(answer, names)
    rejected = _outsiders(names, offers, spec)
    factory = make_client or (lambda a: Client(a, timeout=timeout, tls=tls))
    for offer in offers:
        refusal = _try(offer.agent, chosen, factory)
        if refusal is None:
            return Placement(offer.agent, tuple(offers), tuple(rejected))
        rejected.append(refusal)
    return Placement(None, tuple(offers), tuple(rejected))
