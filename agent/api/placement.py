"""Joining OpenStack Placement at agent start (`--placement-url`): provider, inventory, traits, reconciliation.

The registry side (kvmplat.agent.registry.placement) says what each step does; this module gathers what the agent
knows at start (its limits, its measured capabilities, the VMs it re-adopted) and hands the controller its Claims.
"""

from __future__ import annotations

import asyncio
import logging

from kvmplat.agent.errors import Unavailable
from kvmplat.agent.platform.traits import traits_from_caps
from kvmplat.agent.registry.controller import Controller
from kvmplat.agent.registry.placement import (
    Claims,
    PlacementConfig,
    Provider,
    Resources,
    consumer_of,
    provider_uuid,
)
from kvmplat.agent.registry.placement_http import PlacementError, PlacementHttp, PlacementUnreachable
from kvmplat.v1 import agent_pb2 as pb

__all__ = ["join", "published_traits"]

log = logging.getLogger("kvmplat.agent")


def published_traits(controller: Controller) -> set[str]:
    """The traits this host's measured capabilities justify."""
    caps = pb.Capabilities()
    controller.platforms.fill_capabilities(caps)
    return traits_from_caps(caps)


def _held(controller: Controller) -> dict[str, Resources]:
    """Consumer -> resources of every VM the agent holds (a claim lasts until the VM is destroyed)."""
    return {
        consumer_of(r.spec.uuid, r.name, r.created): {"VCPU": r.spec.vcpus, "MEMORY_MB": r.spec.memory_mib}
        for r in controller.vms.values()
    }


def _register(provider: Provider, cfg: PlacementConfig, controller: Controller, traits: set[str]) -> None:
    """The blocking part: provider, inventory, traits, then allocations = the VMs held."""
    totals = {"VCPU": controller.total_vcpus, "MEMORY_MB": controller.total_memory_mib}
    per_vm = {"VCPU": controller.limits.max_vcpus, "MEMORY_MB": controller.limits.max_memory_mib}
    provider.create_traits(traits)  # before the provider shows up, so it shows its traits as early as possible
    provider.ensure()
    provider.set_traits(traits)
    provider.set_inventory(cfg.inventory(totals, per_vm))
    released, claimed = provider.reconcile(_held(controller))
    for consumer in released:
        log.warning("Placement: released allocation of consumer %s (no VM of this agent has it)", consumer)
    for consumer in claimed:
        log.warning("Placement: claimed again for re-adopted VM consumer %s (its allocation was missing)", consumer)


async def join(controller: Controller, cfg: PlacementConfig, state_dir: str) -> Claims:
    """Registers this agent with Placement and gives the controller its Claims; Unavailable when that fails."""
    provider = Provider(PlacementHttp(cfg.url, cfg.token), provider_uuid(state_dir), cfg.advertise)
    traits = published_traits(controller)
    try:
        await asyncio.to_thread(_register, provider, cfg, controller, traits)
    except (PlacementError, PlacementUnreachable, KeyError, TypeError) as e:
        raise Unavailable(f"cannot register with Placement at {cfg.url}: {e}") from None
    # Placement's capacity is the agent's own limit too, so both views of what is left agree
    controller.total_vcpus = cfg.capacity("VCPU", controller.total_vcpus)
    controller.total_memory_mib = cfg.capacity("MEMORY_MB", controller.total_memory_mib)
    claims = Claims(provider)
    controller.claims = claims
    log.info(
        "Placement: resource provider %s (%s) at %s with %d traits: %s",
        provider.uuid,
        provider.name,
        cfg.url,
        len(traits),
        " ".join(sorted(traits)),
    )
    return claims
