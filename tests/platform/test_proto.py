"""Platform conversions at the gRPC edge (pure: protobuf only)."""

from __future__ import annotations

import pytest
from hosts import HARDWARE, PVM, load_host
from kvmplat.agent.errors import InvalidArgument
from kvmplat.agent.platform.model import Abi, Accel, CompatPolicy, EffectivePlatform, PlatformRequest, Pv
from kvmplat.agent.platform.proto import effective_to_proto, fill_capabilities, request_from_proto
from kvmplat.v1 import agent_pb2 as pb


def test_defaults_map_to_the_model_defaults() -> None:
    assert request_from_proto(pb.PlatformSpec()) == PlatformRequest()


def test_every_field_converts() -> None:
    spec = pb.PlatformSpec(
        abi=pb.SPAPR,
        pv=[pb.KVM, pb.HYPERV, pb.KVM],
        compat=" Power9 ",
        compat_policy=pb.BEST_EFFORT,
        bits=32,
        accel=pb.PR,
    )
    want = PlatformRequest(Abi.SPAPR, frozenset({Pv.KVM, Pv.HYPERV}), "Power9", CompatPolicy.BEST_EFFORT, 32, Accel.PR)
    assert request_from_proto(spec) == want


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (pb.PlatformSpec(abi=9), "spec.platform.abi"),
        (pb.PlatformSpec(pv=[pb.KVM, 7]), "spec.platform.pv"),
        (pb.PlatformSpec(pv=[0]), "spec.platform.pv"),
        (pb.PlatformSpec(compat_policy=3), "spec.platform.compat_policy"),
        (pb.PlatformSpec(accel=4), "spec.platform.accel"),
        (pb.PlatformSpec(bits=16), "spec.platform.bits"),
        (pb.PlatformSpec(bits=128), "spec.platform.bits"),
    ],
)
def test_unknown_values_are_invalid_argument_naming_the_field(spec: pb.PlatformSpec, field: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        request_from_proto(spec)
    assert e.value.violations[0][0] == field


def test_fields_from_a_newer_client_are_refused() -> None:
    spec = pb.PlatformSpec()
    spec.MergeFromString(bytes([0xA0, 0x06, 0x01]))  # field 100 (reserved range), varint 1
    with pytest.raises(InvalidArgument, match="100"):
        request_from_proto(spec)


def test_effective_round_trips_through_the_message() -> None:
    e = EffectivePlatform(
        Abi.BARE_METAL, (Pv.KVM,), "x86-64-v2", 2, CompatPolicy.BEST_EFFORT, 64, "kvm_pvm", False, ("n",), ("fma",)
    )
    m = effective_to_proto(e)
    assert (m.abi, list(m.pv), m.compat, m.compat_raw, m.compat_policy) == (pb.BARE_METAL, [pb.KVM], "x86-64-v2", 2, 2)
    assert (m.bits, m.accel, m.cross_arch, list(m.notes), list(m.visible_above_level)) == (
        64,
        "kvm_pvm",
        False,
        ["n"],
        ["fma"],
    )


def test_capabilities_of_the_kvm_pvm_host() -> None:
    caps = pb.Capabilities()
    fill_capabilities(caps, load_host(PVM))
    assert list(caps.abis) == [pb.BARE_METAL] and list(caps.pv) == [pb.KVM]
    levels = {lv.name: lv for lv in caps.levels}
    assert [lv.raw for lv in caps.levels] == [1, 2, 3, 4]
    assert not any(lv.strict for lv in caps.levels)
    assert [n for n, lv in levels.items() if lv.best_effort] == ["x86-64-v1", "x86-64-v2"]
    assert list(levels["x86-64-v3"].missing) == ["abm"] and "fma" in levels["x86-64-v2"].unhideable
    assert (caps.accel_default, list(caps.accels)) == ("kvm_pvm", ["kvm_pvm"])
    sse3 = next(f for f in caps.cpu_features if f.name == "sse3")
    assert (sse3.level, sse3.claimed, sse3.seen, sse3.hideable) == ("x86-64-v2", False, True, False)
    assert caps.hv_bit_hideable and caps.kvm_leaves_hideable


def test_capabilities_of_a_hardware_host_admit_every_level_strictly() -> None:
    caps = pb.Capabilities()
    fill_capabilities(caps, load_host(HARDWARE))
    assert all(lv.strict and lv.best_effort for lv in caps.levels)
    assert list(caps.pv) == [pb.KVM, pb.HYPERV]
