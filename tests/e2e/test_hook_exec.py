"""The hook executable run exactly as libvirtd runs it (argv, XML on stdin, libvirtd's bare environment, through a
symlink like /etc/libvirt/hooks/qemu), against a stand-in agent serving the real gRPC contract."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from kvmplat.v1 import agent_pb2 as pb
from kvmplat.v1 import agent_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "libvirt-hooks" / "qemu"
DATA = Path(__file__).resolve().parents[1] / "golden" / "domains"
X86 = (DATA / "x86-kvm-hidden-host-model.xml").read_text()
PPC = (DATA / "ppc64le-pseries-power9-host-model.xml").read_text()
OPT_IN = (DATA / "x86-opt-in-builtin-labels.xml").read_text()


class StandIn(pb_grpc.AgentServicer):  # type: ignore[misc]
    """Answers like an x86_64 agent: refuses non-BARE_METAL abis; records lifecycle calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def _note(self, what: str) -> None:
        with self.lock:
            self.calls.append(what)

    def CheckPlatform(self, request: Any, context: Any) -> Any:
        self._note(f"check {request.spec.name}")
        if request.spec.platform.abi not in (pb.ABI_UNSPECIFIED, pb.BARE_METAL):
            abi = pb.Abi.Name(request.spec.platform.abi)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"platform.abi {abi} cannot be honoured on x86_64")
        return pb.CheckPlatformResponse(effective_platform=pb.EffectivePlatform(abi=pb.BARE_METAL))

    def CreateVm(self, request: Any, context: Any) -> Any:
        self._note(f"create {request.spec.name} {request.spec.boot.builtin}")
        return pb.Vm(spec=request.spec, state=pb.CREATED)

    def StartVm(self, request: Any, context: Any) -> Any:
        self._note(f"start {request.name}")
        return pb.Vm(state=pb.RUNNING)

    def DestroyVm(self, request: Any, context: Any) -> Any:
        self._note(f"destroy {request.name}")
        return pb.DestroyVmResponse()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[str, StandIn]]:
    """A stand-in agent on a private unix socket."""
    servicer = StandIn()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_AgentServicer_to_server(servicer, server)
    address = f"unix://{tmp_path}/agent.sock"
    server.add_insecure_port(address)
    server.start()
    try:
        yield address, servicer
    finally:
        server.stop(None)


@pytest.fixture
def hook(tmp_path: Path) -> Path:
    """The hook reached through a symlink, as installed in /etc/libvirt/hooks."""
    link = tmp_path / "hooks" / "qemu"
    link.parent.mkdir()
    link.symlink_to(HOOK)
    return link


def libvirtd_env(**extra: str) -> dict[str, str]:
    """The environment libvirtd gives a hook: LC_ALL, PATH and HOME only (LIBVIRTD.md §4)."""
    path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return {"LC_ALL": "C", "PATH": path, "HOME": os.environ.get("HOME", "/root"), **extra}


def call(hook: Path, name: str, op: str, sub: str, xml: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`hook NAME OP SUB -` with the XML on stdin."""
    return subprocess.run(
        [str(hook), name, op, sub, "-"], input=xml, env=libvirtd_env(**env), capture_output=True, text=True, timeout=60
    )


def test_hook_is_an_executable_with_a_shebang() -> None:
    assert os.access(HOOK, os.X_OK) and HOOK.read_text().startswith("#!/bin/sh\n")


def warnings_only(stderr: str) -> bool:
    """Whether stderr holds only the translation's warnings (issue 18: an admitted domain's are shown)."""
    return all(line.startswith("kvmplat: domain ") and ": warning: " in line for line in stderr.splitlines())


def test_admits_x86_and_refuses_pseries_with_a_reason(hook: Path, agent: tuple[str, StandIn], tmp_path: Path) -> None:
    address, servicer = agent
    ok = call(hook, "web1", "prepare", "begin", X86, KVMPLAT_AGENT=address, KVMPLAT_HOOK_CONFIG="/dev/null")
    assert (ok.returncode, ok.stdout) == (0, "") and warnings_only(ok.stderr)
    assert "cannot boot from disks or firmware" in ok.stderr
    conf = tmp_path / "all.conf"
    conf.write_text("scope = all\n")  # a ppc64le domain is none of an x86_64 host's business under scope = kvm
    no = call(hook, "p9guest", "prepare", "begin", PPC, KVMPLAT_AGENT=address, KVMPLAT_HOOK_CONFIG=str(conf))
    assert no.returncode == 1 and no.stdout == ""
    assert len(no.stderr.splitlines()) == 1
    assert "ppc64le pseries-7.2, compat power9" in no.stderr and "SPAPR cannot be honoured" in no.stderr
    assert servicer.calls == ["check web1", "check p9guest"]


def test_an_aarch64_tcg_domain_passes_untouched(hook: Path, agent: tuple[str, StandIn], tmp_path: Path) -> None:
    """Issue 18: with the hook installed, an existing aarch64 TCG domain could not start any more."""
    address, servicer = agent
    arm = (
        '<domain type="qemu"><name>arm1</name><memory unit="MiB">64</memory>'
        '<os><type arch="aarch64" machine="virt">hvm</type></os></domain>'
    )
    empty = tmp_path / "hook.conf"
    empty.write_text("")
    for op, sub in [("prepare", "begin"), ("start", "begin"), ("started", "begin"), ("stopped", "end")]:
        done = call(hook, "arm1", op, sub, arm, KVMPLAT_AGENT=address, KVMPLAT_HOOK_CONFIG=str(empty))
        assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), op
    assert servicer.calls == []


def test_refuses_an_external_entity_without_reading_it(hook: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("kvmplat-secret-31337")
    xxe = f'<?xml version="1.0"?>\n<!DOCTYPE domain [<!ENTITY leak SYSTEM "file://{secret}">]>\n' + X86.replace(
        "<name>web1</name>", "<name>&leak;</name>"
    )
    done = call(hook, "x", "prepare", "begin", xxe, KVMPLAT_AGENT="unix:///nonexistent.sock")
    assert done.returncode == 1 and "kvmplat-secret" not in done.stdout + done.stderr


def test_unknown_operations_exit_0(hook: Path) -> None:
    done = call(hook, "web1", "some-future-op", "begin", X86, KVMPLAT_AGENT="unix:///nonexistent.sock")
    assert (done.returncode, done.stdout) == (0, "")


def test_fail_closed_then_fail_open(hook: Path, tmp_path: Path) -> None:
    gone = f"unix://{tmp_path}/gone.sock"
    closed = call(hook, "web1", "prepare", "begin", X86, KVMPLAT_AGENT=gone, KVMPLAT_HOOK_CONFIG="/dev/null")
    assert closed.returncode == 1 and "unreachable" in closed.stderr
    conf = tmp_path / "hook.conf"
    conf.write_text(f"agent = {gone}\non_unreachable = fail-open\n")
    opened = call(hook, "web1", "prepare", "begin", X86, KVMPLAT_HOOK_CONFIG=str(conf))
    assert opened.returncode == 0 and "fail-open" in opened.stderr


def test_opted_in_domain_is_created_started_and_destroyed(hook: Path, agent: tuple[str, StandIn]) -> None:
    address, servicer = agent
    for op, sub in [("prepare", "begin"), ("start", "begin"), ("started", "begin"), ("stopped", "end")]:
        done = call(hook, "kvmplat-loop", op, sub, OPT_IN, KVMPLAT_AGENT=address, KVMPLAT_HOOK_CONFIG="/dev/null")
        assert done.returncode == 0, done.stderr
    assert servicer.calls == [
        "check kvmplat-loop",
        "create kvmplat-loop loop",
        "start kvmplat-loop",
        "destroy kvmplat-loop",
    ]


def test_launcher_falls_back_to_python3_with_a_clear_line(tmp_path: Path) -> None:
    """A copied hook (no .venv beside it) runs python3; without kvmplat there it fails closed, naming the cause."""
    copy = tmp_path / "qemu"
    copy.write_text(HOOK.read_text())
    copy.chmod(0o755)
    env = libvirtd_env()
    env["PATH"] = f"{tmp_path / 'bin'}:{env['PATH']}"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3").symlink_to("/usr/bin/python3" if Path("/usr/bin/python3").exists() else "python3")
    done = subprocess.run(
        [str(copy), "web1", "prepare", "begin", "-"], input=X86, env=env, capture_output=True, text=True
    )
    assert done.returncode in (0, 1)
    if done.returncode == 1:
        assert done.stderr.startswith("kvmplat:") and len(done.stderr.splitlines()) == 1


def test_fast_start_and_site_fallback(tmp_path: Path, agent: tuple[str, StandIn]) -> None:
    """The launcher runs the venv's python with -S and mounts the source tree; where the tree is not beside the
    .venv (an installed layout), it falls back to site.py and the installed package."""
    address, servicer = agent
    env = {"KVMPLAT_AGENT": address, "KVMPLAT_HOOK_CONFIG": "/dev/null"}
    tree = call(HOOK, "web1", "prepare", "begin", X86, **env)
    (tmp_path / "libvirt-hooks").mkdir()
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    elsewhere = tmp_path / "libvirt-hooks" / "qemu"
    elsewhere.write_text(HOOK.read_text())
    elsewhere.chmod(0o755)
    installed = call(elsewhere, "web1", "prepare", "begin", X86, **env)
    assert (tree.returncode, installed.returncode, tree.stderr) == (0, 0, installed.stderr)
    assert warnings_only(tree.stderr)
    assert servicer.calls == ["check web1", "check web1"]


def test_the_launcher_finds_the_source_tree_without_site() -> None:
    """Under -S the launcher mounts the project's tree itself (site.py's editable finder costs every hook start):
    the check that decides it names the hook module where the tree keeps it."""
    venv_python = ROOT / ".venv" / "bin" / "python"
    code = (
        "import runpy, sys; g = runpy.run_path(sys.argv[1], run_name='launcher'); "
        "print(g['_mount_source_tree'](), 'site' in sys.modules)"
    )
    out = subprocess.run([str(venv_python), "-S", "-c", code, str(HOOK)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"], out.stderr
