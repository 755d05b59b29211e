"""Issue 18's client findings, each pinned: the error tree, the CLI's exit codes for OS errors and bugs, place's
help and JSON style, create without NAME, `"pv": "kvm"`, and the Client's docstrings."""

from __future__ import annotations

import inspect
import io
import re
from pathlib import Path

import pytest
from fake_agent_server import FakeAgentServer
from kvmplat.client import agent as agent_module
from kvmplat.client.agent import AddressError, Client, grpc_target
from kvmplat.client.cli import main as cli
from kvmplat.client.errors import KvmplatError
from kvmplat.client.scheduling.ask_agents import Offer, Placement, Rejection
from kvmplat.client.specfile import SpecError, parse_spec
from kvmplat.v1 import agent_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


def run(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(argv, stdout=out, stderr=err, env=env or {})
    return code, out.getvalue(), err.getvalue()


def test_address_error_is_a_kvmplat_error_and_still_a_value_error() -> None:
    """Before: AddressError was a bare ValueError outside the KvmplatError tree."""
    with pytest.raises(KvmplatError) as info:
        grpc_target("http://x")
    assert isinstance(info.value, AddressError) and isinstance(info.value, ValueError)
    assert run(["--agent", "http://x", "caps"])[0] == 2  # still a usage error for the CLI


def test_an_os_error_in_a_command_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    def full(ctx: object) -> int:
        raise OSError(28, "No space left on device", "/var/lib/x")

    monkeypatch.setattr("kvmplat.client.cli.commands._list", full)
    code, out, err = run(["list"])
    assert (code, out, err) == (2, "", "kvmplat: /var/lib/x: No space left on device\n")


def test_a_bug_is_one_line_and_exit_2_unless_debugging(monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(ctx: object) -> int:
        raise KeyError("oops")

    monkeypatch.setattr("kvmplat.client.cli.commands._list", bug)
    code, _, err = run(["list"])
    assert code == 2 and err.count("\n") == 1 and "internal error: KeyError" in err and "KVMPLAT_DEBUG" in err
    with pytest.raises(KeyError):
        run(["list"], {"KVMPLAT_DEBUG": "1"})


def test_place_help_promises_no_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    """Before: `--spec FILE  VmSpec JSON (or YAML) file`, and YAML was refused."""
    assert run(["place", "--help"])[0] == 0
    assert "YAML" not in capsys.readouterr().out


def test_place_json_is_protobuf_json_style_with_the_old_top_level_keys() -> None:
    """Before: snake_case numbers (`memory_free_mib`: 500) beside camelCase strings everywhere else."""
    result = Placement("a", (Offer("a", 500, 8),), (Rejection("b", "full"),))
    assert result.to_json() == {
        "chosen": "a",
        "rejected": [{"agent": "b", "reason": "full"}],
        "candidates": [{"agent": "a", "memoryFreeMib": "500", "vcpusFree": 8}],
    }
    assert pb.Capabilities.DESCRIPTOR.fields_by_name["memory_free_mib"].json_name == "memoryFreeMib"


@pytest.mark.parametrize("pv", ['"kvm"', '["kvm"]', '"PV_KVM"', '["KVM"]'])
def test_pv_takes_one_value_in_any_case(pv: str) -> None:
    """Before: `"pv": "kvm"` gave json_format's raw error."""
    spec = parse_spec(f'{{"name": "a", "platform": {{"pv": {pv}}}}}')
    assert list(spec.platform.pv) == [pb.KVM]


def test_json_format_errors_are_one_path_line() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec('{"name": "a", "vcpus": "many"}', "s.json")
    assert str(info.value).startswith("s.json: vcpus: ") and "Failed to parse" not in str(info.value)


def test_create_with_xml_needs_no_name(fake_agent: FakeAgentServer, tmp_path: Path) -> None:
    """Before: `create --xml FILE` was a usage error without NAME, though the XML names the domain."""
    xml = tmp_path / "d.xml"
    xml.write_text(
        "<domain type='kvm'><name>fromxml</name><memory unit='MiB'>16</memory>"
        "<metadata><k:vm xmlns:k='http://kvmplat.io/xmlns/domain/1'><k:boot builtin='loop'/></k:vm></metadata></domain>"
    )
    env = {"KVMPLAT_AGENT": fake_agent.address}
    assert run(["create", "--xml", str(xml)], env)[:2] == (0, "fromxml: CREATED\n")
    assert run(["create", "other", "--xml", str(xml)], env)[:2] == (0, "other: CREATED\n")
    spec = tmp_path / "noname.json"
    spec.write_text('{"vcpus": 1, "memory_mib": 16, "boot": {"builtin": "loop"}}')
    code, _, err = run(["create", "--spec", str(spec)], env)
    assert code == 2 and "needs a name" in err
    assert run(["create", "--from-libvirt", "qemu:///system"], env)[0] == 2


def test_client_docstrings_answer_a_new_users_questions() -> None:
    """How to build a VmSpec, where the address comes from, where the name is, enums and the Event oneof."""
    doc = inspect.getdoc(Client) or ""
    for needle in ("pb.VmSpec(", "KVMPLAT_AGENT", "vm.spec.name", "pb.VmState.Name", 'WhichOneof("kind")'):
        assert needle in doc, needle
    assert "KVMPLAT_AGENT" in (inspect.getdoc(Client.__init__) or "") + doc


def test_no_docstring_links_a_document_that_does_not_exist() -> None:
    """Before: the client's docstring pointed at reference/GRPC.md, which is not in the tree."""
    for path in sorted((ROOT / "client").rglob("*.py")):
        for ref in re.findall(r"\b([\w./-]+\.md)\b", path.read_text()):
            assert (ROOT / ref).exists() or (path.parent / ref).exists(), f"{path.name} names {ref}"
    assert agent_module.__doc__ and "README.md" in agent_module.__doc__


def test_readme_says_events_print_text_by_default() -> None:
    """Before: the README said `events` prints one JSON object a line; it prints text unless --json."""
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if "`kvmplat events" in line)
    assert "as text" in row and "with `--json`" in row


def test_readme_python_section_exists() -> None:
    assert "\n## Python\n" in (ROOT / "README.md").read_text()
