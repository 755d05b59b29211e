"""Issue 18 end to end on the real agent: CheckPlatform is a dry run of CreateVm, every published label is admitted,
a STOPPED VM starts again, destroy --force, the end of a followed VM's events, create --xml without NAME."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from agent_harness import AgentFactory, AgentProc, loop_spec
from kvmplat.client.errors import KvmplatError
from kvmplat.client.scheduling.labels import labels_from_caps
from kvmplat.v1 import agent_pb2 as pb

pytestmark = [pytest.mark.e2e, pytest.mark.kvm]

KVMPLAT = str(Path(sys.executable).parent / "kvmplat")


def cli(agent: AgentProc, *argv: str) -> subprocess.CompletedProcess[str]:
    """`kvmplat ARGV` against `agent`."""
    env = {**os.environ, "KVMPLAT_AGENT": agent.address}
    return subprocess.run([KVMPLAT, *argv], env=env, capture_output=True, text=True, timeout=60, check=False)


def runner_ends(pid: int, within: float = 20.0) -> bool:
    """Polls until process `pid` is gone (or a zombie awaiting its parent's reaping)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def refusal(call: object) -> tuple[grpc.StatusCode, str]:
    """The (code, message) a call is refused with."""
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code(), info.value.details()


def bad_specs(images: Path) -> dict[str, pb.VmSpec]:
    """Specs CreateVm refuses, one reason each."""
    return {
        "memory": loop_spec("big", memory_mib=10_000_000),
        "vcpus": loop_spec("wide", vcpus=100_000),
        "no boot": pb.VmSpec(name="noboot", vcpus=1, memory_mib=16),
        "missing kernel": pb.VmSpec(name="nok", vcpus=1, memory_mib=32, boot=pb.BootSpec(kernel=f"{images}/none")),
        "kernel outside": pb.VmSpec(name="out", vcpus=1, memory_mib=32, boot=pb.BootSpec(kernel="/etc/passwd")),
        "kernel a dir": pb.VmSpec(name="dir", vcpus=1, memory_mib=32, boot=pb.BootSpec(kernel=str(images))),
        "name": loop_spec("bad name"),
        "builtin": loop_spec("nob", builtin="nosuch"),
        "platform": pb.VmSpec(
            name="v9", vcpus=1, memory_mib=16, boot=pb.BootSpec(builtin="loop"), platform=pb.PlatformSpec(compat="zz")
        ),
    }


def test_check_refuses_what_create_refuses_with_the_same_reason(agent_factory: AgentFactory, tmp_path: Path) -> None:
    """Before: check of 10,000,000 MiB, of a missing kernel or of no boot source answered OK; create refused."""
    images = tmp_path / "images"
    images.mkdir()
    agent = agent_factory("--image-dir", str(images))
    for why, spec in bad_specs(images).items():
        checked = refusal(lambda s=spec: agent.stub.CheckPlatform(pb.CheckPlatformRequest(spec=s), timeout=10))
        created = refusal(lambda s=spec: agent.stub.CreateVm(pb.CreateVmRequest(spec=s), timeout=10))
        assert checked == created, why
    assert agent.list_vms().vms == []
    # a guest kvmplat will not run (the hook's non-opted-in domains) is judged on its platform alone
    assert agent.client.check_platform(pb.VmSpec(name="disk boot"), platform_only=True).accel
    with pytest.raises(KvmplatError, match="compat"):
        agent.client.check_platform(bad_specs(images)["platform"], platform_only=True)


def test_check_refuses_what_is_left_no_longer_fits(agent_factory: AgentFactory) -> None:
    agent = agent_factory("--max-memory-mib", "48")
    agent.client.create_vm(loop_spec("first", memory_mib=32))
    spec = loop_spec("second", memory_mib=32)
    checked = refusal(lambda: agent.stub.CheckPlatform(pb.CheckPlatformRequest(spec=spec), timeout=10))
    assert checked == refusal(lambda: agent.stub.CreateVm(pb.CreateVmRequest(spec=spec), timeout=10))
    assert checked[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    agent.client.check_platform(loop_spec("first", memory_mib=16))  # a VM of the same name is not a refusal


def test_cli_check_exits_1_like_create(agent: AgentProc, tmp_path: Path) -> None:
    spec = tmp_path / "big.json"
    spec.write_text('{"name":"big","vcpus":1,"memory_mib":10000000,"boot":{"builtin":"loop"}}')
    checked, created = cli(agent, "check", "--spec", str(spec)), cli(agent, "create", "--spec", str(spec))
    assert checked.returncode == created.returncode == 1 and checked.stderr == created.stderr
    assert "spec.memory_mib" in checked.stderr


def test_check_xml_of_a_domain_without_boot_source_is_refused_with_its_warnings(
    agent: AgentProc, tmp_path: Path
) -> None:
    """Before: a domain kvmplat would run but cannot boot passed `check --xml` and failed `create`. A domain that opts
    in to kvmplat gets the whole dry run; one that libvirt runs (no opt-in) is judged on its platform, as the hook
    judges it, with the same warnings."""
    opt_in = "<metadata><kvmplat:vm xmlns:kvmplat='http://kvmplat.io/xmlns/domain/1' run='yes'/></metadata>"
    body = (
        "<name>d1</name><memory unit='MiB'>16</memory>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><disk type='file'/></devices>"
    )
    xml = tmp_path / "d.xml"
    xml.write_text(f"<domain type='kvm'>{opt_in}{body}</domain>")
    done = cli(agent, "check", "--xml", str(xml))
    assert done.returncode == 1 and "spec.boot" in done.stderr
    assert "warning:" in done.stderr and "1 disk" in done.stderr  # what kvmplat would not apply
    xml.write_text(f"<domain type='kvm'>{body}</domain>")
    done = cli(agent, "check", "--xml", str(xml))
    assert done.returncode == 0, done.stderr
    assert "warning:" in done.stderr and "1 disk" in done.stderr


def test_every_published_label_is_admitted_by_check_platform(agent: AgentProc) -> None:
    """Before: x86-64-v2=true was published on a host that refuses STRICT x86-64-v2."""
    labels = labels_from_caps(agent.client.capabilities())
    policies = {"strict": pb.STRICT, "best-effort": pb.BEST_EFFORT}
    levels = [k.removeprefix("kvmplat.io/") for k in labels if k.endswith((".strict", ".best-effort"))]
    assert levels, labels
    for label in levels:
        level, _, policy = label.rpartition(".")
        platform = pb.PlatformSpec(compat=level, compat_policy=policies[policy], pv=[pb.KVM])
        spec = pb.VmSpec(name="lab", vcpus=1, memory_mib=16, boot=pb.BootSpec(builtin="loop"), platform=platform)
        agent.client.check_platform(spec)  # raises when refused
    for key in labels:  # a level label always says its policy (the arch label names x86-64, no level)
        assert not re.search(r"x86-64-v[1-4]", key) or key.endswith((".strict", ".best-effort")), key


def test_a_stopped_vm_starts_again_in_a_new_runner(agent: AgentProc) -> None:
    """Before: start of a STOPPED VM was refused (FAILED_PRECONDITION: it is STOPPED)."""
    c = agent.client
    first = c.create_vm(loop_spec("rs"), start=True)
    c.stop_vm("rs")
    agent.wait_state("rs", pb.STOPPED)
    again = c.start_vm("rs")
    assert again.state == pb.RUNNING and again.runner_pid != first.runner_pid
    events = list(c.watch_events("rs", follow=False))
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1))  # one VM, one sequence: no gap, no reuse
    moves = [(getattr(e.state, "from"), e.state.to) for e in events if e.WhichOneof("kind") == "state"]
    assert moves[-2:] == [(pb.RUNNING, pb.STOPPED), (pb.STOPPED, pb.RUNNING)]
    assert runner_ends(first.runner_pid)  # the old runner is gone
    c.stop_vm("rs")
    agent.wait_state("rs", pb.STOPPED)
    assert c.start_vm("rs").state == pb.RUNNING  # and again


def test_destroy_force_stops_and_destroys_in_one_call(agent: AgentProc) -> None:
    """Before: destroy of a RUNNING VM was refused; there was no force."""
    agent.client.create_vm(loop_spec("f1"), start=True)
    agent.client.create_vm(loop_spec("f2"), start=True)
    agent.client.pause_vm("f2")
    refused = cli(agent, "destroy", "f1")
    assert refused.returncode == 1 and "RUNNING" in refused.stderr
    assert cli(agent, "destroy", "--force", "f1").stdout == "f1: destroyed\n"
    agent.client.destroy_vm("f2", force=True)
    assert agent.list_vms().vms == []


def test_following_a_destroyed_vm_ends_with_a_line_and_exit_0(agent: AgentProc) -> None:
    """Before: the stream ended silently."""
    agent.client.create_vm(loop_spec("ev1"), start=True)
    env = {**os.environ, "KVMPLAT_AGENT": agent.address}
    with subprocess.Popen(
        [KVMPLAT, "events", "ev1", "--follow"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as follower:
        assert follower.stdout is not None
        while "RUNNING" not in follower.stdout.readline():  # it follows: the state change has arrived
            pass
        agent.client.destroy_vm("ev1", force=True)
        out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0 and out.splitlines()[-1] == "ev1 destroyed" and err == ""


def test_create_xml_takes_the_name_from_the_domain(agent: AgentProc, tmp_path: Path) -> None:
    """Before: `create --xml FILE` demanded a NAME the XML already has."""
    xml = tmp_path / "d.xml"
    xml.write_text(
        "<domain type='kvm'><name>fromxml</name><memory unit='MiB'>16</memory>"
        "<metadata><k:vm xmlns:k='http://kvmplat.io/xmlns/domain/1'><k:boot builtin='loop'/></k:vm></metadata>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
    )
    done = cli(agent, "create", "--xml", str(xml), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["spec"]["name"] == "fromxml"


def test_pv_as_one_lower_case_value(agent: AgentProc, tmp_path: Path) -> None:
    """Before: `"pv": "kvm"` gave json_format's raw "repeated field pv must be in []" error."""
    spec = tmp_path / "pv.json"
    spec.write_text('{"name":"pv1","vcpus":1,"memory_mib":16,"boot":{"builtin":"loop"},"platform":{"pv":"kvm"}}')
    done = cli(agent, "check", "--spec", str(spec), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["effectivePlatform"]["pv"] == ["KVM"]
