"""Cost per port-I/O exit: kvmplat's runner vCPU loop against a tiny C program running the same guest loop.

Both run a real-mode guest that writes port 0x80 forever (`out %al,%dx; jmp .-1`). Ours is the runner's own
machinery (machine.build_machine + VcpuThread + the C fast loop); the baseline is a C program this script builds
with gcc. Rounds alternate so both see the same machine load. Prints figures, then a last JSON line
{"ns_per_exit": .., "c_ns_per_exit": .., "ratio": ..} (medians).  Usage: bench/exits.py [--seconds S] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

C_SOURCE = r"""
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
int main(int argc, char **argv) {
    double seconds = atof(argv[1]);
    int kvm = open("/dev/kvm", O_RDWR), vm = ioctl(kvm, KVM_CREATE_VM, 0);
    ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL);
    ioctl(vm, KVM_CREATE_IRQCHIP, 0);
    unsigned char *mem = mmap(0, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    const unsigned char code[] = {0xba, 0x80, 0x00, 0xee, 0xeb, 0xfd}; /* mov $0x80,%dx; out %al,%dx; jmp -3 */
    memcpy(mem + 0x1000, code, sizeof(code));
    struct kvm_userspace_memory_region r = {.slot = 0, .guest_phys_addr = 0, .memory_size = 1 << 20,
                                            .userspace_addr = (unsigned long)mem};
    ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r);
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    struct kvm_run *run = mmap(0, ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0), PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    struct kvm_sregs s; ioctl(vcpu, KVM_GET_SREGS, &s);
    s.cs.base = 0; s.cs.selector = 0; ioctl(vcpu, KVM_SET_SREGS, &s);
    struct kvm_regs g = {.rip = 0x1000, .rflags = 2}; ioctl(vcpu, KVM_SET_REGS, &g);
    struct timespec t0, t1; unsigned long n = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        for (int i = 0; i < 1000; i++, n++) {
            if (ioctl(vcpu, KVM_RUN, 0) < 0 || run->exit_reason != KVM_EXIT_IO || run->io.port != 0x80) return 1;
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
    } while ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9 < seconds);
    printf("%.1f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n);
    return 0;
}
"""


def c_round(exe: Path, seconds: float) -> float:
    """ns per exit of the C baseline for one round."""
    out = subprocess.run([str(exe), str(seconds)], check=True, capture_output=True, text=True)
    return float(out.stdout)


def ours_round(seconds: float) -> float:
    """ns per exit of the runner's vCPU loop for one round."""
    from kvmplat.agent.kvm.fds import ExitReason
    from kvmplat.agent.runner.machine import build_machine
    from kvmplat.agent.runner.vcpu import Mode, VcpuThread, install_kick_handler
    from kvmplat.agent.runner.wire import BootSource, RunnerConfig

    install_kick_handler()
    m = build_machine(RunnerConfig("bench", 1, 1, boot=BootSource(builtin="outloop")))
    try:
        t = VcpuThread(m.vcpus[0], m.devices, lambda i, o: None)
        t0 = time.perf_counter()
        t.set_mode(Mode.RUN)
        time.sleep(seconds)
        t.set_mode(Mode.STOP)
        t.join()
        elapsed = time.perf_counter() - t0
        return elapsed * 1e9 / max(1, t.stats.by_reason().get(ExitReason.IO, 0))
    finally:
        m.close()


def main() -> None:
    """Alternating rounds, medians, a last JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "exits.c", Path(tmp) / "exits"
        src.write_text(C_SOURCE)
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
        ours, c = [], []
        for i in range(args.rounds):
            c.append(c_round(exe, args.seconds))
            ours.append(ours_round(args.seconds))
            print(f"round {i + 1}: runner {ours[-1]:.0f} ns/exit, C {c[-1]:.0f} ns/exit", file=sys.stderr)
    o, b = statistics.median(ours), statistics.median(c)
    print(f"runner vCPU loop: {o:.0f} ns per port-I/O exit; C loop: {b:.0f} ns; ratio {o / b:.3f}")
    print(json.dumps({"ns_per_exit": round(o, 1), "c_ns_per_exit": round(b, 1), "ratio": round(o / b, 3)}))


if __name__ == "__main__":
    main()
