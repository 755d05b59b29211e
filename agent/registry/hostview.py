"""The agent's view of this host's platforms: glue between the controller and kvmplat.agent.platform.

At start-up the host's truth is learnt by probe guests (or read from the cache in the state directory); every
request is resolved against it, and the effective platform's CPUID table goes to the runner.
"""

from __future__ import annotations

import os
from typing import Any

from kvmplat.agent.kvm.fds import Kvm
from kvmplat.agent.kvm.ioctls import Cap
from kvmplat.agent.platform.hostprobe import load_or_probe
from kvmplat.agent.platform.proto import effective_to_proto, fill_capabilities, request_from_proto
from kvmplat.agent.platform.resolve import resolve
from kvmplat.agent.platform.x86 import cpuid_table
from kvmplat.agent.platform.x86host import X86Host
from kvmplat.v1 import agent_pb2 as pb

__all__ = ["Platforms"]

CpuidRows = list[list[int]]


class Platforms:
    """Capabilities and platform resolution of this host."""

    def __init__(self, kvm: Kvm, state_dir: str, max_level: str = "") -> None:
        self.max_level = max_level  # the agent's ceiling (--max-level), canonical; "" for none
        self.cache_path = os.path.join(state_dir, "host-truth.json")
        self.api_version = kvm.get_api_version()
        self.caps = {c.name.lower(): kvm.check_extension(c) for c in Cap}
        self.host: X86Host = load_or_probe(kvm, self.cache_path)

    def refresh(self) -> None:
        """Runs the probe guests again (GetCapabilities with refresh)."""
        with Kvm() as kvm:
            self.host = load_or_probe(kvm, self.cache_path, refresh=True)

    def fill_capabilities(self, caps: pb.Capabilities) -> None:
        """Sets the platform fields of `caps` from the host's truth and KVM's claims."""
        fill_capabilities(caps, self.host, self.max_level)
        caps.kvm_api_version = self.api_version
        caps.recommended_vcpus = self.caps["nr_vcpus"]
        caps.kvm_caps.update(self.caps)
        caps.host_truth_source = f"{self.host.source} ({self.host.probe_ms:.0f} ms of probing)"

    def resolve(self, spec: pb.PlatformSpec) -> tuple[pb.EffectivePlatform, CpuidRows]:
        """The effective platform of `spec` on this host and the CPUID table that gives it, or a refusal."""
        effective = resolve(request_from_proto(spec), self.host, self.max_level)
        rows = cpuid_table(effective, self.host)
        return effective_to_proto(effective), [list(r) for r in rows]

    def describe(self) -> dict[str, Any]:
        """A summary for logs."""
        summary = {"arch": self.host.arch, "accel": self.host.accel, "host truth": self.host.source}
        return {**summary, "max level": self.max_level} if self.max_level else summary
