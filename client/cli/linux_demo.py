"""`kvmplat demo --linux`: Debian's kernel booted through the demo's embedded agent, as far as this host allows.

The guest image is located (or built: `kvmplat image build`), then:
  - with hardware KVM (vmx/svm): the bzImage on 2 vCPUs boots to the image's /init, which prints what the guest sees
    and reboots;
  - on a host whose KVM emulates guest instructions (kvm_pvm): the bzImage shows its decompressor's first line and is
    stopped (decompressing ~8 MB of xz instruction by instruction would take many minutes), then the ELF vmlinux
    boots to its banner and beyond, until the first instruction KVM's emulator lacks ends it CRASHED.
The console streams as it arrives; every guest has a deadline after which it is stopped, so the demo never hangs.
The closing lines say why the guest stopped and when it reached each milestone.
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
import time
from collections.abc import Callable

from kvmplat.client import guest_image
from kvmplat.client.agent import Client, EventStream
from kvmplat.client.errors import KvmplatError
from kvmplat.client.vmstates import ENDED, state_name
from kvmplat.v1 import agent_pb2 as pb

__all__ = ["hardware_kvm", "run"]

EARLY = "earlyprintk=serial,ttyS0,115200 nokaslr"
FIRST_LINE = re.compile(r"KASLR disabled|Decompressing|early console")
MEMORY_MIB = 256
FIRST_LINE_S = 120.0
BOOT_S = 600.0  # the vmlinux on kvm_pvm ends by itself after 1-2 minutes; a hardware-KVM boot in seconds
_MILESTONES = (
    ("started", "vCPUs started"),
    ("first_console_byte", "first console byte"),
    ("linux_banner", '"Linux version" banner'),
    ("kvmplat_init", "KVMPLAT-INIT from /init"),
)
Say = Callable[[str], None]


def hardware_kvm() -> bool:
    """vmx or svm in /proc/cpuinfo: the embedded agent's guests run natively."""
    try:
        with open("/proc/cpuinfo") as f:
            return re.search(r"^flags\s*:.*\b(vmx|svm)\b", f.read(), re.M) is not None
    except OSError:
        return False


def _say(text: str) -> None:
    print(text, flush=True)


def _image(say: Say) -> dict[str, str]:
    """The guest image's paths, built first when missing."""
    try:
        return guest_image.paths()
    except guest_image.ImageError:
        say("== building the guest image (kvmplat image build): Debian's kernel and busybox-static")
        return guest_image.build(lambda m: say(f"   image: {m}"))


class _Console:
    """Streams one VM's console and state events to the terminal from a thread, noting what it saw."""

    def __init__(self, client: Client, name: str, say: Say) -> None:
        self.text = ""
        self.seen = threading.Event()  # set when `want` matches the console
        self.want: re.Pattern[str] | None = None
        self._say = say
        self._name = name
        # every VM's events, subscribed before the VM exists (a watch of one VM needs it to exist): no line missed
        self._stream: EventStream = client.watch_events("", follow=True)
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        with contextlib.suppress(KvmplatError):
            for event in self._stream:
                if event.vm != self._name:
                    continue
                kind = event.WhichOneof("kind")
                if kind == "console":
                    sys.stdout.write(event.console.text)
                    sys.stdout.flush()
                    self.text += event.console.text
                    if self.want is not None and self.want.search(self.text):
                        self.seen.set()
                elif kind == "state":
                    self._say(f"-- {event.vm}: {state_name(event.state.to)} ({event.state.reason.splitlines()[0]})")

    def close(self) -> None:
        """Ends the stream (after its last events are shown)."""
        time.sleep(0.3)
        self._stream.cancel()
        self._thread.join(2.0)


def _spec(name: str, kernel: str, image: dict[str, str], extra: str, vcpus: int) -> pb.VmSpec:
    cmdline = f"{image['cmdline']} {extra}".strip()
    spec = pb.VmSpec(name=name, vcpus=vcpus, memory_mib=MEMORY_MIB)
    spec.platform.pv.append(pb.KVM)
    spec.boot.CopyFrom(pb.BootSpec(kernel=kernel, initrd=image["initrd"], cmdline=cmdline))
    return spec


def _wait_end(client: Client, name: str, timeout: float) -> pb.Vm:
    """The VM once ended; stopped by the demo when still running after `timeout` s."""
    deadline = time.monotonic() + timeout
    while (vm := client.get_vm(name)).state not in ENDED:
        if time.monotonic() > deadline:
            _say(f"-- {name}: still running after {timeout:.0f} s: stopping it")
            client.stop_vm(name)
        time.sleep(0.2)
    return vm


def _milestones(vm: pb.Vm, say: Say) -> None:
    """When the guest reached each boot milestone, relative to its start."""
    start = vm.stats.started.ToNanoseconds() if vm.stats.HasField("started") else 0
    for field, label in _MILESTONES:
        if vm.stats.HasField(field) and start:
            say(f"   {label:<28} {(getattr(vm.stats, field).ToNanoseconds() - start) / 1e6:9.0f} ms")


def _bzimage_first_line(client: Client, image: dict[str, str], say: Say) -> None:
    """The bzImage to its decompressor's first console line, then stopped."""
    say("== bzImage: the decompressor's first console line (earlyprintk, nokaslr)")
    console = _Console(client, "linux-bz", say)
    console.want = FIRST_LINE
    client.create_vm(_spec("linux-bz", image["kernel"], image, EARLY, 1), start=True)
    if console.seen.wait(FIRST_LINE_S):
        say("-- the decompressor runs; unpacking ~8 MB of xz one emulated instruction at a time would take minutes")
    with contextlib.suppress(KvmplatError):
        client.stop_vm("linux-bz")
    vm = _wait_end(client, "linux-bz", 30.0)
    console.close()
    _milestones(vm, say)
    client.destroy_vm("linux-bz")


def _boot(client: Client, name: str, spec: pb.VmSpec, say: Say) -> pb.Vm:
    """Boots `spec`, streaming its console until it ends (or its deadline); returns the ended VM."""
    console = _Console(client, name, say)
    client.create_vm(spec, start=True)
    vm = _wait_end(client, name, BOOT_S)
    console.close()
    return vm


def _why(vm: pb.Vm, hardware: bool) -> str:
    """Plain words on why the guest stopped where it did."""
    reason = vm.state_reason
    if vm.state == pb.CRASHED and "instruction emulator" in reason:
        return (
            f"why it stops here: {reason}\n"
            "this host's /dev/kvm is kvm_pvm: a kernel not built for PVM runs through KVM's instruction emulator "
            "(~1 us per instruction), which lacks some instructions a stock kernel uses. With hardware KVM (vmx/svm) "
            "the same image boots to its /init."
        )
    if vm.state == pb.STOPPED and reason == "guest reset" and hardware:
        return "the guest's /init reported what it sees and rebooted (reboot=t: a triple fault, a guest reset)"
    return f"the guest ended {state_name(vm.state)}: {reason}"


def run(client: Client, say: Say = _say) -> int:
    """The Linux demo against the embedded agent; 0 when the guest got as far as this host allows."""
    hardware = hardware_kvm()
    image = _image(say)
    say(f"image: kernel {image['kernel']}\n       vmlinux {image['vmlinux']}\n       initrd {image['initrd']}")
    try:
        if hardware:
            say("== hardware KVM: the bzImage on 2 vCPUs, booting to the image's /init")
            vm = _boot(client, "linux", _spec("linux", image["kernel"], image, "", 2), say)
        else:
            say("== this host's KVM emulates guest instructions (kvm_pvm): a stock kernel starts but cannot finish")
            _bzimage_first_line(client, image, say)
            say("== ELF vmlinux: the kernel itself, to its banner and as far as the emulator lets it (1-2 minutes)")
            vm = _boot(client, "linux", _spec("linux", image["vmlinux"], image, EARLY, 1), say)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        client.destroy_all()  # no VM of the demo outlives it
    say(_why(vm, hardware))
    _milestones(vm, say)
    reached = "kvmplat_init" if hardware else "linux_banner"
    return 0 if vm.stats.HasField(reached) else 1
