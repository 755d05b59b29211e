"""This agent as an OpenStack Placement resource provider, and its VMs' allocations (issue 15).

With `--placement-url`, the agent at start:
  1. keeps its provider's UUID in the state directory (`placement-provider-uuid`) and names the provider after its
     `--advertise` address (the name is how `kvmplat place --placement` finds the agent: no other registry);
  2. sets its inventory: VCPU and MEMORY_MB totals = the agent's limits, reserved and allocation ratio from flags;
  3. sets its traits from the measured capabilities (kvmplat.agent.platform.traits), creating CUSTOM_ ones first;
  4. reconciles allocations with the VMs it re-adopted: an allocation on its provider for a consumer it holds no VM
     for is deleted (a claim whose VM never got recorded), a VM without its allocation is claimed again.
Provider updates carry the provider generation; a 409 placement.concurrent_update re-reads it and retries.

Then every CreateVm claims (consumer = the VM's UUID, consumer_generation null: a consumer that exists already is
refused) before its runner starts, and DestroyVm releases it. Only kvmplat agents allocate on kvmplat providers,
so an agent may delete any allocation on its own provider that it holds no VM for.

Placement calls block, so they run on a small thread pool of their own; the event loop only awaits them.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import logging
import os
import uuid as uuidlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kvmplat.agent.errors import AlreadyExists, ResourceExhausted, Unavailable
from kvmplat.agent.registry.placement_http import CONCURRENT_UPDATE, PlacementError, PlacementHttp, PlacementUnreachable

__all__ = ["Claims", "PlacementConfig", "Provider", "add_flags", "config_from_args", "consumer_of"]

log = logging.getLogger("kvmplat.agent")
T = TypeVar("T")
UUID_FILE = "placement-provider-uuid"
GENERATION_RETRIES = 20
PROJECT, USER = "kvmplat", "kvmplat-agent"  # Placement requires both on every allocation
Resources = dict[str, int]


def add_flags(p: argparse.ArgumentParser) -> None:
    """--placement-url, --placement-token, --advertise, reserved and allocation ratio flags."""
    g = p.add_argument_group("OpenStack Placement (README: Scheduling on Placement)")
    g.add_argument("--placement-url", metavar="URL", help="register as a resource provider there; claim every VM")
    g.add_argument(
        "--placement-token",
        metavar="TOKEN",
        help="Keystone token for Placement (default $KVMPLAT_PLACEMENT_TOKEN, else 'admin' for noauth2)",
    )
    g.add_argument("--advertise", metavar="ADDRESS", help="the address clients reach this agent at (provider name)")
    g.add_argument("--reserved-vcpus", type=int, default=0, metavar="N", help="VCPU kept back from Placement")
    g.add_argument("--reserved-memory-mib", type=int, default=0, metavar="MIB", help="MEMORY_MB kept back")
    g.add_argument("--vcpu-allocation-ratio", type=float, default=1.0, metavar="R", help="VCPU overcommit (1.0)")
    g.add_argument("--memory-allocation-ratio", type=float, default=1.0, metavar="R", help="MEMORY_MB overcommit")


@dataclass(frozen=True)
class PlacementConfig:
    """Where Placement is, how this agent is named there, and how its inventory is shaped."""

    url: str
    token: str
    advertise: str
    reserved: Mapping[str, int]
    ratio: Mapping[str, float]

    def capacity(self, rc: str, total: int) -> int:
        """What Placement lets consumers allocate of `rc`: (total - reserved) x allocation ratio."""
        return int((total - self.reserved[rc]) * self.ratio[rc])

    def inventory(self, totals: Mapping[str, int], max_units: Mapping[str, int]) -> dict[str, Any]:
        """The provider's inventories document."""
        return {
            rc: {
                "total": total,
                "reserved": self.reserved[rc],
                "allocation_ratio": self.ratio[rc],
                "min_unit": 1,
                "max_unit": max(1, min(max_units[rc], total)),
                "step_size": 1,
            }
            for rc, total in totals.items()
        }


def config_from_args(args: argparse.Namespace) -> PlacementConfig | None:
    """The Placement settings of the agent's flags (None without --placement-url); ValueError for bad ones."""
    if not args.placement_url:
        return None
    if not args.advertise:
        raise ValueError("--placement-url needs --advertise ADDRESS: the address `kvmplat place` will reach")
    if min(args.reserved_vcpus, args.reserved_memory_mib) < 0:
        raise ValueError("--reserved-vcpus and --reserved-memory-mib must be 0 or more")
    if not (args.vcpu_allocation_ratio > 0 and args.memory_allocation_ratio > 0):
        raise ValueError("allocation ratios must be positive")
    token = args.placement_token or os.environ.get("KVMPLAT_PLACEMENT_TOKEN") or "admin"
    return PlacementConfig(
        url=args.placement_url,
        token=token,
        advertise=args.advertise,
        reserved={"VCPU": args.reserved_vcpus, "MEMORY_MB": args.reserved_memory_mib},
        ratio={"VCPU": args.vcpu_allocation_ratio, "MEMORY_MB": args.memory_allocation_ratio},
    )


def consumer_of(spec_uuid: str, name: str, created: float) -> str:
    """A VM's Placement consumer: its UUID; for records from before VMs had one, a UUID derived from name+time."""
    return spec_uuid or str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"kvmplat-vm:{name}:{created!r}"))


def provider_uuid(state_dir: str) -> str:
    """This agent's provider UUID, made once and kept in the state directory."""
    path = Path(state_dir) / UUID_FILE
    try:
        return str(uuidlib.UUID(path.read_text().strip()))
    except FileNotFoundError:
        pass
    new = str(uuidlib.uuid4())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(new + "\n")
    os.replace(tmp, path)
    return new


class Provider:
    """This agent's resource provider (blocking calls: run them from threads)."""

    def __init__(self, http: PlacementHttp, uuid: str, name: str) -> None:
        self.http, self.uuid, self.name = http, uuid, name
        self.path = f"/resource_providers/{uuid}"

    def ensure(self) -> None:
        """Creates the provider (or renames it to this agent's address)."""
        try:
            rp = self.http.get(self.path)
        except PlacementError as e:
            if e.status != 404:
                raise
            try:
                self.http.request("POST", "/resource_providers", {"uuid": self.uuid, "name": self.name})
            except PlacementError as e:
                if e.status == 409:  # the name is another provider's
                    e.args = (
                        f"{e}: another provider is named {self.name!r} (a second agent advertising that address, or "
                        f"this agent's state dir was replaced: delete the old provider)",
                    )
                raise
            return
        if rp["name"] != self.name:
            self._with_generation(lambda g: self.http.put(self.path, {"name": self.name}))

    def _with_generation(self, change: Callable[[int], T]) -> T:
        """`change(generation)`, retried with a fresh generation while Placement reports a concurrent update."""
        for _ in range(GENERATION_RETRIES):
            generation = int(self.http.get(self.path)["generation"])
            try:
                return change(generation)
            except PlacementError as e:
                if e.status != 409 or e.code != CONCURRENT_UPDATE:
                    raise
                log.info("Placement: provider %s changed meanwhile (%s); retrying", self.uuid, e.detail)
        raise PlacementError("PUT", self.path, 409, CONCURRENT_UPDATE, f"{GENERATION_RETRIES} conflicts in a row")

    def _put_generation(self, what: str, value: Any) -> None:
        """PUT {path}/{what} {"resource_provider_generation": g, what: value}, retried on conflicts."""

        def put(generation: int) -> Any:
            return self.http.put(f"{self.path}/{what}", {"resource_provider_generation": generation, what: value})

        self._with_generation(put)

    def set_inventory(self, inventories: dict[str, Any]) -> None:
        """Replaces the provider's inventories."""
        self._put_generation("inventories", inventories)

    def create_traits(self, traits: set[str]) -> None:
        """Creates the CUSTOM_ traits among `traits` (standard ones exist already)."""
        for t in sorted(traits):
            if t.startswith("CUSTOM_"):
                self.http.put(f"/traits/{t}")

    def set_traits(self, traits: set[str]) -> None:
        """Replaces the provider's traits (their CUSTOM_ ones created by create_traits)."""
        self._put_generation("traits", sorted(traits))

    def claim(self, consumer: str, resources: Resources, consumer_generation: int | None = None) -> None:
        """Allocates `resources` on this provider to `consumer` (a new consumer unless its generation is given)."""
        self._put_consumer(consumer, {self.uuid: {"resources": resources}}, consumer_generation)

    def _put_consumer(
        self,
        consumer: str,
        allocs: dict[str, Any],
        generation: int | None,
        owner: tuple[str, str] = (PROJECT, USER),
    ) -> None:
        body = {
            "allocations": allocs,
            "project_id": owner[0],
            "user_id": owner[1],
            "consumer_generation": generation,
            "consumer_type": "INSTANCE",
        }
        self.http.put(f"/allocations/{consumer}", body)

    def _change_consumer(self, consumer: str, change: Callable[[dict[str, Any]], bool]) -> None:
        """Read-modify-write of the consumer's allocations (`change` edits them in place, False: nothing to write),
        retried while the consumer's generation moves under us. An empty result removes the consumer."""
        for _ in range(GENERATION_RETRIES):
            data = self.http.get(f"/allocations/{consumer}")
            allocs = {rp: {"resources": a["resources"]} for rp, a in data.get("allocations", {}).items()}
            if not change(allocs):
                return
            owner = (str(data.get("project_id", PROJECT)), str(data.get("user_id", USER)))
            try:
                return self._put_consumer(consumer, allocs, data.get("consumer_generation"), owner)
            except PlacementError as e:
                if e.status != 409 or e.code != CONCURRENT_UPDATE:
                    raise
        raise PlacementError("PUT", f"/allocations/{consumer}", 409, CONCURRENT_UPDATE, "too many conflicts in a row")

    def claim_beside(self, consumer: str, resources: Resources) -> None:
        """Adds this provider's share to what the consumer holds elsewhere (a VM arriving from another agent: for a
        while both ends hold it, and the source gives its share back once the VM left it)."""

        def add(allocs: dict[str, Any]) -> bool:
            allocs[self.uuid] = {"resources": resources}
            return True

        self._change_consumer(consumer, add)

    def release(self, consumer: str) -> None:
        """Removes this provider's share of the consumer's allocations; what it holds elsewhere stays."""
        self._change_consumer(consumer, lambda allocs: allocs.pop(self.uuid, None) is not None)

    def allocations(self) -> dict[str, Resources]:
        """Consumer -> resources allocated on this provider."""
        data = self.http.get(f"{self.path}/allocations")["allocations"]
        return {c: {rc: int(n) for rc, n in a["resources"].items()} for c, a in data.items()}

    def shortage(self, resources: Resources) -> str:
        """What is short for `resources` ("MEMORY_MB: 16 asked, 0 of 64 left"), from inventory and usages."""
        inv = self.http.get(f"{self.path}/inventories")["inventories"]
        used = self.http.get(f"{self.path}/usages")["usages"]
        short = []
        for rc, n in sorted(resources.items()):
            if rc not in inv:
                short.append(f"{rc}: {n} asked, none offered")
                continue
            cap = int((inv[rc]["total"] - inv[rc]["reserved"]) * inv[rc]["allocation_ratio"])
            left = cap - int(used.get(rc, 0))
            if n > left or n > inv[rc]["max_unit"]:
                short.append(f"{rc}: {n} asked, {max(left, 0)} of {cap} left (at most {inv[rc]['max_unit']} per VM)")
        return "; ".join(short)

    def reconcile(self, held: Mapping[str, Resources]) -> tuple[list[str], list[str]]:
        """Makes the allocations on this provider exactly `held` (consumer -> resources); returns (released,
        claimed). A VM that cannot be claimed again (no room any more) is logged and left running."""
        have = self.allocations()
        released = sorted(set(have) - set(held))
        for consumer in released:
            self.release(consumer)
        claimed = []
        for consumer, res in sorted(held.items()):
            if have.get(consumer) == res:
                continue
            generation = self.http.get(f"/allocations/{consumer}").get("consumer_generation")
            try:
                self.claim(consumer, res, generation)
                claimed.append(consumer)
            except PlacementError as e:
                log.error("Placement: cannot claim %s for re-adopted VM %s: %s", res, consumer, e)
        return released, claimed


class Claims:
    """The controller's side: claims and releases awaited on Placement's own threads, errors in the agent tree."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.pool = cf.ThreadPoolExecutor(max_workers=4, thread_name_prefix="kvmplat-placement")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def claim(self, consumer: str, vm: str, resources: Resources, beside: bool = False) -> None:
        """Claims `resources` for VM `vm` (`beside` what the consumer holds elsewhere, for an arriving VM):
        ResourceExhausted naming what is short, AlreadyExists for a UUID in use."""
        how = self.provider.claim_beside if beside else self.provider.claim
        done = asyncio.get_running_loop().run_in_executor(self.pool, how, consumer, resources)
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:  # the caller went away; a claim that still lands is given back
            done.add_done_callback(lambda f: f.cancelled() or f.exception() or self.pool.submit(self._drop, consumer))
            raise
        except PlacementUnreachable as e:
            raise Unavailable(f"cannot claim resources for VM {vm!r}: {e}") from None
        except PlacementError as e:
            if e.status == 409 and e.code == CONCURRENT_UPDATE:
                raise AlreadyExists(f"spec.uuid {consumer} already holds allocations in Placement") from None
            if e.status != 409:
                raise Unavailable(f"cannot claim resources for VM {vm!r}: {e}") from None
            short = await self._shortage(resources)
            raise ResourceExhausted(f"Placement has no room for VM {vm!r} here: {short or e.detail}") from None

    async def _shortage(self, resources: Resources) -> str:
        try:
            return await self._run(self.provider.shortage, resources)
        except (PlacementError, PlacementUnreachable, KeyError, TypeError):
            return ""

    async def release(self, consumer: str, vm: str) -> None:
        """Releases the VM's claim; a failure is logged (the next start's reconciliation releases it)."""
        try:
            await self._run(self.provider.release, consumer)
        except (PlacementError, PlacementUnreachable) as e:
            log.error("Placement: could not release VM %s (consumer %s): %s", vm, consumer, e)

    async def publish_traits(self, traits: set[str]) -> None:
        """Replaces the provider's traits (after the host truth was measured again); a failure is logged."""
        try:
            await self._run(self.provider.create_traits, traits)
            await self._run(self.provider.set_traits, traits)
        except (PlacementError, PlacementUnreachable) as e:
            log.error("Placement: could not update the traits of provider %s: %s", self.provider.uuid, e)

    def _drop(self, consumer: str) -> None:
        try:
            self.provider.release(consumer)
        except (PlacementError, PlacementUnreachable) as e:
            log.error("Placement: could not give back the claim of cancelled consumer %s: %s", consumer, e)

    def close(self) -> None:
        """Stops the threads."""
        self.pool.shutdown(wait=True)
