"""The arch fields (issue 13 item 1) on the wire: old specs keep working in protobuf binary and JSON, an old peer
reading new messages keeps every field it knows, unknown arch numbers are InvalidArgument naming the field.

"Old" messages come from the same .proto with the new fields removed (a separate descriptor pool), so the test
compares against the contract as it was, not a guess of its bytes."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from hosts import PVM, load_host
from kvmplat.agent.errors import InvalidArgument
from kvmplat.agent.platform.model import Arch, PlatformRequest
from kvmplat.agent.platform.proto import effective_to_proto, fill_capabilities, request_from_proto
from kvmplat.agent.platform.resolve import resolve
from kvmplat.v1 import agent_pb2 as pb

NEW_FIELDS = {
    "PlatformSpec": {"arch"},
    "EffectivePlatform": {"arch"},
    "Capabilities": {"arches", "max_level"},
    "CompatLevel": {"above_ceiling", "above_ceiling_features"},
}


def _old_classes() -> dict[str, Any]:
    """Message classes of agent.proto as it was before issue 13 (new fields and the Arch enum removed)."""
    pool = descriptor_pool.DescriptorPool()
    for dep in pb.DESCRIPTOR.dependencies:
        fdp = descriptor_pb2.FileDescriptorProto()
        dep.CopyToProto(fdp)
        pool.Add(fdp)
    fdp = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(fdp)
    fdp.name = "kvmplat/v1/agent_old.proto"
    fdp.package = "kvmplat.v1old"
    fdp.ClearField("service")
    for msg in fdp.message_type:
        keep = [f for f in msg.field if f.name not in NEW_FIELDS.get(msg.name, set())]
        del msg.field[:]
        msg.field.extend(keep)
        for f in msg.field:
            if f.HasField("type_name"):
                f.type_name = f.type_name.replace(".kvmplat.v1.", ".kvmplat.v1old.")
        for nested in msg.nested_type:  # map entries
            for f in nested.field:
                if f.HasField("type_name"):
                    f.type_name = f.type_name.replace(".kvmplat.v1.", ".kvmplat.v1old.")
    keep_enums = [e for e in fdp.enum_type if e.name != "Arch"]
    del fdp.enum_type[:]
    fdp.enum_type.extend(keep_enums)
    pool.Add(fdp)
    names = ("PlatformSpec", "EffectivePlatform", "Capabilities")
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"kvmplat.v1old.{n}")) for n in names}


OLD = _old_classes()


def test_the_old_contract_really_lacks_the_fields() -> None:
    assert "arch" not in OLD["PlatformSpec"].DESCRIPTOR.fields_by_name
    assert "arch" in pb.PlatformSpec.DESCRIPTOR.fields_by_name


def test_an_old_binary_spec_means_the_hosts_own_arch() -> None:
    old = OLD["PlatformSpec"](abi=pb.BARE_METAL, pv=[pb.KVM], compat="x86-64-v1", compat_policy=pb.BEST_EFFORT)
    new = pb.PlatformSpec.FromString(old.SerializeToString())
    request = request_from_proto(new)
    assert request.arch is None and request.bits == 0
    eff = resolve(request, load_host(PVM))
    assert (eff.arch, eff.bits, eff.compat) == (Arch.X86_64, 64, "x86-64-v1")


def test_an_old_json_spec_parses_and_a_new_one_names_the_arch() -> None:
    old_json = '{"abi": "BARE_METAL", "pv": ["KVM"], "bits": 32}'
    assert request_from_proto(json_format.Parse(old_json, pb.PlatformSpec())).arch is None
    json_format.Parse(old_json, OLD["PlatformSpec"]())  # the same text is an old spec too
    spec = json_format.Parse('{"arch": "PPC64", "abi": "BARE_METAL"}', pb.PlatformSpec())
    assert request_from_proto(spec) == PlatformRequest(abi=request_from_proto(spec).abi, arch=Arch.PPC64)
    assert json_format.MessageToDict(spec)["arch"] == "PPC64"


def test_an_old_peer_reads_a_new_effective_platform_and_keeps_the_arch_bytes() -> None:
    eff = effective_to_proto(resolve(PlatformRequest(), load_host(PVM)))
    assert eff.arch == pb.X86_64
    old = OLD["EffectivePlatform"].FromString(eff.SerializeToString())
    assert (old.abi, old.accel, old.bits) == (eff.abi, eff.accel, eff.bits)
    assert pb.EffectivePlatform.FromString(old.SerializeToString()).arch == pb.X86_64  # unknown field carried


def test_an_old_peer_reads_new_capabilities() -> None:
    caps = pb.Capabilities()
    fill_capabilities(caps, load_host(PVM), "x86-64-v2")
    old = OLD["Capabilities"].FromString(caps.SerializeToString())
    assert [lv.name for lv in old.levels] == [lv.name for lv in caps.levels] and old.arch == "x86_64"
    assert (list(caps.arches), caps.max_level) == ([pb.X86_64], "x86-64-v2")


@pytest.mark.parametrize("number", [5, 9, 1000])
def test_an_unknown_arch_number_is_invalid_argument(number: int) -> None:
    with pytest.raises(InvalidArgument) as e:
        request_from_proto(pb.PlatformSpec(arch=number))  # type: ignore[arg-type]
    assert e.value.violations[0][0] == "spec.platform.arch"
