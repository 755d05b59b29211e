"""Host truth fixtures (tests/golden/platform/hosts/*.json) for pure platform tests."""

from __future__ import annotations

import json
from pathlib import Path

from kvmplat.agent.platform.x86host import X86Host

HOSTS_DIR = Path(__file__).resolve().parent.parent / "golden" / "platform" / "hosts"
PVM = "kvm_pvm-epyc"  # this host: kvm_pvm, most features seen but not hideable
HARDWARE = "kvm-amd-hardware"  # hardware KVM that honours the table, with Hyper-V


def load_host(name: str) -> X86Host:
    """The X86Host fixture `name`."""
    return X86Host.from_json(json.loads((HOSTS_DIR / f"{name}.json").read_text()))
