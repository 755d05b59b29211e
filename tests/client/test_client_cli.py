"""The `kvmplat` CLI's contract: argument forms, --json shapes, exit codes (0 done, 1 refused, 2 usage/connection).
Commands that need an agent talk to the FAKE agent of fake_agent_server.py (a real gRPC server in-process that only
answers and refuses; it runs no guests)."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest
from fake_agent_server import FakeAgent, FakeAgentServer
from kvmplat.client import Client
from kvmplat.client.cli import main as cli
from kvmplat.v1 import agent_pb2 as pb


def run(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Runs `kvmplat ARGV` in-process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(argv, stdout=out, stderr=err, env=env or {})
    return code, out.getvalue(), err.getvalue()


def spec_file(tmp_path: Path, name: str = "b1", vcpus: int = 1, **extra: object) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"name": name, "vcpus": vcpus, "memory_mib": 16, "boot": {"builtin": "loop"}, **extra}))
    return str(path)


@pytest.fixture
def agent_env(fake_agent: FakeAgentServer) -> dict[str, str]:
    return {"KVMPLAT_AGENT": fake_agent.address}


def test_caps_json(agent_env: dict[str, str]) -> None:
    code, out, _ = run(["caps", "--json"], agent_env)
    assert code == 0
    data = json.loads(out)
    assert data["arch"] == "x86_64" and data["kvmApiVersion"] == 12


def test_agent_option_wins_over_env_in_either_position(fake_agent: FakeAgentServer) -> None:
    env = {"KVMPLAT_AGENT": "unix:///nonexistent/x.sock"}
    assert run(["--agent", fake_agent.address, "caps"], env)[0] == 0
    assert run(["caps", "--agent", fake_agent.address, "--json"], env)[0] == 0


def test_lifecycle_and_refusal_exit_codes(agent_env: dict[str, str], tmp_path: Path) -> None:
    assert run(["create", "b1", "--spec", spec_file(tmp_path, "other")], agent_env)[:2] == (0, "b1: CREATED\n")
    assert run(["start", "b1"], agent_env)[1] == "b1: RUNNING\n"
    show = json.loads(run(["show", "b1", "--json"], agent_env)[1])
    assert show["state"] == "RUNNING" and show["runnerPid"] == 4242 and "effectivePlatform" in show
    assert run(["stop", "b1"], agent_env)[0] == 0
    code, out, err = run(["pause", "b1"], agent_env)
    assert (code, out) == (1, "")
    assert err == "kvmplat: FAILED_PRECONDITION: cannot pause VM 'b1': it is STOPPED\n"
    assert run(["destroy", "b1"], agent_env)[:2] == (0, "b1: destroyed\n")
    assert json.loads(run(["list", "--json"], agent_env)[1]) == {"vms": []}


def test_invalid_spec_value_is_refused_by_the_agent_with_exit_1(agent_env: dict[str, str], tmp_path: Path) -> None:
    code, _, err = run(["create", "b0", "--spec", spec_file(tmp_path, "b0", vcpus=0)], agent_env)
    assert code == 1
    assert err.count("\n") == 1 and "spec.vcpus: must be at least 1" in err


def test_unknown_vm_and_agent_unavailable_are_refusals(agent_env: dict[str, str]) -> None:
    assert run(["show", "ghost"], agent_env)[0] == 1
    code, _, err = run(["show", "flaky"], agent_env)
    assert code == 1 and "UNAVAILABLE" in err


def test_create_start_list_and_events(agent_env: dict[str, str], tmp_path: Path) -> None:
    assert run(["create", "p1", "--spec", spec_file(tmp_path), "--start"], agent_env)[1] == "p1: RUNNING\n"
    listed = run(["list", "--json"], agent_env)[1]
    assert '"p1"' in listed
    assert "p1" in run(["list"], agent_env)[1]
    code, out, _ = run(["events", "p1", "--json"], agent_env)
    seqs = [int(json.loads(line)["seq"]) for line in out.splitlines()]
    assert code == 0 and seqs == [1, 2]
    assert run(["events", "--since", "1"], agent_env)[1].startswith("#2 p1 state CREATED -> RUNNING")


def test_check_prints_the_platform_or_the_refusal(agent_env: dict[str, str], tmp_path: Path) -> None:
    code, out, _ = run(["check", "--spec", spec_file(tmp_path), "--json"], agent_env)
    assert code == 0 and json.loads(out)["effectivePlatform"]["abi"] == "BARE_METAL"
    code, _, err = run(["check", "--spec", spec_file(tmp_path, platform={"abi": "spapr"})], agent_env)
    assert code == 1 and "x86_64" in err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["create", "x"],
        ["check", "--spec", "a.json", "--xml", "b.xml"],
        ["events", "--since", "many"],
        ["--timeout", "soon", "caps"],
    ],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    code, out, err = run(argv)
    assert code == 2 and out == "" and err


def test_bad_spec_files_exit_2_naming_the_problem(agent_env: dict[str, str], tmp_path: Path) -> None:
    code, _, err = run(["create", "x", "--spec", spec_file(tmp_path, colour="blue")], agent_env)
    assert code == 2 and "unknown field 'colour'" in err
    assert run(["create", "x", "--spec", str(tmp_path / "none.json")], agent_env)[0] == 2


def test_unreachable_agent_exits_2_naming_the_address() -> None:
    address = "unix:///nonexistent/kvmplat.sock"
    code, out, err = run(["--timeout", "2", "list"], {"KVMPLAT_AGENT": address})
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and address in err


def test_bad_address_exits_2() -> None:
    code, _, err = run(["--agent", "http://x", "caps"])
    assert code == 2 and "tcp://HOST:PORT" in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--help"])[0] == 0
    assert "events" in capsys.readouterr().out


def test_every_command_module_registers_its_commands() -> None:
    for module in cli.COMMAND_MODULES:
        sub = next(a for a in cli.build_parser((module,))._actions if isinstance(a, argparse._SubParsersAction))
        assert sub.choices, f"{module} registered no command"
    assert cli.build_parser().parse_args(["caps"]).command == "caps"


def test_a_missing_command_module_is_an_error() -> None:
    with pytest.raises(ModuleNotFoundError):
        cli.build_parser(("kvmplat.client.cli.commands", "kvmplat.client.cli.no_such_commands"))


def test_tls_problems_are_usage_errors(tmp_path: Path) -> None:
    missing = str(tmp_path / "ca.pem")
    code, _, err = run(["--agent", "tcp://127.0.0.1:1", "--tls-ca", missing, "caps"])
    assert code == 2 and "ca.pem" in err
    code, _, err = run(["--agent", "unix:///x.sock", "--tls-ca", missing, "caps"])
    assert code == 2 and "tcp://" in err
    assert run(["--agent", "tcp://127.0.0.1:1", "--tls-cert", missing, "caps"])[0] == 2


def test_timeout_must_be_positive() -> None:
    code, _, err = run(["--timeout", "0", "caps"])
    assert code == 2 and "--timeout" in err


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("unix:///run/k.sock", "unix:///run/k.sock"),
        ("unix:rel.sock", "unix:rel.sock"),
        ("tcp://127.0.0.1:7000", "127.0.0.1:7000"),
        ("tcp://[::1]:7000", "[::1]:7000"),
    ],
)
def test_address_forms(address: str, target: str) -> None:
    from kvmplat.client.agent import grpc_target

    assert grpc_target(address) == target


@pytest.mark.parametrize("address", ["unix://rel.sock", "unix:", "tcp://host", "tcp://:80", "tcp://h:99999", "/a.sock"])
def test_bad_address_forms(address: str) -> None:
    from kvmplat.client.agent import AddressError, grpc_target

    with pytest.raises(AddressError):
        grpc_target(address)


def test_default_address_comes_from_the_environment() -> None:
    from kvmplat.client.agent import DEFAULT_ADDRESS, default_address

    assert default_address({}) == DEFAULT_ADDRESS == "unix:///run/kvmplat/agent.sock"
    assert default_address({"KVMPLAT_AGENT": "tcp://h:1"}) == "tcp://h:1"


GOLDEN_DOMAIN = Path(__file__).resolve().parents[1] / "golden" / "domains" / "x86-opt-in-builtin-labels.xml"


def test_check_xml_translates_through_domain_xml(agent_env: dict[str, str]) -> None:
    code, out, _ = run(["check", "--xml", str(GOLDEN_DOMAIN), "--json"], agent_env)
    assert code == 0 and json.loads(out)["effectivePlatform"]["abi"] == "BARE_METAL"
    bad = GOLDEN_DOMAIN.parent.parent / "not-there.xml"
    assert run(["check", "--xml", str(bad)], agent_env)[0] == 2


def test_check_xml_judges_a_domain_not_opted_in_on_its_platform_alone(
    agent_env: dict[str, str], tmp_path: Path
) -> None:
    """Like the libvirt hook: an opted-in domain gets the full dry run, any other one CheckPlatform(platform_only)."""
    plain = tmp_path / "plain.xml"
    plain.write_text(
        "<domain type='kvm'><name>p</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
    )
    code, out, _ = run(["check", "--xml", str(plain), "--json"], agent_env)
    assert code == 0 and json.loads(out)["effectivePlatform"]["notes"] == ["platform only"]
    code, out, _ = run(["check", "--xml", str(GOLDEN_DOMAIN), "--json"], agent_env)
    assert code == 0 and json.loads(out)["effectivePlatform"].get("notes", []) == []


def test_create_from_libvirt_uses_libvirts_test_driver(agent_env: dict[str, str]) -> None:
    """libvirt's built-in test driver (test:///default, no daemon) defines a domain named `test`."""
    code, out, err = run(["create", "test", "--from-libvirt", "test:///default", "--json"], agent_env)
    assert code == 0, err
    assert json.loads(out)["spec"]["vcpus"] == 2 and "warning" in err
    code, _, err = run(["create", "nope", "--from-libvirt", "test:///default"], agent_env)
    assert code == 2 and "nope" in err and err.count("\n") == 1


def test_an_agent_without_event_batches_is_watched_one_event_at_a_time(fake_agent: FakeAgentServer) -> None:
    assert "WatchEventBatches" not in vars(FakeAgent)  # the generated base answers UNIMPLEMENTED
    with Client(fake_agent.address) as c:
        c.create_vm(pb.VmSpec(name="old", vcpus=1, memory_mib=16, boot=pb.BootSpec(builtin="probe")))
        assert [e.vm for e in c.watch_events("old", follow=False)] == ["old"]
