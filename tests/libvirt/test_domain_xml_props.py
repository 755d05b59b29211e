"""Property tests: libvirt memory units (against an independent reading of libvirt's rules) and the reverse
translation round trip over generated specs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kvmplat.client.libvirt.domain_units import MAX_MEMORY_BYTES, UnitError, memory_kib, scale_of
from kvmplat.client.libvirt.domain_xml import DomainXmlError, to_domain_xml, translate
from kvmplat.v1 import agent_pb2 as pb

# An independent table: every spelling libvirt documents, with its byte count.
POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
SPELLINGS: dict[str, int] = {"b": 1, "bytes": 1, "byte": 1}
for letter, power in POWERS.items():
    SPELLINGS[letter] = 1024**power
    SPELLINGS[f"{letter}iB"] = 1024**power
    SPELLINGS[f"{letter}B"] = 1000**power


def casings(unit: str) -> st.SearchStrategy[str]:
    """Any upper/lower casing of `unit` (libvirt compares case-insensitively)."""
    return st.lists(st.booleans(), min_size=len(unit), max_size=len(unit)).map(
        lambda flags: "".join(c.upper() if f else c.lower() for c, f in zip(unit, flags, strict=True))
    )


@given(st.sampled_from(sorted(SPELLINGS)).flatmap(lambda u: st.tuples(st.just(u), casings(u))))
def test_every_unit_spelling_scales_as_libvirt(pair: tuple[str, str]) -> None:
    unit, spelled = pair
    assert scale_of(spelled) == SPELLINGS[unit]


@given(st.integers(min_value=0, max_value=2**40), st.sampled_from(sorted(SPELLINGS)))
def test_memory_rounds_up_to_kib(value: int, unit: str) -> None:
    size = value * SPELLINGS[unit]
    if size > MAX_MEMORY_BYTES:
        with pytest.raises(UnitError, match="too large"):
            memory_kib(str(value), unit)
    else:
        assert memory_kib(str(value), unit) == -(-size // 1024)


@given(st.integers(min_value=0, max_value=2**50))
def test_no_unit_means_kib(value: int) -> None:
    assert memory_kib(f" {value}\n", None) == value


@given(st.text(min_size=1, max_size=6).filter(lambda u: u.strip().lower() not in {s.lower() for s in SPELLINGS}))
def test_unknown_units_are_refused(unit: str) -> None:
    with pytest.raises(UnitError):
        scale_of(unit)


@pytest.mark.parametrize("value", ["-1", "1.5", "0x10", "", "1e3", "٣", "1" * 5000])
def test_bad_values_are_refused(value: str) -> None:
    with pytest.raises(UnitError):
        memory_kib(value, "MiB")


@pytest.mark.parametrize(("unit", "mib"), [("KiB", 1), ("GB", 2862), ("tib", 3 * 2**20), (None, 1)])
def test_memory_units_reach_the_spec(unit: str | None, mib: int) -> None:
    attr = f" unit='{unit}'" if unit else ""
    xml = f"<domain type='kvm'><name>m</name><memory{attr}>3</memory><os><type arch='x86_64'>hvm</type></os></domain>"
    assert translate(xml).spec.memory_mib == mib


def test_memory_too_large_is_a_domain_error() -> None:
    xml = "<domain type='kvm'><name>m</name><memory unit='EiB'>8</memory></domain>"
    with pytest.raises(DomainXmlError, match=r"memory.*too large"):
        translate(xml)


SAFE = st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="\r") | st.sampled_from("\t\n")
WORD = st.text(alphabet=SAFE, min_size=1, max_size=20)
TRIMMED = WORD.filter(lambda s: s == s.strip() and s != "")


@st.composite
def specs(draw: st.DrawFn) -> pb.VmSpec:
    """VmSpecs inside the documented round-trip domain (domain_xml_reverse)."""
    platform = pb.PlatformSpec(
        abi=draw(st.sampled_from([0, pb.BARE_METAL, pb.SPAPR, pb.BOOKE])),
        pv=draw(st.sampled_from([[], [pb.KVM], [pb.HYPERV], [pb.KVM, pb.HYPERV]])),
        compat=draw(st.sampled_from(["", "x86-64-v1", "x86-64-v4", "power8", "power10", "0x0f000005"]) | TRIMMED),
        compat_policy=draw(st.sampled_from([0, pb.STRICT, pb.BEST_EFFORT])),
        bits=draw(st.sampled_from([0, 32, 64])),
        arch=draw(st.sampled_from([pb.ARCH_UNSPECIFIED, pb.X86_64, pb.PPC64, pb.PPC64LE, pb.PPC])),
        accel=draw(st.sampled_from([0, pb.AUTO, pb.HV, pb.PR])),
    )
    spec = pb.VmSpec(
        name=draw(TRIMMED),
        vcpus=draw(st.integers(1, 2**32 - 1)),
        memory_mib=draw(st.integers(1, 2**43 - 1)),
        platform=platform,
        labels=draw(st.dictionaries(TRIMMED, st.text(alphabet=SAFE, max_size=10), max_size=3)),
    )
    kernel = draw(st.one_of(st.none(), st.just("builtin"), WORD))
    initrd, cmdline = draw(st.sampled_from(["", "/i"]) | WORD), draw(st.sampled_from(["", "c=1"]) | WORD)
    if kernel == "builtin":
        spec.boot.builtin = draw(TRIMMED)
    elif kernel is not None:
        spec.boot.kernel = kernel
    if initrd or cmdline:
        spec.boot.initrd, spec.boot.cmdline = initrd, cmdline
    return spec


@settings(max_examples=300, deadline=None)
@given(specs(), st.booleans())
def test_reverse_round_trips(spec: pb.VmSpec, opt_in: bool) -> None:
    back = translate(to_domain_xml(spec, opt_in=opt_in))
    assert back.spec == spec
    assert back.opt_in == opt_in


@pytest.mark.parametrize(
    "change",
    [
        lambda s: setattr(s, "name", " padded "),
        lambda s: setattr(s, "vcpus", 0),
        lambda s: s.platform.pv.extend([pb.HYPERV, pb.KVM]),
        lambda s: setattr(s, "name", "bell\x07"),
    ],
)
def test_reverse_refuses_specs_outside_the_domain(change: object) -> None:
    spec = pb.VmSpec(name="ok", vcpus=1, memory_mib=16)
    change(spec)  # type: ignore[operator]
    with pytest.raises(ValueError):
        to_domain_xml(spec)
