"""Spec files: protobuf JSON of VmSpec with friendly enum values; unknown fields and values are named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format
from hypothesis import given
from hypothesis import strategies as st
from kvmplat.client.specfile import SpecError, canonical_enum_name, enum_prefix, load_spec, normalise, parse_spec
from kvmplat.v1 import agent_pb2 as pb

ENUMS = [pb.Abi.DESCRIPTOR, pb.Pv.DESCRIPTOR, pb.CompatPolicy.DESCRIPTOR, pb.Accel.DESCRIPTOR]


def test_prefixes_follow_protobuf_style() -> None:
    assert [enum_prefix(e) for e in ENUMS] == ["ABI_", "PV_", "COMPAT_POLICY_", "ACCEL_"]


@pytest.mark.parametrize(
    ("written", "field", "value"),
    [
        ("BARE_METAL", "abi", pb.BARE_METAL),
        ("ABI_BARE_METAL", "abi", pb.BARE_METAL),
        ("bare-metal", "abi", pb.BARE_METAL),
        ("unspecified", "abi", pb.ABI_UNSPECIFIED),
        ("BEST_EFFORT", "compat_policy", pb.BEST_EFFORT),
        ("compat_policy_strict", "compat_policy", pb.STRICT),
        ("hv", "accel", pb.HV),
    ],
)
def test_enum_spellings(written: str, field: str, value: int) -> None:
    spec = parse_spec(json.dumps({"name": "a", "platform": {field: written}}))
    assert getattr(spec.platform, field) == value


def test_repeated_enums_and_both_field_casings() -> None:
    text = '{"name":"a","vcpus":2,"memoryMib":16,"boot":{"builtin":"probe"},"platform":{"pv":["kvm","PV_HYPERV"]}}'
    spec = parse_spec(text)
    assert list(spec.platform.pv) == [pb.KVM, pb.HYPERV]
    assert spec.memory_mib == 16 and spec.boot.builtin == "probe"
    assert parse_spec('{"memory_mib": 16}') == pb.VmSpec(memory_mib=16)


def test_unknown_field_is_named_with_its_path() -> None:
    with pytest.raises(SpecError, match=r"f\.json: unknown field 'platform\.abbi'"):
        parse_spec('{"platform": {"abbi": "BARE_METAL"}}', "f.json")


def test_unknown_enum_value_lists_the_choices() -> None:
    with pytest.raises(SpecError, match=r"platform\.pv\[1\]: unknown Pv value 'XEN' \(one of: KVM, HYPERV\)"):
        parse_spec('{"platform": {"pv": ["KVM", "XEN"]}}')


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{", "not JSON"),
        ("[]", "JSON object"),
        ('{"vcpus": "two"}', "vcpus"),
        ('{"boot": {"builtin": "probe", "kernel": "/k"}}', "oneof"),
    ],
)
def test_malformed_specs(text: str, needle: str) -> None:
    with pytest.raises(SpecError, match=needle):
        parse_spec(text)


def test_load_spec_reads_files(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"name": "a", "vcpus": 1}')
    assert load_spec(path) == pb.VmSpec(name="a", vcpus=1)
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path / "missing.json")


def _spelling(name: str, prefix: str) -> st.SearchStrategy[str]:
    """Any casing of `name`, with or without `prefix` (unless the name carries it already)."""
    bare = name.removeprefix(prefix)
    forms = st.sampled_from([bare, prefix + bare, bare.replace("_", "-")])
    return st.tuples(forms, st.lists(st.booleans(), min_size=40, max_size=40)).map(
        lambda t: "".join(c.lower() if flip else c for c, flip in zip(t[0], t[1], strict=False))
    )


@st.composite
def enum_spellings(draw: st.DrawFn) -> tuple[object, str, str]:
    """(enum descriptor, a canonical value name, some spelling of it)."""
    enum = draw(st.sampled_from(ENUMS))
    name = draw(st.sampled_from([v.name for v in enum.values]))
    return enum, name, draw(_spelling(name, enum_prefix(enum)))


@given(enum_spellings())
def test_every_spelling_of_every_value_is_understood(case: tuple[object, str, str]) -> None:
    enum, name, written = case
    assert canonical_enum_name(enum, written) == name  # type: ignore[arg-type]


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_-xyz", min_size=1, max_size=12))
def test_nonsense_is_never_silently_mapped(text: str) -> None:
    for enum in ENUMS:
        name = canonical_enum_name(enum, text)
        if name is not None:
            prefix = enum_prefix(enum)
            bare = text.upper().replace("-", "_").removeprefix(prefix)
            assert name.removeprefix(prefix) == bare


@st.composite
def vm_specs(draw: st.DrawFn) -> pb.VmSpec:
    """Random VmSpecs over every field."""
    platform = pb.PlatformSpec(
        abi=draw(st.sampled_from(pb.Abi.values())),
        pv=draw(st.lists(st.sampled_from(pb.Pv.values()), max_size=3)),
        compat=draw(st.sampled_from(["", "x86-64-v2", "power9", "0x0f000004"])),
        compat_policy=draw(st.sampled_from(pb.CompatPolicy.values())),
        bits=draw(st.sampled_from([0, 32, 64])),
        accel=draw(st.sampled_from(pb.Accel.values())),
    )
    boot = draw(st.sampled_from([pb.BootSpec(builtin="probe"), pb.BootSpec(kernel="/k", cmdline="quiet")]))
    return pb.VmSpec(
        name=draw(st.text(min_size=1, max_size=8)),
        vcpus=draw(st.integers(0, 2**32 - 1)),
        memory_mib=draw(st.integers(0, 2**64 - 1)),
        platform=platform,
        boot=boot,
        labels=draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)),
    )


@given(vm_specs(), st.booleans(), st.booleans())
def test_protobuf_json_round_trips(spec: pb.VmSpec, snake: bool, lower_enums: bool) -> None:
    data = json.loads(json_format.MessageToJson(spec, preserving_proto_field_name=snake))
    if lower_enums:
        data = _lower_strings(data, keep={"name", "compat", "kernel", "cmdline", "builtin", "labels"})
    assert parse_spec(json.dumps(data)) == spec


def _lower_strings(data: object, keep: set[str]) -> object:
    """`data` with enum-looking strings lower-cased (fields in `keep` left alone)."""
    if isinstance(data, dict):
        return {k: v if k in keep else _lower_strings(v, keep) for k, v in data.items()}
    if isinstance(data, list):
        return [_lower_strings(v, keep) for v in data]
    return data.lower() if isinstance(data, str) and not data.isdigit() else data


@given(st.text(min_size=1, max_size=10).filter(lambda k: k not in {f.name for f in pb.VmSpec.DESCRIPTOR.fields}))
def test_any_unknown_top_level_key_is_refused_by_name(key: str) -> None:
    if key in {f.json_name for f in pb.VmSpec.DESCRIPTOR.fields}:
        return
    with pytest.raises(SpecError) as info:
        normalise({key: 1})
    assert repr(key) in str(info.value)
