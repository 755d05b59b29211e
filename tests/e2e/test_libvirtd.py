"""A real libvirtd runs the kvmplat hook: `virsh start` of a pseries/power9 domain on this x86_64 host fails with the
hook's reason in virsh's error; an x86 domain is admitted; an opted-in domain is created, run and destroyed by the
kvmplat agent as libvirt starts and destroys it.

Recipe: ../shared/reference/LIBVIRTD.md. libvirtd 9.0 (system mode, as root) runs in a private mount namespace whose
/etc, /var and /run are overlays onto this test's directory, because libvirt's hook directory is fixed at
/etc/libvirt/hooks; nothing outside the test directory changes. The hook is installed as documented: a symlink
/etc/libvirt/hooks/qemu -> <project>/libvirt-hooks/qemu, configured by /etc/kvmplat/hook.conf (libvirtd gives hooks
only LC_ALL, PATH and HOME, so KVMPLAT_AGENT cannot reach it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from kvmplat.client.localagent import LocalAgent
from kvmplat.v1 import agent_pb2 as pb
from kvmplat.v1 import agent_pb2_grpc as pb_grpc
from proc_util import stop_process

ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "libvirt-hooks" / "qemu"
BIN = Path(sys.executable).parent
DOMTYPE = "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "qemu"
NS = "http://kvmplat.io/xmlns/domain/1"

LIBVIRTD_CONF = """unix_sock_dir = "{b}/sock"
unix_sock_rw_perms = "0700"
unix_sock_ro_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_filters = "1:util.hook 3:*"
log_outputs = "1:file:{b}/log/libvirtd.log"
"""
QEMU_CONF = """user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
cgroup_controllers = [ ]
namespaces = [ ]
"""
NS_SH = """#!/bin/sh
set -e
for d in etc var run; do
  mount -t overlay overlay -o lowerdir=/$d,upperdir={b}/ovl/$d/up,workdir={b}/ovl/$d/work /$d
done
exec /usr/sbin/libvirtd -f {b}/libvirtd.conf -p {b}/libvirtd.pid -t 600
"""


def _missing() -> str:
    """Why this machine cannot run libvirtd here, or "" when it can."""
    if os.geteuid() != 0:
        return "needs root (libvirtd system mode in a private mount namespace)"
    for tool in ("/usr/sbin/libvirtd", "/usr/bin/virsh", "/usr/bin/unshare", "/usr/bin/qemu-system-ppc64"):
        if not os.access(tool, os.X_OK):
            return f"{tool} is missing (mk/libvirt.debs installs it)"
    return ""


pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(_missing()), reason=_missing() or "-")]


def domain(name: str, body: str, kind: str = DOMTYPE, metadata: str = "") -> str:
    """A minimal domain for this libvirtd (no disks: the guests only have to be started)."""
    return f"""<domain type='{kind}'>
  <name>{name}</name>
  {metadata}
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  {body}
  <devices>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


X86_OS = "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
PSERIES = domain(
    "deny-p9",
    "<os><type arch='ppc64le' machine='pseries'>hvm</type></os>"
    "<cpu mode='host-model'><model fallback='forbid'>power9</model></cpu>",
    kind="qemu",  # libvirt offers only TCG for ppc64 on an x86_64 host; the platform is still sPAPR/power9
)
# No <cpu>: QEMU's default model. host-passthrough trips a QEMU 7.2 MSR assertion on these (nested) hosts, and a
# custom qemu64 with fallback='forbid' would ask the agent for a STRICT x86-64-v1 this host cannot hide down to.
X86 = domain("ok-x86", X86_OS)
OPT_IN = domain(
    "kvmplat-run",
    X86_OS,
    metadata=f"<metadata><k:vm xmlns:k='{NS}' run='yes'><k:boot builtin='loop'/></k:vm></metadata>",
)


class Libvirtd:
    """libvirtd in a private mount namespace with the kvmplat hook installed; virsh reaches it by its socket."""

    def __init__(self, base: Path, agent_address: str) -> None:
        self.base = base
        self.uri = f"qemu:///system?socket={base}/sock/libvirt-sock"
        self._layout(agent_address)
        self.log = (base / "log" / "daemon.out").open("wb")
        self.proc = subprocess.Popen(
            ["setsid", "unshare", "-m", "--propagation", "private", str(base / "ns.sh")],
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )

    def _layout(self, agent_address: str) -> None:
        b = self.base
        for d in ("sock", "log", "xml", "ovl/etc/up/libvirt/hooks", "ovl/etc/up/kvmplat"):
            (b / d).mkdir(parents=True, exist_ok=True)
        for d in ("etc", "var", "run"):
            (b / "ovl" / d / "up").mkdir(parents=True, exist_ok=True)
            (b / "ovl" / d / "work").mkdir(parents=True, exist_ok=True)
        up = b / "ovl" / "etc" / "up"
        (b / "libvirtd.conf").write_text(LIBVIRTD_CONF.format(b=b))
        (up / "libvirt" / "qemu.conf").write_text(QEMU_CONF)
        (up / "libvirt" / "hooks" / "qemu").symlink_to(HOOK)
        # scope = all: the refusal below is of a TCG ppc64le domain, which the default scope (kvm) leaves alone
        (up / "kvmplat" / "hook.conf").write_text(f"agent = {agent_address}\ntimeout = 10\nscope = all\n")
        # A root libvirtd dies without a libvirt-qemu user, whatever qemu.conf says (LIBVIRTD.md pitfall 3).
        (up / "passwd").write_text(
            Path("/etc/passwd").read_text() + "libvirt-qemu:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin\n"
        )
        (up / "group").write_text(Path("/etc/group").read_text() + "libvirt-qemu:x:64055:\n")
        ns = b / "ns.sh"
        ns.write_text(NS_SH.format(b=b))
        ns.chmod(0o755)

    def wait_ready(self, timeout: float = 30) -> None:
        """Until the daemon's socket exists."""
        deadline = time.monotonic() + timeout
        while not (self.base / "sock" / "libvirt-sock").exists():
            assert self.proc.poll() is None, f"libvirtd exited: {self.daemon_output()}"
            assert time.monotonic() < deadline, f"libvirtd socket never appeared: {self.daemon_output()}"
            time.sleep(0.1)

    def virsh(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`virsh -c URI ARGV`, output captured."""
        cmd = ["virsh", "-c", self.uri, *argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def define(self, name: str, xml: str) -> None:
        """Defines a domain (the first call also waits for QEMU capability probing)."""
        path = self.base / "xml" / f"{name}.xml"
        path.write_text(xml)
        done = self.virsh("define", str(path))
        assert done.returncode == 0, f"virsh define {name}: {done.stderr}"

    def daemon_output(self) -> str:
        """The tail of the daemon's own output and log."""
        text = (self.base / "log" / "daemon.out").read_text(errors="replace")[-1500:]
        log = self.base / "log" / "libvirtd.log"
        return text + (log.read_text(errors="replace")[-3000:] if log.exists() else "")

    def stop(self) -> None:
        """Destroys running guests (QEMU outlives its daemon), then stops the daemon; its mounts go with it."""
        if self.proc.poll() is None and (self.base / "sock" / "libvirt-sock").exists():
            for name in self.virsh("list", "--name", timeout=60).stdout.split():
                self.virsh("destroy", name, timeout=60)
        if self.proc.poll() is None:
            stop_process(self.proc)
        self.log.close()


class StandIn(pb_grpc.AgentServicer):  # type: ignore[misc]
    """A stand-in x86_64 agent (refuses every abi but BARE_METAL, keeps VMs in a dict): proves the libvirt side on
    its own; the `kvmplat-agent` parameter runs the same tests against the real agent."""

    def __init__(self) -> None:
        self.vms: dict[str, Any] = {}

    def CheckPlatform(self, request: Any, context: Any) -> Any:
        if request.spec.platform.abi not in (pb.ABI_UNSPECIFIED, pb.BARE_METAL):
            abi = pb.Abi.Name(request.spec.platform.abi)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"platform.abi {abi}: this host offers BARE_METAL")
        return pb.CheckPlatformResponse()

    def CreateVm(self, request: Any, context: Any) -> Any:
        self.vms[request.spec.name] = pb.Vm(spec=request.spec, state=pb.CREATED)
        return self.vms[request.spec.name]

    def StartVm(self, request: Any, context: Any) -> Any:
        self.vms[request.name].state = pb.RUNNING
        return self.vms[request.name]

    def StopVm(self, request: Any, context: Any) -> Any:
        self.vms[request.name].state = pb.STOPPED
        return self.vms[request.name]

    def DestroyVm(self, request: Any, context: Any) -> Any:
        if request.name not in self.vms:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no VM {request.name}")
        if self.vms[request.name].state == pb.RUNNING:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "VM is RUNNING: stop it first")
        del self.vms[request.name]
        return pb.DestroyVmResponse()

    def ListVms(self, request: Any, context: Any) -> Any:
        return pb.ListVmsResponse(vms=list(self.vms.values()))


def _stand_in(tmp: Path) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_AgentServicer_to_server(StandIn(), server)
    address = f"unix://{tmp}/agent.sock"
    server.add_insecure_port(address)
    server.start()
    try:
        yield address
    finally:
        server.stop(None)


def _real_agent(tmp: Path) -> Iterator[str]:
    with LocalAgent.start(tmp, timeout=30) as agent:
        yield agent.address


@pytest.fixture(params=["stand-in", "kvmplat-agent"])
def agent_address(request: pytest.FixtureRequest) -> Iterator[str]:
    """An agent on a private unix socket: the stand-in, or the real kvmplat agent."""
    tmp = Path(tempfile.mkdtemp(prefix="kvl-agent-"))
    try:
        yield from (_stand_in(tmp) if request.param == "stand-in" else _real_agent(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def kvmplat_list(address: str) -> list[str]:
    """Names of the VMs on the agent (`kvmplat list --json` is a ListVmsResponse); [] when it cannot be listed."""
    env = {**os.environ, "KVMPLAT_AGENT": address}
    done = subprocess.run([str(BIN / "kvmplat"), "list", "--json"], env=env, capture_output=True, text=True, timeout=30)
    if done.returncode:
        return []
    return [vm["spec"]["name"] for vm in json.loads(done.stdout).get("vms", [])]


@pytest.fixture
def libvirtd(agent_address: str) -> Iterator[Libvirtd]:
    """A private libvirtd with the hook installed, talking to the test's agent."""
    base = Path(tempfile.mkdtemp(prefix="kvl-"))
    daemon = Libvirtd(base, agent_address)
    try:
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_virsh_start_shows_the_hook_refusal_and_admits_x86(libvirtd: Libvirtd) -> None:
    libvirtd.define("deny-p9", PSERIES)
    libvirtd.define("ok-x86", X86)
    denied = libvirtd.virsh("start", "deny-p9")
    assert denied.returncode == 1, denied.stdout
    assert "Hook script execution failed" in denied.stderr, denied.stderr
    hook_line = denied.stderr.rpartition("unexpected exit status 1: ")[2].strip()
    # libvirt expands machine='pseries' to its versioned name (pseries-7.2) before the hook sees the XML.
    assert re.match(r"kvmplat: domain 'deny-p9' refused: ppc64le pseries\S*, compat power9: \S", hook_line), hook_line
    assert len(hook_line.splitlines()) == 1
    assert libvirtd.virsh("domstate", "deny-p9").stdout.strip() == "shut off"
    admitted = libvirtd.virsh("start", "ok-x86")
    # What QEMU then does is not the hook's business; the hook must not be what stopped it.
    assert "Hook script execution failed" not in admitted.stderr, admitted.stderr
    if admitted.returncode == 0:
        libvirtd.virsh("destroy", "ok-x86")


def test_opted_in_domain_runs_on_the_agent_while_libvirt_runs_it(libvirtd: Libvirtd, agent_address: str) -> None:
    libvirtd.define("kvmplat-run", OPT_IN)
    started = libvirtd.virsh("start", "kvmplat-run")
    if started.returncode != 0:
        assert "Hook script execution failed" not in started.stderr, started.stderr
        pytest.skip(f"QEMU could not start the domain here: {started.stderr.strip()[-200:]}")
    assert "kvmplat-run" in kvmplat_list(agent_address)
    assert libvirtd.virsh("destroy", "kvmplat-run").returncode == 0
    deadline = time.monotonic() + 20
    while "kvmplat-run" in kvmplat_list(agent_address):
        assert time.monotonic() < deadline, "the agent still has the VM after virsh destroy"
        time.sleep(0.2)
