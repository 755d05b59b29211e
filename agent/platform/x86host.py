"""What an x86 host really gives guests, as a frozen JSON-round-trippable value (measured by hostprobe).

`claimed` is what KVM_GET_SUPPORTED_CPUID says; `seen` and `hideable` are what probe guests observed, which on
kvm_pvm differ from the claim (THIS_HOST.md section 4). Resolution and CPUID shaping read only this value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kvmplat.agent.platform.levels import X86_FEATURES, X86_LEVELS

__all__ = ["FeatureTruth", "X86Host"]

Row = tuple[int, ...]


@dataclass(frozen=True)
class FeatureTruth:
    """One level feature: claimed by KVM, seen by a guest with the full table, hidden when cleared in the table."""

    name: str
    level: str
    claimed: bool
    seen: bool
    hideable: bool


@dataclass(frozen=True)
class X86Host:
    """The measured truth of an x86 host (see module docstring); `source` says how it was obtained."""

    accel: str
    supported: tuple[Row, ...]
    features: tuple[FeatureTruth, ...]
    hv_bit_hideable: bool
    kvm_leaves_hideable: bool
    hyperv: bool = False
    tsc_deadline: bool = False  # KVM_CAP_TSC_DEADLINE_TIMER: the LAPIC has it, KVM does not list its CPUID bit
    hv_supported: tuple[Row, ...] = ()
    kernel_release: str = ""
    cpu_model: str = ""
    probe_ms: float = 0.0
    source: str = "probe guests"
    arch: str = field(default="x86_64")

    def feature(self, name: str) -> FeatureTruth:
        """The truth about feature `name` (KeyError when it is not a level feature)."""
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def missing(self, level: str) -> list[FeatureTruth]:
        """Features of `level` and below that a guest does not see."""
        upto = X86_LEVELS[: X86_LEVELS.index(level) + 1]
        return [f for f in self.features if f.level in upto and not f.seen]

    def unhideable(self, level: str) -> list[FeatureTruth]:
        """Features above `level` that a guest sees and a CPUID table cannot hide."""
        above = X86_LEVELS[X86_LEVELS.index(level) + 1 :]
        return [f for f in self.features if f.level in above and f.seen and not f.hideable]

    def supported_kvm_features(self) -> int:
        """EAX of KVM's 0x4000_0001 leaf in the supported list (0 when KVM lists none)."""
        return next((r[3] for r in self.supported if r[0] == 0x40000001), 0)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (rows as lists)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> X86Host:
        """The inverse of to_json; ValueError/KeyError/TypeError on malformed data."""
        feats = tuple(FeatureTruth(**f) for f in data["features"])
        known = {f.name for f in X86_FEATURES}
        if {f.name for f in feats} != known:
            raise ValueError("host truth does not cover exactly the level features")
        args = {k: v for k, v in data.items() if k not in ("features", "supported", "hv_supported")}
        return cls(
            features=feats,
            supported=tuple(tuple(int(x) for x in r) for r in data["supported"]),
            hv_supported=tuple(tuple(int(x) for x in r) for r in data.get("hv_supported", ())),
            **args,
        )
