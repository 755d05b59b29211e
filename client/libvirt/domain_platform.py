"""The platform a libvirt domain implies: `<os><type arch machine>`, `<cpu>` and `<features>` → abi, bits, pv, compat.

Policy-free mapping tables (Nova's "no policy here"): what the agent can honour is the agent's decision, so a
pseries domain becomes SPAPR whatever the host is. Unknown or contradictory input is refused (`PlatformXmlError`);
anything understood but not applied becomes a warning in `notes`.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from xml.etree.ElementTree import Element

from kvmplat.v1 import agent_pb2 as pb

__all__ = [
    "ARCHES",
    "PPC_MACHINES",
    "PPC_UNRUNNABLE",
    "OsPlatform",
    "PlatformXmlError",
    "PlatformXmlRefused",
    "cpu_compat",
    "os_platform",
    "ppc_machine",
    "pv_of",
]


class PlatformXmlError(ValueError):
    """`<os>`, `<cpu>` or `<features>` says something kvmplat cannot express or that contradicts itself."""


class PlatformXmlRefused(PlatformXmlError):
    """The domain is readable and consistent, but asks for a platform no kvmplat agent can give (a refusal of the
    platform, exit 1 like an agent's): `field` and `asked` name the culprit."""

    def __init__(self, field: str, asked: str, reason: str) -> None:
        super().__init__(f"{field} {asked} cannot be honoured: {reason}")
        self.field, self.asked, self.reason = field, asked, reason


# libvirt arch → (family, bits, kvmplat arch); bits 0 is the proto default, the arch's width (32 for PPC).
ARCHES: dict[str, tuple[str, int, pb.Arch]] = {
    "x86_64": ("x86", 0, pb.X86_64),
    "i686": ("x86", 32, pb.X86_64),
    "ppc64": ("ppc", 0, pb.PPC64),
    "ppc64le": ("ppc", 0, pb.PPC64LE),
    "ppc": ("ppc", 0, pb.PPC),
    "ppcle": ("ppc", 0, pb.PPC),
}
_X86_MACHINES = re.compile(r"^(pc|q35|microvm|isapc|pc-(i440fx|q35)-.*|pc-\d.*)$")


class PpcMachine(NamedTuple):
    """A libvirt/QEMU PowerPC machine: its abi, the kvmplat arch for each libvirt arch it runs under, and its core."""

    abi: pb.Abi
    arches: dict[str, pb.Arch]
    core: str


_BOTH64 = {"ppc64": pb.PPC64, "ppc64le": pb.PPC64LE}
_BE32 = {"ppc": pb.PPC, "ppcle": pb.PPC, "ppc64": pb.PPC, "ppc64le": pb.PPC}  # a 32-bit core whatever the binary
# Every machine of qemu-system-ppc/ppc64 7.2 (`-M help`) and of QEMU's PowerPC docs (amigaone, prep: other
# versions). The 4xx boards have Book E cores (440, 460); ppce500 and mpc8544ds e500 (e5500 under ppc64).
PPC_MACHINES: dict[str, PpcMachine] = {
    "pseries": PpcMachine(pb.SPAPR, _BOTH64, "POWER (sPAPR partition)"),
    "powernv": PpcMachine(pb.BARE_METAL, _BOTH64, "POWER9 (OPAL, no hypervisor below)"),
    "powernv8": PpcMachine(pb.BARE_METAL, _BOTH64, "POWER8 (OPAL, no hypervisor below)"),
    "powernv9": PpcMachine(pb.BARE_METAL, _BOTH64, "POWER9 (OPAL, no hypervisor below)"),
    "powernv10": PpcMachine(pb.BARE_METAL, _BOTH64, "POWER10 (OPAL, no hypervisor below)"),
    "mac99": PpcMachine(
        pb.BARE_METAL, {"ppc": pb.PPC, "ppc64": pb.PPC64}, "PowerPC 7400 (G4), or 970 (G5) under ppc64"
    ),
    "g3beige": PpcMachine(pb.BARE_METAL, _BE32, "PowerPC 750 (G3)"),
    "40p": PpcMachine(pb.BARE_METAL, _BE32, "PowerPC 604 (PReP)"),
    "prep": PpcMachine(pb.BARE_METAL, _BE32, "PowerPC 603/604 (PReP)"),
    "pegasos2": PpcMachine(pb.BARE_METAL, _BE32, "PowerPC 7447 (G4)"),
    "amigaone": PpcMachine(pb.BARE_METAL, _BE32, "PowerPC 7457 (G4)"),
    "ppce500": PpcMachine(pb.BOOKE, {"ppc": pb.PPC, "ppc64": pb.PPC64}, "e500v2, or e5500 under ppc64"),
    "e500": PpcMachine(pb.BOOKE, {"ppc": pb.PPC, "ppc64": pb.PPC64}, "e500v2, or e5500 under ppc64"),
    "mpc8544ds": PpcMachine(pb.BOOKE, {"ppc": pb.PPC, "ppc64": pb.PPC}, "e500v2 (MPC8544)"),
    "bamboo": PpcMachine(pb.BOOKE, _BE32, "PowerPC 440EP (Book E)"),
    "sam460ex": PpcMachine(pb.BOOKE, _BE32, "PowerPC 460EX (Book E)"),
    "virtex-ml507": PpcMachine(pb.BOOKE, _BE32, "PowerPC 440x5 (Book E)"),
}
# Machines no KVM can run: a refusal of the platform, not a misreading of the document.
PPC_UNRUNNABLE: dict[str, str] = {
    "ref405ep": "its PowerPC 405 core is neither Book3S nor Book E: no PowerPC KVM (HV, PR, BookE) runs it",
    "taihu": "its PowerPC 405 core is neither Book3S nor Book E: no PowerPC KVM (HV, PR, BookE) runs it",
    "none": "an empty machine has no processor to give the guest",
}
_PSERIES = re.compile(r"^pseries-\d+\.\d+(-sxxm)?$")
_POWER_MODEL = re.compile(r"^power(\d+)(\+|e|nvl)?(_v[0-9.]+)?$", re.IGNORECASE)
_BOOKE_MODEL = re.compile(r"^(powerpc_)?(e500|e500v2|e500mc|e5500|e6500|440.*)$", re.IGNORECASE)
# Named x86 models approximated by the x86-64 level they reach (lower-case, version/mitigation suffixes stripped).
_X86_LEVELS: dict[str, int] = {
    **dict.fromkeys(("qemu64", "kvm64", "conroe", "penryn", "opteron_g1", "opteron_g2", "opteron_g3"), 1),
    **dict.fromkeys(("nehalem", "westmere", "sandybridge", "ivybridge", "opteron_g4", "opteron_g5", "snowridge"), 2),
    **dict.fromkeys(
        ("haswell", "broadwell", "skylake-client", "icelake-client", "epyc", "epyc-rome", "epyc-milan", "dhyana"), 3
    ),
    **dict.fromkeys(
        ("skylake-server", "cascadelake-server", "icelake-server", "cooperlake", "sapphirerapids", "graniterapids"), 4
    ),
    "epyc-genoa": 4,
}
_X86_SUFFIX = re.compile(r"-(v\d+|ibrs|ibpb|notsx|noavx512|nohle)$")


class OsPlatform(NamedTuple):
    """What `<os><type>` implies: family (`x86`/`ppc`/"" when no arch is given), abi, bits, arch and a summary."""

    family: str
    abi: pb.Abi
    bits: int
    summary: str
    arch: pb.Arch = pb.ARCH_UNSPECIFIED


def ppc_machine(machine: str) -> PpcMachine | None:
    """The PowerPC machine `machine` names (versioned pseries-X.Y included), or None."""
    return PPC_MACHINES.get("pseries" if _PSERIES.match(machine) else machine)


def _x86_machine(arch: str, machine: str, notes: list[str]) -> None:
    if machine == "none":
        raise PlatformXmlRefused("os/type machine", machine, PPC_UNRUNNABLE[machine])
    if ppc_machine(machine) is not None or machine in PPC_UNRUNNABLE:
        raise PlatformXmlError(f"os/type machine {machine!r} is a PowerPC machine, not one for arch {arch}")
    if not _X86_MACHINES.match(machine):
        notes.append(f"os/type machine {machine!r} is not a known PC machine; run as kvmplat's PC (BARE_METAL)")
    else:
        notes.append(f"os/type machine {machine!r}: kvmplat runs its own minimal PC, not QEMU's chipset")


def _ppc_machine(arch: str, machine: str, notes: list[str]) -> tuple[pb.Abi, pb.Arch]:
    """(abi, kvmplat arch) of a PowerPC machine under libvirt arch `arch`."""
    if machine in PPC_UNRUNNABLE:
        raise PlatformXmlRefused("os/type machine", machine, PPC_UNRUNNABLE[machine])
    known = ppc_machine(machine)
    if known is None:
        if _X86_MACHINES.match(machine):
            raise PlatformXmlError(f"os/type machine {machine!r} is a PC machine, not one for arch {arch}")
        raise PlatformXmlError(
            f"os/type machine {machine!r} for arch {arch} is not known to kvmplat "
            "(pseries, ppce500, powernv, mac99, ...)"
        )
    if arch not in known.arches:
        under = ", ".join(known.arches)
        raise PlatformXmlError(f"os/type machine {machine!r} does not run under arch {arch} (only {under})")
    guest = known.arches[arch]
    if ARCHES[arch][2] != guest:
        notes.append(f"os/type machine {machine!r} under arch {arch}: its core, {known.core}, is {_ARCH_TEXT[guest]}")
    return known.abi, guest


_ARCH_TEXT = {pb.PPC: "32-bit (arch PPC)", pb.PPC64: "64-bit big-endian (arch PPC64)", pb.PPC64LE: "ppc64le"}


def os_platform(os_el: Element | None, notes: list[str]) -> OsPlatform:
    """The abi, arch and bits implied by `<os><type arch machine>hvm</type>`."""
    type_el = None if os_el is None else os_el.find("type")
    if type_el is None:
        notes.append("no os/type: the host's native abi is used")
        return OsPlatform("", pb.ABI_UNSPECIFIED, 0, "no arch")
    kind = (type_el.text or "").strip()
    if kind != "hvm":
        raise PlatformXmlError(f"os/type {kind!r} is not supported: kvmplat runs hardware-virtualized (hvm) guests")
    arch = type_el.get("arch", "").strip()
    machine = type_el.get("machine", "").strip()
    if not arch:
        notes.append("os/type has no arch: the host's native abi is used")
        return OsPlatform("", pb.ABI_UNSPECIFIED, 0, "no arch")
    if arch not in ARCHES:
        raise PlatformXmlError(f"os/type arch {arch!r} is not supported by kvmplat (x86_64, i686, ppc64, ppc64le, ppc)")
    family, bits, guest = ARCHES[arch]
    if family == "x86":
        if machine:
            _x86_machine(arch, machine, notes)
        return OsPlatform(family, pb.BARE_METAL, bits, f"{arch} {machine}".strip(), guest)
    if not machine:
        if guest == pb.PPC:
            raise PlatformXmlError(f"os/type arch {arch} needs a machine (ppce500, mac99, ...): the abi is ambiguous")
        notes.append("os/type has no machine: pseries (libvirt's default for ppc64) is assumed")
        machine = "pseries"
    abi, guest = _ppc_machine(arch, machine, notes)
    return OsPlatform(family, abi, 0, f"{arch} {machine}", guest)


def _x86_level(model: str) -> tuple[int, bool]:
    """(level, exact) for an x86 model name; level 0 when unknown."""
    name = model.strip().lower()
    literal = re.fullmatch(r"x86-64-v([1-4])", name)
    if literal:
        return int(literal.group(1)), True
    capped = name.endswith("-noavx512")
    while name not in _X86_LEVELS and _X86_SUFFIX.search(name):
        name = _X86_SUFFIX.sub("", name)
    level = _X86_LEVELS.get(name, 0)
    return (min(level, 3) if capped and level else level), False


def _policy(model_el: Element) -> pb.CompatPolicy:
    fallback = model_el.get("fallback")
    if fallback is None:
        return pb.COMPAT_POLICY_UNSPECIFIED
    if fallback not in ("allow", "forbid"):
        raise PlatformXmlError(f"cpu/model fallback={fallback!r}: expected allow or forbid")
    return pb.STRICT if fallback == "forbid" else pb.BEST_EFFORT


def _x86_compat(mode: str, model: str, model_el: Element, notes: list[str]) -> str:
    if mode != "custom":
        notes.append(f"cpu/model {model!r} ignored under mode {mode}")
        return ""
    level, exact = _x86_level(model)
    if level == 0:
        if model_el.get("fallback") == "forbid":
            raise PlatformXmlRefused(
                "cpu model",
                model,
                "fallback='forbid' asks for exactly this model, and kvmplat knows no architecture level for it "
                f"(known: {', '.join(sorted(_X86_LEVELS))}, x86-64-v1..v4)",
            )
        notes.append(f"cpu model {model!r} is not known to kvmplat: the guest sees the host's level")
        return ""
    if not exact:
        notes.append(
            f"cpu model {model!r} is run as architecture level x86-64-v{level}, best effort: a named model only "
            "approximates a level, and libvirt's fallback= is about model substitution"
        )
    return f"x86-64-v{level}"


def _ppc_compat(abi: pb.Abi, model: str, notes: list[str]) -> str:
    power = _POWER_MODEL.match(model.strip())
    if abi == pb.BOOKE or (power is None and _BOOKE_MODEL.match(model.strip())):
        if abi != pb.BOOKE:
            raise PlatformXmlError(f"cpu model {model!r} is a BookE core, but the machine is not a BookE board")
        notes.append(f"cpu model {model!r} ignored: a BookE guest runs on the host's own core")
        return ""
    if power is None:
        raise PlatformXmlError(f"cpu model {model!r} is not a POWER compatibility level (power7, power8, power9, ...)")
    return f"power{int(power.group(1))}"


def cpu_compat(cpu_el: Element | None, family: str, abi: pb.Abi, notes: list[str]) -> tuple[str, pb.CompatPolicy]:
    """(compat, compat_policy) from `<cpu mode><model fallback>`; children kvmplat does not apply are noted."""
    if cpu_el is None:
        return "", pb.COMPAT_POLICY_UNSPECIFIED
    model_el = cpu_el.find("model")
    model = "" if model_el is None else (model_el.text or "").strip()
    mode = cpu_el.get("mode", "custom" if model else "host-model")
    if mode not in ("custom", "host-model", "host-passthrough", "maximum"):
        raise PlatformXmlError(f"cpu mode {mode!r} is not a libvirt cpu mode")
    _cpu_children_notes(cpu_el, notes)
    if model_el is None or not model:
        return "", pb.COMPAT_POLICY_UNSPECIFIED
    if family == "x86":
        compat = _x86_compat(mode, model, model_el, notes)
    elif family == "ppc":
        if mode in ("host-passthrough", "maximum"):
            notes.append(f"cpu/model {model!r} ignored under mode {mode}")
            return "", pb.COMPAT_POLICY_UNSPECIFIED
        compat = _ppc_compat(abi, model, notes)
    else:
        raise PlatformXmlError(f"cpu model {model!r} given without an os/type arch to read it against")
    if not compat:
        return compat, pb.COMPAT_POLICY_UNSPECIFIED
    policy = _policy(model_el)
    if family == "x86" and not _x86_level(model)[1]:
        # libvirt writes fallback='forbid' into the live XML of every default-CPU domain (qemu64): STRICT would
        # then refuse plain domains on hosts that cannot hide features down to x86-64-v1.
        return compat, pb.BEST_EFFORT
    return compat, policy


def _cpu_children_notes(cpu_el: Element, notes: list[str]) -> None:
    features = [f"{f.get('policy', 'require')}:{f.get('name', '?')}" for f in cpu_el.findall("feature")]
    if features:
        notes.append(f"cpu feature policies not applied: {', '.join(features)}")
    others = sorted({c.tag for c in cpu_el if c.tag not in ("model", "feature")})
    if others:
        notes.append(f"cpu elements not applied: {', '.join(others)}")


def _state_on(el: Element | None) -> bool:
    return el is not None and el.get("state", "on") == "on"


def _hyperv_on(hyperv: Element, notes: list[str]) -> bool:
    mode = hyperv.get("mode", "custom")
    if mode == "passthrough":
        return True
    on = [c.tag for c in hyperv if _state_on(c)]
    if not on:
        notes.append("features/hyperv switches no enlightenment on: pv HYPERV is not offered")
        return False
    notes.append(f"features/hyperv is offered as kvmplat's HYPERV set, not one by one ({', '.join(on)})")
    return True


def pv_of(domain_type: str, features: Element | None, notes: list[str]) -> tuple[pb.Pv, ...]:
    """The paravirtual interfaces the guest sees: KVM unless hidden (or TCG), HYPERV when enlightenments are on."""
    pv: set[pb.Pv] = set() if domain_type == "qemu" else {pb.KVM}
    if features is None:
        return tuple(sorted(pv))
    kvm = features.find("kvm")
    if kvm is not None:
        if _state_on(kvm.find("hidden")):
            pv.discard(pb.KVM)
        extra = sorted(c.tag for c in kvm if c.tag != "hidden")
        if extra:
            notes.append(f"features/kvm settings not applied: {', '.join(extra)}")
    hyperv = features.find("hyperv")
    if hyperv is not None and _hyperv_on(hyperv, notes):
        pv.add(pb.HYPERV)
    others = sorted(c.tag for c in features if c.tag not in ("kvm", "hyperv"))
    if others:
        notes.append(f"features not applied: {', '.join(others)}")
    return tuple(sorted(pv))
