"""Snapshots and live migration on real guests: the guest does not notice (the loop guest's tick counter runs on,
the echo guest answers, its CPUID view and table are the same), a damaged snapshot is refused before anything is
built, a target below the guest's level refuses before any transfer, a failed migration leaves the VM running at
home and nothing on the target. Two agents on this host, on unix sockets (agents in two network namespaces over
mutual TLS: tests/security/test_migrate_netns.py; a Linux guest moved mid-boot: tests/linux/test_linux_debian.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from agent_harness import AGENT, AgentFactory, AgentProc, loop_spec
from google.protobuf import json_format
from kvmplat.agent.registry.snapshot import read_snapshot
from kvmplat.client.errors import KvmplatError
from kvmplat.v1 import agent_pb2 as pb

pytestmark = [pytest.mark.e2e, pytest.mark.kvm]
TICK = re.compile(r"kvmplat-loop tick (\d+)")


def events(agent: AgentProc, name: str, since: int = 0) -> list[pb.Event]:
    """The VM's events after `since`, without following."""
    return list(agent.stub.WatchEvents(pb.WatchEventsRequest(vm=name, since_seq=since), timeout=10))


def ticks(agent: AgentProc, name: str) -> list[int]:
    """The tick numbers the loop guest printed, in event order."""
    return [int(m.group(1)) for e in events(agent, name) if (m := TICK.search(e.console.text))]


def wait_ticks_past(agent: AgentProc, name: str, n: int, timeout: float = 20.0) -> list[int]:
    """Waits until the guest printed a tick above `n`; returns all its ticks."""
    deadline = time.monotonic() + timeout
    while not (t := ticks(agent, name)) or t[-1] <= n:
        assert time.monotonic() < deadline, f"{name}: no tick past {n} within {timeout} s (ticks: {t})"
        time.sleep(0.1)
    return t


def test_snapshot_and_restore_continue_the_guest(agent: AgentProc, tmp_path: Path) -> None:
    c = agent.client
    c.create_vm(loop_spec("sn"), start=True)
    before = wait_ticks_past(agent, "sn", 1)
    last_seq = c.pause_vm("sn").last_seq
    snap = tmp_path / "sn.snap"
    assert c.snapshot_to_file("sn", str(snap)) > 0
    c.destroy_vm("sn")  # PAUSED, but its state is safe in the snapshot
    vm = c.restore_from_file("sn", str(snap))
    assert vm.state == pb.RUNNING
    after = wait_ticks_past(agent, "sn", before[-1])
    assert after == sorted(after) and after[0] == before[-1] + 1  # no reset, no jump back
    evs = events(agent, "sn")
    assert evs[0].seq == last_seq + 1 and evs[0].state.to == pb.RUNNING  # the sequence continues


def test_restore_paused_then_resume(agent: AgentProc, tmp_path: Path) -> None:
    c = agent.client
    c.create_vm(loop_spec("p1"), start=True)
    wait_ticks_past(agent, "p1", 0)
    c.pause_vm("p1")
    snap = tmp_path / "p1.snap"
    c.snapshot_to_file("p1", str(snap))
    assert c.restore_from_file("p2", str(snap), paused=True).state == pb.PAUSED
    c.resume_vm("p2")
    wait_ticks_past(agent, "p2", ticks(agent, "p1")[-1])


@pytest.mark.parametrize("damage", ["flip", "truncate", "append"])
def test_a_damaged_snapshot_is_refused_and_builds_nothing(agent: AgentProc, tmp_path: Path, damage: str) -> None:
    c = agent.client
    c.create_vm(loop_spec("d"), start=True)
    c.pause_vm("d")
    snap = tmp_path / "d.snap"
    c.snapshot_to_file("d", str(snap))
    data = bytearray(snap.read_bytes())
    if damage == "flip":
        data[len(data) // 2 : len(data) // 2 + 4] = b"\xff\x00\xff\x00"
    elif damage == "truncate":
        del data[-100:]
    else:
        data += b"x"
    bad = tmp_path / "bad.snap"
    bad.write_bytes(bytes(data))
    with pytest.raises(KvmplatError, match="not a usable kvmplat snapshot") as info:
        c.restore_from_file("d2", str(bad))
    assert info.value.code == "INVALID_ARGUMENT"
    assert [v.spec.name for v in c.list_vms()] == ["d"]
    assert not (agent.state_dir / "run" / "d2.sock").exists()


def test_snapshot_needs_a_paused_vm(agent: AgentProc) -> None:
    agent.client.create_vm(loop_spec("r"), start=True)
    with pytest.raises(KvmplatError, match="PAUSED"):
        b"".join(agent.client.snapshot_vm("r"))


def test_live_migration_continues_the_guest_and_its_events(agent_factory: AgentFactory) -> None:
    a, b = agent_factory(), agent_factory()
    a.client.create_vm(loop_spec("mv"), start=True)
    before = wait_ticks_past(a, "mv", 1)
    progress = list(a.client.migrate_vm("mv", b.address))
    assert progress[-1].phase == "done" and progress[-1].target == b.address
    assert progress[-1].downtime_ms <= progress[-1].total_ms
    assert "mv" not in [v.spec.name for v in a.client.list_vms()]
    after = wait_ticks_past(b, "mv", before[-1])
    assert after[0] == before[-1] + 1 and after == sorted(after)
    first = events(b, "mv")[0]
    assert first.state.to == pb.RUNNING and "migrated from" in first.state.reason
    assert first.seq > b.get("mv").last_seq - len(events(b, "mv"))  # numbered after the source's events


def test_the_echo_guest_answers_on_the_target(agent_factory: AgentFactory) -> None:
    a, b = agent_factory(), agent_factory()
    a.client.create_vm(loop_spec("e", builtin="echo"), start=True)
    wait_line(a, "e", "ready")
    list(a.client.migrate_vm("e", b.address))
    b.client.write_console("e", b"over here\r")
    wait_line(b, "e", "over here")


def wait_line(agent: AgentProc, name: str, text: str, timeout: float = 20.0) -> None:
    """Waits until the guest printed a line containing `text`."""
    deadline = time.monotonic() + timeout
    while not any(text in e.console.text for e in events(agent, name)):
        assert time.monotonic() < deadline, [e.console.text for e in events(agent, name)]
        time.sleep(0.1)


def cpuid_view(agent: AgentProc, name: str) -> list[str]:
    """Asks the echo guest for its CPUID view ("?") and returns the "cpuid ..." lines it answers with."""
    since = agent.get(name).last_seq
    agent.client.write_console(name, b"?")
    deadline = time.monotonic() + 20
    while True:
        texts = [e.console.text for e in events(agent, name, since)]
        if any("cpuid done" in t for t in texts):
            return [t.strip() for t in texts if t.startswith("cpuid ")]
        assert time.monotonic() < deadline, f"{name}: no CPUID answer: {texts}"
        time.sleep(0.1)


def snapshot_cpuid(agent: AgentProc, name: str, tmp: Path) -> list[list[int]]:
    """The exact CPUID table the VM's runner was given (from a snapshot's header); the VM runs on after."""
    agent.client.pause_vm(name)
    path = tmp / f"{name}-{agent.address[-12:].replace('/', '_')}.snap"
    agent.client.snapshot_to_file(name, str(path))
    agent.client.resume_vm(name)
    with path.open("rb") as f:
        return [list(row) for row in read_snapshot(f).header["cpuid"]]


def test_the_guest_sees_the_same_cpuid_on_the_target(agent_factory: AgentFactory, tmp_path: Path) -> None:
    a, b = agent_factory(), agent_factory()
    a.client.create_vm(loop_spec("cv", builtin="echo"), start=True)
    wait_line(a, "cv", "ready")
    home, table = cpuid_view(a, "cv"), snapshot_cpuid(a, "cv", tmp_path)
    assert len(home) >= 5 and table
    list(a.client.migrate_vm("cv", b.address))
    assert cpuid_view(b, "cv") == home
    assert snapshot_cpuid(b, "cv", tmp_path) == table


def _has_max_level() -> bool:
    out = subprocess.run([AGENT, "--help"], capture_output=True, text=True, check=False).stdout
    return "--max-level" in out


def test_a_target_below_the_guests_level_refuses_before_any_transfer(agent_factory: AgentFactory) -> None:
    if not _has_max_level():
        pytest.skip("this agent has no --max-level yet (issue 13): the test runs once it has")
    a, b = agent_factory(), agent_factory("--max-level", "x86-64-v1")
    spec = loop_spec("ce")
    json_format.ParseDict({"compat": "x86-64-v2", "compat_policy": "BEST_EFFORT", "pv": ["KVM"]}, spec.platform)
    a.client.create_vm(spec, start=True)
    progress: list[pb.MigrationProgress] = []
    with pytest.raises(KvmplatError) as info:
        progress.extend(a.client.migrate_vm("ce", b.address))
    assert info.value.code == "FAILED_PRECONDITION"
    assert re.search(r"sse4|ssse3|popcnt|cx16|lahf|x86-64-v1|x86-64-v2", str(info.value)), str(info.value)
    assert progress == []  # refused with the offer: not one page moved
    assert b.list_vms().vms == [] and not list((b.state_dir / "vms").glob("*.json"))
    assert a.get("ce").state == pb.RUNNING


def test_a_target_killed_mid_transfer_leaves_the_vm_running_at_home(agent_factory: AgentFactory) -> None:
    a, b = agent_factory(), agent_factory()
    a.client.create_vm(loop_spec("k", memory_mib=256, builtin="dirty"), start=True)
    errors: list[BaseException] = []
    seen = threading.Event()

    def run() -> None:
        try:
            for p in a.client.migrate_vm("k", b.address):
                if p.phase == "offer":
                    seen.set()
        except KvmplatError as e:
            errors.append(e)
        seen.set()

    t = threading.Thread(target=run)
    t.start()
    assert seen.wait(30)
    os.kill(b.proc.pid, signal.SIGKILL)  # while round 1 copies 255 MiB of written pages
    t.join(60)
    assert errors, "the migration did not fail"
    assert a.wait_state("k", pb.RUNNING).state_reason.startswith("migration failed")
    assert not list((b.state_dir / "vms").glob("*.json"))
