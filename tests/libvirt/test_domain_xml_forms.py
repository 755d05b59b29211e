"""Small libvirt forms the golden files do not pin one by one: switches that are off, cpu modes, driver types."""

from __future__ import annotations

import pytest
from kvmplat.client.libvirt.domain_xml import translate
from kvmplat.v1 import agent_pb2 as pb

OS = "<os><type arch='x86_64' machine='pc'>hvm</type><kernel>/k</kernel></os>"


def x86(body: str, kind: str = "kvm") -> pb.VmSpec:
    """The spec of a small x86 domain with `body` added."""
    return translate(f"<domain type='{kind}'><name>f</name><memory>65536</memory>{OS}{body}</domain>").spec


def test_kvm_hidden_off_keeps_kvm() -> None:
    assert list(x86("<features><kvm><hidden state='off'/></kvm></features>").platform.pv) == [pb.KVM]


def test_hyperv_with_everything_off_is_not_hyperv() -> None:
    xml = "<features><hyperv mode='custom'><relaxed state='off'/><vapic state='off'/></hyperv></features>"
    assert list(x86(xml).platform.pv) == [pb.KVM]


def test_hyperv_without_kvm() -> None:
    xml = "<features><hyperv><relaxed state='on'/></hyperv><kvm><hidden state='on'/></kvm></features>"
    assert list(x86(xml).platform.pv) == [pb.HYPERV]


@pytest.mark.parametrize("mode", ["host-passthrough", "maximum", "host-model"])
def test_host_cpu_modes_set_no_level(mode: str) -> None:
    spec = x86(f"<cpu mode='{mode}'/>")
    assert spec.platform.compat == "" and spec.platform.compat_policy == pb.COMPAT_POLICY_UNSPECIFIED


@pytest.mark.parametrize(
    ("model", "level"),
    [
        ("Skylake-Client-noTSX-IBRS", "x86-64-v3"),
        ("Icelake-Server-v7", "x86-64-v4"),
        ("Cascadelake-Server-noAVX512", "x86-64-v3"),
        ("Westmere-IBRS", "x86-64-v2"),
        ("kvm64", "x86-64-v1"),
        ("X86-64-V4", "x86-64-v4"),
    ],
)
def test_named_x86_models_map_to_levels(model: str, level: str) -> None:
    spec = x86(f"<cpu mode='custom' match='exact'><model fallback='allow'>{model}</model></cpu>")
    assert (spec.platform.compat, spec.platform.compat_policy) == (level, pb.BEST_EFFORT)


def test_test_driver_domains_are_read() -> None:
    t = translate(f"<domain type='test'><name>f</name><memory>65536</memory>{OS}</domain>")
    assert t.spec.name == "f" and any("test driver" in w for w in t.warnings)


def test_currentmemory_equal_to_memory_is_quiet() -> None:
    t = translate(
        f"<domain type='kvm'><name>f</name><memory>65536</memory><currentMemory>65536</currentMemory>{OS}</domain>"
    )
    assert not any("currentMemory" in w for w in t.warnings)


@pytest.mark.parametrize(
    ("model", "compat"), [("power7+", "power7"), ("POWER10", "power10"), ("power9_v2.2", "power9")]
)
def test_power_model_spellings(model: str, compat: str) -> None:
    xml = (
        "<domain type='kvm'><name>p</name><memory>65536</memory>"
        "<os><type arch='ppc64le' machine='pseries-8.2'>hvm</type></os>"
        f"<cpu mode='host-model'><model>{model}</model></cpu></domain>"
    )
    assert translate(xml).spec.platform.compat == compat


def test_warnings_never_span_lines() -> None:
    t = translate(
        f"<domain type='qemu'><name>w</name><memory>100</memory>{OS}<vcpu current='1' cpuset='0'>2</vcpu>"
        "<devices><disk/><disk/><graphics/></devices><on_reboot>destroy</on_reboot></domain>"
    )
    assert t.warnings and all("\n" not in w for w in t.warnings)
