"""The agent's view of this host's platforms: capabilities and spec.platform -> (effective platform, CPUID table).

Thin glue between the controller and kvmplat.agent.platform (model, host truth, resolution, application).
"""

from __future__ import annotations

import os
import platform as _platform
from typing import Any

from kvmplat.agent.errors import InvalidArgument, PlatformRefused
from kvmplat.agent.ioctls import Cap
from kvmplat.agent.kvm import Kvm
from kvmplat.v1 import agent_pb2 as pb

__all__ = ["Platforms", "host_accel"]

CpuidRows = list[list[int]]


def host_accel() -> str:
    """The x86 accelerator loaded: kvm_pvm, kvm-intel or kvm-amd."""
    for module, name in (("kvm_pvm", "kvm_pvm"), ("kvm_intel", "kvm-intel"), ("kvm_amd", "kvm-amd")):
        if os.path.isdir(f"/sys/module/{module}"):
            return name
    return "kvm"


class Platforms:
    """Capabilities and platform resolution of this host."""

    def __init__(self, kvm: Kvm) -> None:
        self.arch = _platform.machine()
        self.api_version = kvm.get_api_version()
        self.caps = {c.name.lower(): kvm.check_extension(c) for c in Cap}
        self.accel = host_accel()

    def fill_capabilities(self, caps: pb.Capabilities) -> None:
        """Sets the platform fields of `caps`."""
        caps.arch = self.arch
        caps.kvm_api_version = self.api_version
        caps.recommended_vcpus = self.caps["nr_vcpus"]
        caps.abis.append(pb.BARE_METAL)
        caps.pv.append(pb.KVM)
        caps.accels.append(self.accel)
        caps.accel_default = self.accel
        caps.kvm_caps.update(self.caps)

    def resolve(self, spec: pb.PlatformSpec) -> tuple[pb.EffectivePlatform, CpuidRows | None]:
        """The effective platform of `spec` on this host and the CPUID table that gives it, or a refusal."""
        abi = spec.abi or pb.BARE_METAL
        if abi not in pb.Abi.values():
            raise InvalidArgument.field("spec.platform.abi", f"unknown abi value {abi}")
        if abi != pb.BARE_METAL:
            raise PlatformRefused("abi", pb.Abi.Name(abi), f"this host is {self.arch}", "BARE_METAL")
        for pv in spec.pv:
            if pv != pb.KVM:
                name = pb.Pv.Name(pv) if pv in pb.Pv.values() else str(pv)
                raise PlatformRefused("pv", name, "KVM on this host has no Hyper-V emulation", "KVM")
        eff = pb.EffectivePlatform(abi=abi, pv=list(spec.pv), bits=spec.bits or 64, accel=self.accel)
        return eff, None

    def describe(self) -> dict[str, Any]:
        """A summary for logs."""
        return {"arch": self.arch, "accel": self.accel}
