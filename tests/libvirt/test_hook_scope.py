"""Issue 18: the hook judges only the domains in its `scope` (hook.conf), and tells the administrator what kvmplat
will not apply. Out-of-scope domains pass untouched: exit 0, nothing printed, no agent call."""

from __future__ import annotations

from pathlib import Path

import pytest
from kvmplat.client.libvirt.domain_xml import parse_document
from kvmplat.client.libvirt.hook_scope import in_scope
from kvmplat.client.libvirt.qemu_hook import AgentError, ConfigError, load_config
from test_hook import OPT_IN, PREPARE, X86, FakeAgent, conf, run

ARM_TCG = """<domain type="qemu"><name>arm1</name><memory unit="MiB">64</memory>
<os><type arch="aarch64" machine="virt">hvm</type></os></domain>"""
X86_TCG = """<domain type="qemu"><name>tcg1</name><memory unit="MiB">64</memory>
<os><type arch="x86_64" machine="pc">hvm</type></os></domain>"""
WINDOWS = """<domain type="kvm"><name>win1</name><memory unit="GiB">4</memory>
<os><type arch="x86_64" machine="q35">hvm</type></os><features><hyperv mode="custom"><relaxed state="on"/>
</hyperv></features></domain>"""
NO_ARCH = """<domain type="kvm"><name>plain</name><memory unit="MiB">64</memory><os><type>hvm</type></os></domain>"""


@pytest.fixture(autouse=True)
def no_system_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """No system hook.conf, wherever the tests run."""
    monkeypatch.setattr("kvmplat.client.libvirt.qemu_hook.CONFIG_PATH", "/nonexistent/kvmplat-hook.conf")


@pytest.mark.parametrize("op", [["arm1", "prepare", "begin", "-"], ["arm1", "start", "begin", "-"]])
def test_an_aarch64_tcg_domain_passes_untouched_by_default(op: list[str], tmp_path: Path) -> None:
    """Before: `cannot read its domain XML: os/type arch 'aarch64' is not supported`, exit 1."""
    agent = FakeAgent()
    assert run(op, ARM_TCG, agent, conf(tmp_path, "")) == (0, "", "")
    assert agent.calls == []


def test_a_tcg_domain_of_the_host_arch_is_not_checked_under_scope_kvm() -> None:
    agent = FakeAgent({"CheckPlatform": AgentError("FAILED_PRECONDITION", "would refuse")})
    assert run(["tcg1", "prepare", "begin", "-"], X86_TCG, agent) == (0, "", "")
    assert agent.calls == []


def test_a_kvm_domain_without_arch_is_the_hosts_and_checked() -> None:
    agent = FakeAgent()
    status, _, _ = run(["plain", "prepare", "begin", "-"], NO_ARCH, agent)
    assert status == 0 and [m for m, _ in agent.calls] == ["CheckPlatform"]


def test_scope_opted_in_leaves_a_windows_hyperv_guest_alone(tmp_path: Path) -> None:
    """Before: any <hyperv> guest was refused on a host without Hyper-V emulation; now an operator can say so."""
    refusal = AgentError("FAILED_PRECONDITION", "platform.pv HYPERV cannot be honoured")
    agent = FakeAgent({"CheckPlatform": refusal})
    env = conf(tmp_path, "scope = opted-in\n")
    assert run(["win1", "prepare", "begin", "-"], WINDOWS, agent, env) == (0, "", "")
    assert agent.calls == []
    status, _, err = run(["win1", "prepare", "begin", "-"], WINDOWS, agent, conf(tmp_path, "scope = kvm\n"))
    assert status == 1 and "HYPERV" in err  # the default still judges it: it is a KVM domain of this host's arch


def test_scope_opted_in_checks_domains_with_kvmplat_metadata(tmp_path: Path) -> None:
    agent = FakeAgent()
    status, _, _ = run(["loop1", "prepare", "begin", "-"], OPT_IN, agent, conf(tmp_path, "scope = opted-in\n"))
    assert status == 0 and [m for m, _ in agent.calls] == ["CheckPlatform"]


def test_scope_all_judges_even_what_kvmplat_cannot_read(tmp_path: Path) -> None:
    status, out, err = run(["arm1", "prepare", "begin", "-"], ARM_TCG, FakeAgent(), conf(tmp_path, "scope = all\n"))
    assert status == 1 and out == "" and "aarch64" in err and err.count("\n") == 1


def test_an_unknown_scope_refuses_starts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="scope must be one of kvm, opted-in, all"):
        load_config(conf(tmp_path, "scope = some\n"))
    status, _, err = run(PREPARE, X86, FakeAgent(), conf(tmp_path, "scope = some\n"))
    assert status == 1 and "scope" in err


def test_warnings_reach_the_journal_and_stderr_when_admitted() -> None:
    journal: list[str] = []
    status, _, err = run(PREPARE, X86, FakeAgent(), journal=journal)
    assert status == 0 and journal and err.splitlines() == [f"kvmplat: {line}" for line in journal]
    assert any("cannot boot from disks or firmware" in line for line in journal)


def test_a_refusal_keeps_stderr_to_one_line_and_the_warnings_go_to_the_journal() -> None:
    journal: list[str] = []
    agent = FakeAgent({"CheckPlatform": AgentError("INVALID_ARGUMENT", "spec.boot: name a built-in payload")})
    status, _, err = run(PREPARE, X86, agent, journal=journal)
    assert status == 1 and err.count("\n") == 1 and "spec.boot" in err
    assert any("cannot boot from disks or firmware" in line for line in journal)


def test_in_scope_is_a_pure_function_of_the_document() -> None:
    cases = {ARM_TCG: (False, False, True), X86_TCG: (False, False, True), WINDOWS: (True, False, True)}
    cases[OPT_IN] = (True, True, True)
    cases[ARM_TCG.replace("kvmplat", "").replace('"qemu"', '"kvm"')] = (True, False, True)  # cannot start anyway
    for xml, expected in cases.items():
        root = parse_document(xml)
        assert tuple(in_scope(root, s) for s in ("kvm", "opted-in", "all")) == expected, xml


@pytest.mark.parametrize(("op", "status"), [(PREPARE, 1), (["web1", "stopped", "end", "-"], 0)])
def test_an_unexpected_error_is_one_line_never_a_traceback(op: list[str], status: int) -> None:
    """Issue 18: no traceback from the hook; a blocking operation fails closed."""

    def broken(config: object) -> FakeAgent:
        raise RuntimeError("grpc exploded\nwith a second line")

    xml = OPT_IN.replace("loop1", "web1")
    code, out, err = run(op, xml, broken)  # type: ignore[arg-type]
    assert (code, out) == (
        status,
        "",
    ) and err == "kvmplat: hook failed: RuntimeError: grpc exploded with a second line\n"


def test_prepare_asks_the_full_dry_run_only_for_domains_kvmplat_runs() -> None:
    """An opted-in domain is created at `start`: its boot source and room are checked at `prepare`. A domain QEMU
    runs (booting from its disk) is judged on its platform only, or every such domain would be refused."""
    agent = FakeAgent()
    run(PREPARE, X86, agent)
    run(["loop1", "prepare", "begin", "-"], OPT_IN, agent)
    assert [(m, r.platform_only) for m, r in agent.calls] == [("CheckPlatform", True), ("CheckPlatform", False)]
