"""Maps the source folders onto the kvmplat namespace and builds the one compiled piece, kvmplat.agent.kvm._kvmc
(the runner's vCPU fast loop and the built-in payloads) through cffi."""

from pathlib import Path

from setuptools import setup

ROOTS = {"kvmplat.agent": "agent", "kvmplat.client": "client", "kvmplat.lab": "lab", "kvmplat.v1": "gen/kvmplat/v1"}


def _packages() -> dict[str, str]:
    """Every package under the mapped folders (sub-packages included), name -> folder."""
    out = {}
    for name, top in ROOTS.items():
        for init in sorted(Path(top).rglob("__init__.py")):
            rel = init.parent.relative_to(top)
            out[".".join([name, *rel.parts])] = str(init.parent)
    return out


PACKAGES = _packages()
setup(packages=list(PACKAGES), package_dir=PACKAGES, cffi_modules=["agent/kvm/cbuild.py:ffibuilder"])
