"""The hook's `main` with injected I/O and a fake agent: every operation, policy and configuration path."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kvmplat.client.libvirt.domain_xml import MAX_XML_BYTES
from kvmplat.client.libvirt.qemu_hook import AgentError, HookConfig, load_config, main

X86 = """<domain type='kvm'><name>web1</name><memory unit='MiB'>64</memory><vcpu>2</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><features><kvm><hidden state='on'/></kvm></features></domain>"""
PPC = """<domain type='kvm'><name>p9guest</name><memory unit='KiB'>1048576</memory><vcpu>4</vcpu>
<os><type arch='ppc64le' machine='pseries'>hvm</type></os>
<cpu mode='host-model'><model fallback='forbid'>power9</model></cpu></domain>"""
OPT_IN = """<domain type='kvm'><name>loop1</name><memory unit='MiB'>16</memory>
<metadata><k:vm xmlns:k='http://kvmplat.io/xmlns/domain/1' run='yes'><k:boot builtin='loop'/></k:vm></metadata>
<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"""


class FakeAgent:
    """Records calls; `answers` maps a method to an AgentError to raise (or a list of them, consumed in order)."""

    def __init__(self, answers: dict[str, Any] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[str, Any]] = []
        self.configs: list[HookConfig] = []

    def __call__(self, config: HookConfig) -> FakeAgent:
        self.configs.append(config)
        return self

    def call(self, method: str, request: Any) -> Any:
        self.calls.append((method, request))
        answer = self.answers.get(method)
        if isinstance(answer, list):
            answer = answer.pop(0) if answer else None
        if answer is not None:
            raise answer
        return None

    def close(self) -> None:
        pass


def run(
    argv: list[str],
    xml: str | bytes,
    agent: FakeAgent,
    env: dict[str, str] | None = None,
    journal: list[str] | None = None,
) -> tuple[int, str, str]:
    """main() on in-memory streams; returns (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    data = xml.encode() if isinstance(xml, str) else xml
    env = {"KVMPLAT_HOOK_CONFIG": "", **(env or {})}
    sink = journal.append if journal is not None else None
    status = main(argv, io.BytesIO(data), out, err, env, agent_factory=agent, journal=sink)  # type: ignore[arg-type]
    return status, out.getvalue(), err.getvalue()


def conf(tmp_path: Path, text: str) -> dict[str, str]:
    """The environment pointing the hook at a hook.conf holding `text`."""
    path = tmp_path / "hook.conf"
    path.write_text(text)
    return {"KVMPLAT_HOOK_CONFIG": str(path)}


PREPARE = ["web1", "prepare", "begin", "-"]


@pytest.fixture(autouse=True)
def no_system_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read the machine's /etc/kvmplat/hook.conf."""
    monkeypatch.setattr("kvmplat.client.libvirt.qemu_hook.CONFIG_PATH", "/nonexistent/kvmplat-hook.conf")


def test_prepare_admits_a_possible_platform() -> None:
    agent = FakeAgent()
    status, out, err = run(PREPARE, X86, agent)
    assert (status, out) == (0, "")
    # issue 18: the administrator sees what kvmplat will not apply, even when the platform is admitted
    assert err.splitlines() == [
        "kvmplat: domain 'web1': warning: os/type machine 'pc': kvmplat runs its own minimal PC, not QEMU's chipset",
        "kvmplat: domain 'web1': warning: no os/kernel and no kvmplat:boot: kvmplat cannot boot from disks or firmware",
    ]
    method, request = agent.calls[0]
    assert method == "CheckPlatform" and request.spec.name == "web1" and list(request.spec.platform.pv) == []


def test_prepare_refuses_with_one_line_naming_the_platform() -> None:
    refusal = AgentError("FAILED_PRECONDITION", "platform.abi SPAPR cannot be honoured: this host is x86_64")
    status, out, err = run(["p9guest", "prepare", "begin", "-"], PPC, FakeAgent({"CheckPlatform": refusal}))
    assert status == 1 and out == ""
    assert err.count("\n") == 1
    assert "p9guest" in err and "ppc64le pseries, compat power9" in err and "SPAPR cannot be honoured" in err


def test_invalid_argument_is_a_refusal_too() -> None:
    status, _, err = run(PREPARE, X86, FakeAgent({"CheckPlatform": AgentError("INVALID_ARGUMENT", "spec.vcpus: 0")}))
    assert status == 1 and "spec.vcpus" in err


def test_hostile_xml_is_refused_before_any_agent_call(tmp_path: Path) -> None:
    secret = tmp_path / "s"
    secret.write_text("TOPSECRET")
    xml = f'<!DOCTYPE d [<!ENTITY x SYSTEM "file://{secret}">]><domain><name>&x;</name></domain>'
    agent = FakeAgent()
    status, _, err = run(PREPARE, xml, agent)
    assert status == 1 and "DTD" in err and "TOPSECRET" not in err and agent.calls == []


def test_oversize_stdin_is_drained_and_refused() -> None:
    stream = io.BytesIO(b" " * (MAX_XML_BYTES + 100_000))
    err = io.StringIO()
    status = main(PREPARE, stream, io.StringIO(), err, {}, agent_factory=FakeAgent())  # type: ignore[arg-type]
    assert status == 1 and "larger than" in err.getvalue() and stream.read() == b""


def test_non_utf8_is_refused() -> None:
    status, _, err = run(PREPARE, b"<domain>\xff</domain>", FakeAgent())
    assert status == 1 and "UTF-8" in err


@pytest.mark.parametrize("code", ["UNAVAILABLE", "DEADLINE_EXCEEDED"])
def test_unreachable_agent_fails_closed_by_default(code: str) -> None:
    agent = FakeAgent({"CheckPlatform": AgentError(code, "connect failed: No such file or directory")})
    status, _, err = run(PREPARE, X86, agent)
    assert status == 1 and "unreachable" in err and "No such file or directory" in err and "fail-closed" in err


def test_unreachable_agent_fails_open_by_configuration(tmp_path: Path) -> None:
    conf = tmp_path / "hook.conf"
    conf.write_text("# comment\non_unreachable = fail-open  # admit when no agent\n")
    agent = FakeAgent({"CheckPlatform": AgentError("UNAVAILABLE", "down")})
    status, _, err = run(PREPARE, X86, agent, {"KVMPLAT_HOOK_CONFIG": str(conf)})
    assert status == 0 and "fail-open" in err


def test_kvmplat_agent_overrides_the_configured_address(tmp_path: Path) -> None:
    conf = tmp_path / "hook.conf"
    conf.write_text("agent = unix:///from/file.sock\ntimeout = 2.5\ntls_ca = /ca.pem\n")
    cfg = load_config({"KVMPLAT_HOOK_CONFIG": str(conf), "KVMPLAT_AGENT": "unix:///from/env.sock"})
    assert cfg == HookConfig(agent="unix:///from/env.sock", timeout=2.5, tls_ca="/ca.pem")
    assert load_config({"KVMPLAT_HOOK_CONFIG": str(conf)}).agent == "unix:///from/file.sock"


def test_missing_default_config_means_defaults() -> None:
    assert load_config({}) == HookConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour = blue\n", "expected one of"),
        ("agent\n", "expected one of"),
        ("on_unreachable = maybe\n", "fail-closed or fail-open"),
        ("timeout = soon\n", "number of seconds"),
    ],
)
def test_bad_configuration_fails_closed(tmp_path: Path, text: str, message: str) -> None:
    conf = tmp_path / "hook.conf"
    conf.write_text(text)
    agent = FakeAgent()
    status, _, err = run(PREPARE, X86, agent, {"KVMPLAT_HOOK_CONFIG": str(conf)})
    assert status == 1 and message in err and agent.calls == []


def test_missing_explicit_config_fails_closed() -> None:
    status, _, err = run(PREPARE, X86, FakeAgent(), {"KVMPLAT_HOOK_CONFIG": "/nonexistent/hook.conf"})
    assert status == 1 and "does not exist" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["web1", "some-future-op", "begin", "-"],
        ["web1", "migrate", "begin", "-"],
        ["web1", "restore", "begin", "-"],
        ["web1", "reconnect", "begin", "-"],
        ["web1", "attach", "begin", "-"],
        ["web1", "prepare", "end", "-"],
    ],
)
def test_other_operations_exit_0_without_output_or_calls(argv: list[str]) -> None:
    agent = FakeAgent()
    assert run(argv, "not even xml", agent) == (0, "", "")
    assert agent.calls == []


@pytest.mark.parametrize("op", [("start", "begin"), ("started", "begin"), ("stopped", "end"), ("release", "end")])
def test_domains_not_opted_in_are_only_checked(op: tuple[str, str]) -> None:
    agent = FakeAgent()
    assert run(["web1", *op, "-"], X86, agent) == (0, "", "")
    assert agent.calls == []


def test_opted_in_domain_lifecycle() -> None:
    agent = FakeAgent()
    for op in [("prepare", "begin"), ("start", "begin"), ("started", "begin"), ("stopped", "end")]:
        assert run(["loop1", *op, "-"], OPT_IN, agent)[0] == 0
    assert [m for m, _ in agent.calls] == ["CheckPlatform", "CreateVm", "StartVm", "DestroyVm"]
    create = agent.calls[1][1]
    assert create.spec.boot.builtin == "loop" and not create.start
    assert agent.calls[2][1].name == "loop1"


def test_a_running_vm_is_stopped_before_destroy() -> None:
    agent = FakeAgent({"DestroyVm": [AgentError("FAILED_PRECONDITION", "RUNNING")]})
    assert run(["loop1", "stopped", "end", "-"], OPT_IN, agent)[0] == 0
    assert [m for m, _ in agent.calls] == ["DestroyVm", "StopVm", "DestroyVm"]


def test_release_after_stopped_is_quiet() -> None:
    agent = FakeAgent({"DestroyVm": AgentError("NOT_FOUND", "no VM loop1")})
    assert run(["loop1", "release", "end", "-"], OPT_IN, agent) == (0, "", "")


def test_destroy_failure_is_logged_but_not_fatal() -> None:
    agent = FakeAgent({"DestroyVm": AgentError("INTERNAL", "runner stuck")})
    status, _, err = run(["loop1", "stopped", "end", "-"], OPT_IN, agent)
    assert status == 0 and "runner stuck" in err


@pytest.mark.parametrize(("op", "method"), [("start", "CreateVm"), ("started", "StartVm")])
def test_opted_in_start_failure_aborts_the_start(op: str, method: str) -> None:
    agent = FakeAgent({method: AgentError("ALREADY_EXISTS", "a VM named loop1 exists")})
    status, _, err = run(["loop1", op, "begin", "-"], OPT_IN, agent)
    assert status == 1 and "loop1 exists" in err and err.count("\n") == 1


def test_usage() -> None:
    status, _, err = run(["web1"], X86, FakeAgent())
    assert status == 2 and "usage" in err


def test_real_agent_client_reports_an_unreachable_socket(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    env = {"KVMPLAT_AGENT": f"unix://{tmp_path}/none.sock", "KVMPLAT_HOOK_CONFIG": ""}
    status = main(PREPARE, io.BytesIO(X86.encode()), out, err, env)
    assert status == 1 and "unreachable" in err.getvalue()


def test_real_agent_client_refuses_a_bad_address() -> None:
    out, err = io.StringIO(), io.StringIO()
    status = main(PREPARE, io.BytesIO(X86.encode()), out, err, {"KVMPLAT_AGENT": "http://agent"})
    assert status == 1 and "expected unix" in err.getvalue()


def test_hook_imports_stay_minimal() -> None:
    """The hook imports grpc and the stubs only: no grpc_status/health/reflection, no Client (GRPC.md §3.3)."""
    code = (
        "import io, sys\n"
        "from kvmplat.client.libvirt.qemu_hook import main\n"
        f"main({PREPARE!r}, io.BytesIO({X86.encode()!r}), io.StringIO(), io.StringIO(),"
        " {'KVMPLAT_AGENT': 'unix:///nonexistent/a.sock'})\n"
        # grpc itself imports the bare grpc_health/grpc_reflection packages (empty shims); their modules are heavy.
        "heavy = [m for m in sys.modules if m.startswith(('grpc_status', 'grpc_health.', 'grpc_reflection.',"
        " 'google.rpc')) or m in ('kvmplat.client.agent', 'kvmplat.client.errors', 'libvirt')]\n"
        "assert 'grpc' in sys.modules and not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
