"""What the agent refuses to start with (exit 2, the reason on stderr), plain TCP only with --insecure (and a
warning), the unix socket's permissions (0600, or 0660 with --socket-group; never world-writable) and the gRPC
message size limit (an oversized request is RESOURCE_EXHAUSTED, not INTERNAL)."""

from __future__ import annotations

import grp
import os
import stat
import tempfile
from pathlib import Path

import grpc
import pytest
from kvmplat.v1 import agent_pb2 as pb
from kvmplat.v1 import agent_pb2_grpc as pbg
from tls_harness import Agent, free_port, tls_flags

pytestmark = [pytest.mark.e2e]


def refusals(pki: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Flag sets the agent must refuse, each with a phrase its stderr must contain."""
    tcp = ["--listen", f"tcp://127.0.0.1:{free_port()}"]
    cert, key, ca = tls_flags(pki)[1::2]
    bad_authz = tmp / "bad.yaml"  # written by the test: `operator: admin`
    return {
        "plain-tcp": (tcp, "--tls-cert, --tls-key, --tls-client-ca"),
        "tls-without-client-ca": ([*tcp, "--tls-cert", cert, "--tls-key", key], "--tls-client-ca"),
        "tls-and-insecure": ([*tcp, *tls_flags(pki), "--insecure"], "--insecure"),
        "missing-key-file": ([*tcp, "--tls-cert", cert, "--tls-key", str(tmp / "nope"), "--tls-client-ca", ca], "nope"),
        "key-not-pem": ([*tcp, "--tls-cert", cert, "--tls-key", str(bad_authz), "--tls-client-ca", ca], "not a PEM"),
        "authz-unknown-role": ([*tcp, *tls_flags(pki), "--authz", str(bad_authz)], "role 'admin'"),
        "authz-without-tls": ([*tcp, "--insecure", "--authz", str(bad_authz)], "--authz needs TLS"),
        "tls-on-unix": (["--listen", f"unix://{tmp}/a.sock", *tls_flags(pki)], "tcp:// only"),
        "unknown-group": (["--listen", f"unix://{tmp}/b.sock", "--socket-group", "no-such-grp"], "no such group"),
        "group-on-tcp": ([*tcp, "--insecure", "--socket-group", "root"], "unix:// sockets only"),
    }


CASES = list(refusals(Path("/nonexistent"), Path("/nonexistent")))


@pytest.mark.parametrize("case", CASES)
def test_refuses_to_start_with_exit_2_and_the_reason(pki: Path, tmp_path: Path, case: str) -> None:
    (tmp_path / "bad.yaml").write_text("operator: admin\n")
    argv, phrase = refusals(pki, tmp_path)[case]
    listen = argv[argv.index("--listen") + 1]
    rest = argv[argv.index("--listen") + 2 :]
    a = Agent(listen, *rest, tmp=Path(tempfile.mkdtemp(prefix="kvmplat-sec-")))
    try:
        assert a.wait_exit() == 2, a.log()
        assert phrase in a.log(), a.log()
    finally:
        a.close()


@pytest.mark.kvm
def test_insecure_serves_plain_tcp_and_warns() -> None:
    port = free_port()
    a = Agent(f"tcp://127.0.0.1:{port}", "--insecure")
    st = pbg.AgentStub(grpc.insecure_channel(f"127.0.0.1:{port}"))  # type: ignore[no-untyped-call]
    try:
        a.wait_ready(st)
        assert "WARNING" in a.log() and "--insecure" in a.log(), a.log()
    finally:
        a.close(st)


def _unix_agent(*flags: str) -> tuple[Agent, str, pbg.AgentStub]:
    tmp = Path(tempfile.mkdtemp(prefix="kvmplat-sec-"))
    path = f"{tmp}/sock/agent.sock"
    a = Agent(f"unix://{path}", *flags, tmp=tmp)
    st = pbg.AgentStub(grpc.insecure_channel(f"unix:{path}"))  # type: ignore[no-untyped-call]
    a.wait_ready(st)
    return a, path, st


def _other_group() -> grp.struct_group:
    allowed = {g.gr_gid for g in grp.getgrall()} if os.getuid() == 0 else set(os.getgroups())
    for g in grp.getgrall():
        if g.gr_gid in allowed and g.gr_gid != os.getgid():
            return g
    pytest.skip("no second group to give the socket to")


@pytest.mark.kvm
def test_unix_socket_is_0600_by_default() -> None:
    a, path, _ = _unix_agent()
    try:
        st_ = os.stat(path)
        assert stat.S_ISSOCK(st_.st_mode) and stat.S_IMODE(st_.st_mode) == 0o600
    finally:
        a.close()


@pytest.mark.kvm
def test_socket_group_makes_it_0660_with_that_group_never_world_writable() -> None:
    g = _other_group()
    a, path, _ = _unix_agent("--socket-group", g.gr_name)
    try:
        st_ = os.stat(path)
        assert stat.S_IMODE(st_.st_mode) == 0o660 and st_.st_gid == g.gr_gid
        assert not st_.st_mode & (stat.S_IWOTH | stat.S_IROTH)
    finally:
        a.close()


@pytest.mark.kvm
def test_oversized_message_is_resource_exhausted_not_internal() -> None:
    a, _, st = _unix_agent()
    try:
        with pytest.raises(grpc.RpcError) as info:
            st.WriteConsole(pb.WriteConsoleRequest(name="x", data=b"\0" * (5 << 20)), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            st.CreateVm(pb.CreateVmRequest(spec=pb.VmSpec(name="n" * (5 << 20))), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert st.ListVms(pb.ListVmsRequest(), timeout=5).vms == []
    finally:
        a.close(st)
