"""End to end: the real `kvmplat-agent` on a private unix socket, driven by the real `kvmplat` CLI (subprocesses from
this venv), running real guests on /dev/kvm. Mirrors ../shared/acceptance/foundation and adds events, console and
demo."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kvmplat.client.localagent import LocalAgent

pytestmark = [pytest.mark.e2e, pytest.mark.kvm]

BIN = Path(sys.executable).parent
KVMPLAT = str(BIN / "kvmplat")


class Cli:
    """The CLI pointed at one agent."""

    def __init__(self, address: str, tmp: Path) -> None:
        self.env = {**os.environ, "KVMPLAT_AGENT": address}
        self.tmp = tmp

    def run(self, *argv: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`kvmplat ARGV`, output captured."""
        return subprocess.run(
            [KVMPLAT, *argv], env=self.env, capture_output=True, text=True, input=stdin, timeout=timeout, check=False
        )

    def ok(self, *argv: str) -> str:
        """stdout of a command that must succeed."""
        done = self.run(*argv)
        assert done.returncode == 0, f"kvmplat {' '.join(argv)}: {done.returncode} {done.stderr}"
        return done.stdout

    def spec(self, name: str, builtin: str, vcpus: int = 1, **extra: object) -> str:
        """Path of a VmSpec file."""
        path = self.tmp / f"{name}.json"
        body = {"name": name, "vcpus": vcpus, "memory_mib": 16, "boot": {"builtin": builtin}, **extra}
        path.write_text(json.dumps(body))
        return str(path)

    def state(self, name: str) -> str:
        """The VM's state name."""
        return str(json.loads(self.ok("show", name, "--json"))["state"])

    def wait_state(self, name: str, state: str, timeout: float = 30) -> None:
        """Polls until the VM is in `state`."""
        deadline = time.monotonic() + timeout
        while (now := self.state(name)) != state:
            assert time.monotonic() < deadline, f"{name} never reached {state} (is {now})"
            time.sleep(0.1)


@pytest.fixture
def cli() -> Iterator[Cli]:
    """A fresh agent on a private socket; every VM destroyed and the agent stopped afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="kvmplat-e2e-"))
    try:
        with LocalAgent.start(tmp) as agent:
            yield Cli(agent.address, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_caps_json(cli: Cli) -> None:
    caps = json.loads(cli.ok("caps", "--json"))
    assert caps["arch"] == platform.machine() and caps["kvmApiVersion"] == 12
    assert "arch" in cli.ok("caps")


def test_loop_lifecycle_and_refused_transition(cli: Cli) -> None:
    assert cli.ok("create", "b1", "--spec", cli.spec("ignored", "loop", vcpus=2)).startswith("b1: CREATED")
    assert cli.state("b1") == "CREATED"
    cli.ok("start", "b1")
    cli.wait_state("b1", "RUNNING")
    show = json.loads(cli.ok("show", "b1", "--json"))
    assert show["runnerPid"] > 1 and "effectivePlatform" in show
    for verb, state in (("pause", "PAUSED"), ("resume", "RUNNING"), ("stop", "STOPPED")):
        cli.ok(verb, "b1")
        cli.wait_state("b1", state)
    refused = cli.run("pause", "b1")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "STOPPED" in refused.stderr
    cli.ok("destroy", "b1")
    assert '"b1"' not in cli.ok("list", "--json")


def test_probe_on_two_vcpus_prints_a_line_per_vcpu(cli: Cli) -> None:
    cli.ok("create", "p1", "--spec", cli.spec("p1", "probe", vcpus=2), "--start")
    cli.wait_state("p1", "STOPPED", timeout=60)
    lines = cli.ok("events", "p1", "--json").splitlines()
    events = [json.loads(line) for line in lines]
    seqs = [int(e["seq"]) for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert sum(e.get("console", {}).get("text", "").count("kvmplat-probe") for e in events) >= 2
    later = cli.ok("events", "p1", "--json", "--since", str(seqs[-2])).splitlines()
    assert [int(json.loads(line)["seq"]) for line in later] == seqs[-1:]


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["show", "ghost"], 1),
        (["start", "ghost"], 1),
        (["events", "ghost"], 1),
    ],
)
def test_unknown_vm_is_refused(cli: Cli, argv: list[str], code: int) -> None:
    done = cli.run(*argv)
    assert done.returncode == code and "ghost" in done.stderr and done.stderr.count("\n") == 1


def test_bad_specs_are_refused_and_change_nothing(cli: Cli) -> None:
    assert cli.run("create", "b0", "--spec", cli.spec("b0", "loop", vcpus=0)).returncode == 1
    assert cli.run("create", "m0", "--spec", cli.spec("m0", "loop", memory_mib=0)).returncode == 1
    assert cli.run("create", "u0", "--spec", cli.spec("u0", "loop", colour="red")).returncode == 2
    cli.ok("create", "d1", "--spec", cli.spec("d1", "loop"))
    duplicate = cli.run("create", "d1", "--spec", cli.spec("d1", "loop"))
    assert duplicate.returncode == 1 and "d1" in duplicate.stderr
    assert [vm["spec"]["name"] for vm in json.loads(cli.ok("list", "--json"))["vms"]] == ["d1"]


def test_unreachable_agent_exits_2(cli: Cli) -> None:
    done = cli.run("--agent", f"unix://{cli.tmp}/nobody.sock", "list")
    assert done.returncode == 2 and "nobody.sock" in done.stderr


def test_events_follow_streams_live(cli: Cli) -> None:
    cli.ok("create", "f1", "--spec", cli.spec("f1", "loop"))
    follower = subprocess.Popen(
        [KVMPLAT, "events", "f1", "--follow", "--json"], env=cli.env, stdout=subprocess.PIPE, text=True
    )
    try:
        cli.ok("start", "f1")
        assert follower.stdout is not None
        deadline = time.monotonic() + 30
        for line in follower.stdout:
            if json.loads(line).get("state", {}).get("to") == "RUNNING":
                break
            assert time.monotonic() < deadline
        else:
            pytest.fail("followed stream ended before RUNNING")
    finally:
        follower.terminate()
        follower.wait(timeout=10)


def test_console_shows_output_until_the_vm_stops(cli: Cli) -> None:
    cli.ok("create", "c1", "--spec", cli.spec("c1", "loop"), "--start")
    cli.wait_state("c1", "RUNNING")
    console = subprocess.Popen(
        [KVMPLAT, "console", "c1", "--since", "0"],
        env=cli.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert console.stdout is not None
    first = console.stdout.readline()  # the session shows the guest's output before the VM stops
    cli.ok("stop", "c1")
    _, err = console.communicate(timeout=30)
    assert console.returncode == 0, err
    assert "kvmplat-loop" in first, f"the loop guest's console was not shown: {first!r} {err}"
    assert "c1 is STOPPED" in err


def test_demo_runs_and_cleans_up() -> None:
    # Its own (short: unix socket paths) TMPDIR, so a demo run elsewhere on the machine cannot make this fail.
    tmp_path = Path(tempfile.mkdtemp(prefix="kd-"))
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([KVMPLAT, "demo"], capture_output=True, text=True, timeout=300, check=False, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count("kvmplat-probe") >= 2
    for change in ("RUNNING -> PAUSED", "PAUSED -> RUNNING", "-> STOPPED"):
        assert change in done.stdout
    leftovers = list(tmp_path.glob("kvmplat-demo-*"))
    shutil.rmtree(tmp_path, ignore_errors=True)
    assert not leftovers
