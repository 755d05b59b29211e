"""agent/api/validate.py without KVM: validate_spec raises only InvalidArgument; every violation names a
spec.* field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kvmplat.agent.api.validate import NAME_RE, Limits, validate_name, validate_spec
from kvmplat.agent.errors import InvalidArgument
from kvmplat.agent.guest.builtin import PUBLIC_BUILTINS
from kvmplat.v1 import agent_pb2 as pb

LIMITS = Limits(max_vcpus=8, max_memory_mib=1024, image_dirs=("/nonexistent-kvmplat-images",))
FIELDS = {"spec.name", "spec.vcpus", "spec.memory_mib", "spec.boot", "spec.boot.builtin", "spec.boot.kernel"}
FIELDS |= {"spec.boot.initrd", "spec.boot.cmdline"}

_boot = st.one_of(
    st.just(pb.BootSpec()),
    st.builds(
        pb.BootSpec, builtin=st.text(max_size=12), initrd=st.sampled_from(["", "/x"]), cmdline=st.text(max_size=5)
    ),
    st.builds(
        pb.BootSpec,
        kernel=st.one_of(st.text(max_size=30), st.sampled_from(["/etc/passwd", "/", "/nonexistent-kvmplat-images/k"])),
        initrd=st.one_of(st.just(""), st.text(max_size=30)),
        cmdline=st.one_of(st.text(max_size=20), st.just("y" * 5000), st.just("a\0b")),
    ),
)
_specs = st.builds(
    pb.VmSpec,
    name=st.one_of(st.text(max_size=70), st.from_regex(NAME_RE, fullmatch=True)),
    vcpus=st.integers(0, 2**32 - 1),
    memory_mib=st.integers(0, 2**64 - 1),
    boot=_boot,
)


@settings(max_examples=400, deadline=None)
@given(spec=_specs)
def test_validate_spec_raises_only_invalid_argument_naming_spec_fields(spec: pb.VmSpec) -> None:
    try:
        validate_spec(spec, LIMITS)
    except InvalidArgument as e:
        assert e.violations, "InvalidArgument without violations"
        for field, description in e.violations:
            assert field in FIELDS and description
            assert field in str(e)
        return
    assert NAME_RE.fullmatch(spec.name) and 1 <= spec.vcpus <= 8 and 1 <= spec.memory_mib <= 1024
    assert spec.boot.builtin in PUBLIC_BUILTINS


def _spec(**kw: object) -> pb.VmSpec:
    base: dict[str, object] = {"name": "ok", "vcpus": 1, "memory_mib": 16, "boot": pb.BootSpec(builtin="loop")}
    return pb.VmSpec(**(base | kw))


def _fields(spec: pb.VmSpec, limits: Limits = LIMITS) -> set[str]:
    with pytest.raises(InvalidArgument) as info:
        validate_spec(spec, limits)
    return {f for f, _ in info.value.violations}


def test_a_good_spec_passes_up_to_each_limit_and_not_one_past() -> None:
    at_limits = _spec(vcpus=LIMITS.max_vcpus, memory_mib=LIMITS.max_memory_mib)
    assert validate_spec(at_limits, LIMITS) is None
    assert _fields(_spec(vcpus=LIMITS.max_vcpus + 1), LIMITS) == {"spec.vcpus"}
    assert _fields(_spec(memory_mib=LIMITS.max_memory_mib + 1), LIMITS) == {"spec.memory_mib"}


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"vcpus": 0}, "spec.vcpus"),
        ({"vcpus": 9}, "spec.vcpus"),
        ({"memory_mib": 0}, "spec.memory_mib"),
        ({"memory_mib": 1025}, "spec.memory_mib"),
        ({"name": "nl\n"}, "spec.name"),
        ({"name": "-x"}, "spec.name"),
        ({"boot": pb.BootSpec()}, "spec.boot"),
        ({"boot": pb.BootSpec(builtin="outloop")}, "spec.boot.builtin"),
        ({"boot": pb.BootSpec(builtin="loop", cmdline="quiet")}, "spec.boot"),
        ({"boot": pb.BootSpec(kernel="relative")}, "spec.boot.kernel"),
        ({"boot": pb.BootSpec(kernel="/etc/passwd")}, "spec.boot.kernel"),
    ],
)
def test_each_bad_field_is_named(kw: dict[str, object], field: str) -> None:
    assert _fields(_spec(**kw)) == {field}


def test_violations_are_reported_together() -> None:
    assert _fields(pb.VmSpec(name="", vcpus=0, memory_mib=0)) == {
        "spec.name",
        "spec.vcpus",
        "spec.memory_mib",
        "spec.boot",
    }


def test_images_only_from_the_image_dirs(tmp_path: Path) -> None:
    images, outside = tmp_path / "images", tmp_path / "outside"
    images.mkdir()
    outside.mkdir()
    (images / "vmlinuz").write_bytes(b"k")
    (outside / "secret").write_bytes(b"s")
    os.symlink(outside / "secret", images / "link")
    limits = Limits(max_vcpus=8, max_memory_mib=1024, image_dirs=(str(images),))
    validate_spec(_spec(boot=pb.BootSpec(kernel=str(images / "vmlinuz"))), limits)
    for path in (images / "link", images / ".." / "outside" / "secret", images / "missing", images):
        assert _fields(_spec(boot=pb.BootSpec(kernel=str(path))), limits) == {"spec.boot.kernel"}
    bad_initrd = _spec(boot=pb.BootSpec(kernel=str(images / "vmlinuz"), initrd=str(outside / "secret")))
    assert _fields(bad_initrd, limits) == {"spec.boot.initrd"}


@pytest.mark.parametrize("name", ["", "a" * 64, "x/y", "nl\n", "\nx", "é"])
def test_validate_name_refuses(name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_name(name)
    assert [f for f, _ in info.value.violations] == ["name"]


@pytest.mark.parametrize("name", ["a", "A.b_c-9", "9" * 63])
def test_validate_name_accepts_exactly_the_name(name: str) -> None:
    assert validate_name(name) is None
    with pytest.raises(InvalidArgument):  # the same name one character off the rules is refused
        validate_name(name + "/")
