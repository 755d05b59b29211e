"""The PowerPC lab's entry point (issue 8): learn the real kernel, predict each case, apply it, compare.

    python3 -m kvmplat.lab.ppc.guest [--cases FILE] [--simulate HOST.json] [--no-probe]
    python3 -m kvmplat.lab.ppc.guest --stage DIR     (on the build host: copy the files the lab needs)

Prints one JSON line per result: {"host": ...} first, then per case {"case", "predicted", "kernel_agrees", ...},
then {"probe": ...} (the built-in payload under KVM_RUN) and a final {"summary": ...}. A case is
{"name": str, "vcpus": int, "request": {"abi", "pv", "compat", "policy", "bits", "accel"}} with enum names as strings.
Runs on Debian's ppc64el python3 with cffi in ABI mode (agent/kvm/ffi.ensure_kvmc); nothing here imports `_kvmc`
before it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
from pathlib import Path
from typing import IO, Any

from kvmplat.agent.kvm import ffi as kvmabi

__all__ = ["AGENT_FILES", "DEFAULT_CASES", "LAB_FILES", "lab_main", "stage"]

DEFAULT_CASES: list[dict[str, Any]] = [
    {"name": "spapr-power8", "request": {"abi": "SPAPR", "compat": "power8"}},
    {"name": "spapr-power9", "request": {"abi": "SPAPR", "compat": "power9"}},
    {"name": "spapr-power10", "request": {"abi": "SPAPR", "compat": "power10"}},
    {"name": "spapr-power8-best-effort", "request": {"abi": "SPAPR", "compat": "power8", "policy": "BEST_EFFORT"}},
    {"name": "accel-auto", "request": {"abi": "SPAPR"}},
    {"name": "accel-hv", "request": {"abi": "SPAPR", "accel": "HV"}},
    {"name": "accel-pr", "request": {"abi": "SPAPR", "accel": "PR"}},
    {"name": "pv-kvm", "request": {"abi": "SPAPR", "pv": ["KVM"]}},
    {"name": "bare-metal-ppc64", "request": {"abi": "BARE_METAL", "arch": "PPC64"}},
    {"name": "bare-metal-ppc32", "request": {"abi": "BARE_METAL", "arch": "PPC"}},
]
# Bare-metal cases whose admission is then proven by running a probe without PAPR (issue 13 item 3).
BARE_CASES = {"bare-metal-ppc64": "ppc64", "bare-metal-ppc32": "ppc32"}
PROBE32 = "/lab/probe32.bin"  # lab/ppc/probe32.S, assembled by ppc_prepare
# What the guest needs of the agent (relative to agent/, as glob patterns) and of the lab (relative to lab/),
# staged as DIR/kvmplat/agent/... and DIR/kvmplat/lab/...; never the compiled module.
AGENT_FILES = (
    "__init__.py",
    "errors.py",
    "kvm/*.py",  # the whole KVM layer's source (cbuild.py reads its .c and .S files), never the compiled module
    "kvm/*.c",
    "kvm/*.S",
    "platform/__init__.py",
    "platform/arch.py",
    "platform/ceiling.py",
    "platform/levels.py",
    "platform/model.py",
    "platform/ppc.py",
    "platform/ppc_compat.py",
    "platform/ppc_levels.py",
)
LAB_FILES = (
    "__init__.py",
    "ppc/__init__.py",
    "ppc/apply.py",
    "ppc/guest.py",
    "ppc/learn.py",
    "ppc/payload.py",
    "ppc/plan.py",
    "ppc/sim.py",
)


def stage(dest: str | Path) -> list[Path]:
    """Copies AGENT_FILES and LAB_FILES under dest/kvmplat/ (PYTHONPATH=dest then imports kvmplat.lab.ppc)."""
    lab = Path(__file__).resolve().parents[1]
    agent = Path(importlib.import_module("kvmplat.agent").__file__ or "").resolve().parent
    out = []
    for src, package, files in ((agent, "agent", AGENT_FILES), (lab, "lab", LAB_FILES)):
        for pattern in files:
            for path in sorted(src.glob(pattern)):
                target = Path(dest) / "kvmplat" / package / path.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                out.append(target)
    return out


def parse_request(data: dict[str, Any]) -> Any:
    """A PlatformRequest from a case's JSON (enum names as strings)."""
    from kvmplat.agent.platform.model import Abi, Accel, Arch, CompatPolicy, PlatformRequest, Pv

    return PlatformRequest(
        abi=Abi[data["abi"]] if data.get("abi") else None,
        pv=frozenset(Pv[p] for p in data.get("pv", [])),
        compat=str(data.get("compat", "")),
        policy=CompatPolicy[data.get("policy", "STRICT")],
        bits=int(data.get("bits", 0)),
        accel=Accel[data.get("accel", "AUTO")],
        arch=Arch[data["arch"]] if data.get("arch") else None,
    )


def run_case(case: dict[str, Any], host: Any, fds: Any) -> dict[str, Any]:
    """Predicts one case, applies it (or its refusal probe) through `fds` and compares."""
    from kvmplat.agent.errors import InvalidArgument, PlatformRefused
    from kvmplat.agent.platform.ppc import resolve_ppc
    from kvmplat.lab.ppc.apply import apply_ppc, plan_ok
    from kvmplat.lab.ppc.plan import plan_ppc, plan_refusal_probe, ppc_vm_type

    request = parse_request(case.get("request", {}))
    line: dict[str, Any] = {"case": case["name"]}
    try:
        eff = resolve_ppc(request, host)
    except (PlatformRefused, InvalidArgument) as e:
        line.update(predicted="refused", reason=str(e))
        probe = plan_refusal_probe(request, host, e) if isinstance(e, PlatformRefused) else []
        results = _apply(probe, fds, apply_ppc)
        line["kernel"] = [_result_json(r) for r in results]
        line["kernel_agrees"] = plan_ok(results, probe) if probe else None
        return line
    plan = plan_ppc(eff, int(case.get("vcpus", 2)), ppc_vm_type(request.accel, eff, host))
    results = _apply(plan, fds, apply_ppc)
    line.update(predicted="admitted", accel=eff.accel, compat=eff.compat, compat_raw=f"0x{eff.compat_raw:08x}")
    line.update(arch=eff.arch.name if eff.arch else None, cross_arch=eff.cross_arch)
    line.update(notes=list(eff.notes), kernel_agrees=plan_ok(results, plan))
    line["kernel"] = [_result_json(r) for r in results if not r.ok] or f"{len(results)} steps as planned"
    pvinfo = [r for r in results if r.step.name == "KVM_PPC_GET_PVINFO" and r.ok]
    if pvinfo:
        line["pvinfo"] = [pvinfo[0].out[4 + 4 * i : 8 + 4 * i][::-1].hex() for i in range(4)]
    return line


def _apply(plan: list[Any], fds: Any, apply_ppc: Any) -> list[Any]:
    try:
        return list(apply_ppc(plan, fds))
    finally:
        fds.release()


def _result_json(r: Any) -> dict[str, Any]:
    return {"fd": r.step.fd, "ioctl": r.step.name, "request": f"{r.step.request:#x}", "ret": r.ret, "errno": r.errno}


def run_payload(kvm: Any, host: Any) -> dict[str, Any]:
    """Runs the built-in payload on the host's default flavour (PAPR on) and reports console and MMIO exit."""
    from kvmplat.agent.kvm.ioctls import Cap
    from kvmplat.lab.ppc.payload import PROBE_MAGIC, PROBE_MMIO, run_probe

    if not host.default_accel:
        return {"probe": None, "reason": "no VM type can be created"}
    with kvm.create_vm(0) as vm, vm.create_vcpu(0) as vcpu:
        vcpu.enable_cap(Cap.PPC_PAPR)
        out = run_probe(vm, vcpu)
    text = out.console.decode(errors="replace")
    return {
        "probe": host.default_accel,
        "console": text,
        "probe_console": text.startswith("kvmplat-probe"),
        "hcalls": [f"{n:#x}" for n in out.hcalls],
        "mmio_exit": out.mmio == (PROBE_MMIO, PROBE_MAGIC),
        "last_exit": out.last_exit,
    }


def run_bare_probe(kvm: Any, case: dict[str, Any], host: Any, probe32: str) -> dict[str, Any]:
    """Runs a bare-metal case the agent admitted: its probe on the flavour chosen, KVM_CAP_PPC_PAPR never enabled."""
    from kvmplat.agent.platform.ppc import resolve_ppc
    from kvmplat.lab.ppc.payload import (
        BARE32_MSR,
        BARE64_MSR,
        MSR_SF,
        PROBE32_EA,
        PROBE_MAGIC,
        PROBE_MMIO,
        assemble_bare64,
        run_bare,
    )
    from kvmplat.lab.ppc.plan import VM_TYPES

    kind = BARE_CASES[case["name"]]
    eff = resolve_ppc(parse_request(case["request"]), host)
    line: dict[str, Any] = {"bare": kind, "case": case["name"] + "-run", "accel": eff.accel, "papr": False}
    wide = kind == "ppc64"
    blob = assemble_bare64() if wide else Path(probe32).read_bytes()
    with kvm.create_vm(VM_TYPES[eff.accel]) as vm, vm.create_vcpu(0) as vcpu:
        out = run_bare(
            vm, vcpu, blob, BARE64_MSR if wide else BARE32_MSR, 0 if wide else eff.compat_raw, 1 if wide else 2
        )
    line.update(stores=[[f"{a:#x}", f"{v:#x}"] for a, v in out.stores], msr=f"{out.msr:#x}", last_exit=out.last_exit)
    ran = bool(out.stores) and out.stores[0] == (PROBE_MMIO, PROBE_MAGIC)
    if not wide:
        line["sf_clear"] = out.msr >= 0 and not out.msr & MSR_SF
        line["ea_32bit"] = len(out.stores) > 1 and out.stores[1][0] == PROBE32_EA
        ran = ran and line["sf_clear"]
    line.update(ran=ran, kernel_agrees=ran)
    return line


def _bare_runs(
    kvm: Any, cases: list[dict[str, Any]], lines: list[dict[str, Any]], host: Any, probe32: str
) -> list[Any]:
    """The probe runs of every admitted bare-metal case (a failure to run is the kernel disagreeing, recorded)."""
    admitted = {ln["case"] for ln in lines if ln.get("predicted") == "admitted"}
    out = []
    for case in cases:
        if case["name"] in BARE_CASES and case["name"] in admitted:
            try:
                out.append(run_bare_probe(kvm, case, host, probe32))
            except Exception as e:  # the kernel said no where the agent predicted yes: recorded, the lab fails
                out.append({"bare": BARE_CASES[case["name"]], "case": case["name"] + "-run", "ran": False,
                            "kernel_agrees": False, "error": f"{type(e).__name__}: {e}"})  # fmt: skip
    return out


def lab_main(argv: list[str] | None = None, stdout: IO[str] | None = None) -> int:
    """The lab's entry: one JSON line per result; exit status 0 when the kernel agreed with every prediction."""
    args = _parser().parse_args(argv)
    stdout = stdout or sys.stdout
    if args.stage:
        for path in stage(args.stage):
            print(path, file=stdout)
        return 0
    kvmabi.ensure_kvmc(force_abi=args.abi_mode)
    cases = json.loads(Path(args.cases).read_text()) if args.cases else DEFAULT_CASES
    kvm, fds, host = _open(args.simulate)

    def emit(obj: dict[str, Any]) -> None:
        print(json.dumps(obj, sort_keys=True), file=stdout, flush=True)

    emit({"host": host.to_json()})
    lines = [run_case(case, host, fds) for case in cases]
    for line in lines:
        emit(line)
    agrees = all(line["kernel_agrees"] is not False for line in lines)
    if kvm is not None and not args.no_probe:
        for line in _bare_runs(kvm, cases, lines, host, args.probe32):
            emit(line)
            agrees = agrees and line["kernel_agrees"] is True
        probe = run_payload(kvm, host)
        emit(probe)
        agrees = agrees and bool(probe.get("mmio_exit"))
    emit({"summary": {"cases": len(lines), "kernel_agrees": agrees, "accel": host.default_accel}})
    return 0 if agrees else 1


def _open(simulate: str | None) -> tuple[Any, Any, Any]:
    """(Kvm or None, fd layer, learnt host): the real /dev/kvm, or a simulated kernel from a host file."""
    from kvmplat.agent.platform.ppc import PpcHost
    from kvmplat.lab.ppc.apply import KvmFds
    from kvmplat.lab.ppc.learn import learn_ppc_host
    from kvmplat.lab.ppc.sim import sim_fds

    if simulate:
        sim = sim_fds(PpcHost.from_file(simulate))
        return None, sim, learn_ppc_host(sim, name="simulated", source=simulate)
    from kvmplat.agent.kvm.fds import Kvm

    kvm = Kvm()
    fds = KvmFds(kvm)
    return kvm, fds, learn_ppc_host(fds, name="lab", source="learnt from /dev/kvm by ppc_lab")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m kvmplat.lab.ppc.guest", description=__doc__.split("\n")[0])
    p.add_argument("--cases", help="JSON list of cases (default: the issue 8 set)")
    p.add_argument("--simulate", metavar="HOST_JSON", help="dry run against a simulated kernel of this host")
    p.add_argument("--no-probe", action="store_true", help="skip the probe runs (built-in payload, bare metal)")
    p.add_argument("--probe32", default=PROBE32, help=f"the assembled 32-bit Book3S probe (default {PROBE32})")
    p.add_argument("--abi-mode", action="store_true", help="use cffi ABI mode even if the compiled module loads")
    p.add_argument("--stage", metavar="DIR", help="copy the files the lab needs to DIR/kvmplat and exit")
    return p


if __name__ == "__main__":
    sys.exit(lab_main())
