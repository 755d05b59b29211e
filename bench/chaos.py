"""Chaos soak: for --rounds (default 20) rounds, --clients (3) clients churn VMs (create, start, pause, resume, stop,
destroy; `loop` guests) while the agent is killed with SIGKILL at a chosen kind of moment (in turn: during a CreateVm,
during a DestroyVm, during a state change that writes a record, during a watcher's catch-up right after a restart)
and restarted on the same state dir, and runners are killed (SIGKILL) or stopped (SIGSTOP, continued later) at
random. After each round: every VM a client was told exists is listed, in the state its runner has (the runner
accepts the next request); no runner lacks a record and no live record has a dead runner; a watcher that resumed
after each restart saw every VM's sequence without a gap; no VM runs twice. Then, once: the state dir on a small
tmpfs filled to ENOSPC refuses new VMs with RESOURCE_EXHAUSTED (one line) and loses none already recorded, across a
SIGKILL of the agent too.

Prints a line per round and a last JSON line: {"rounds", "agent_kills", "runner_kills", "vms_lost", "orphans",
"event_gaps", "double_runs", "enospc_ok", ...}; exits 1 when a count is not zero. Needs root (SIGKILL of the
runners, /proc, the tmpfs mount) and /dev/kvm.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass, field

import chaoscheck
import chaosfaults
import grpc
from kvmplat.v1 import agent_pb2 as pb

MOMENTS = ("create", "destroy", "record", "catchup")


@dataclass
class Totals:
    """The soak's counts so far."""

    rounds: int = 0
    agent_kills: int = 0
    runner_kills: int = 0
    runner_stops: int = 0
    vms_lost: int = 0
    orphans: int = 0
    event_gaps: int = 0
    double_runs: int = 0
    state_mismatches: int = 0
    detail: list[str] = field(default_factory=list)


def one_round(agent: chaosfaults.Agent, i: int, args: argparse.Namespace, totals: Totals) -> None:
    """Churn, faults, restart(s), then the checks and the cleanup; adds what it found to `totals`."""
    rng = random.Random(args.seed * 1000 + i)
    watcher = chaoscheck.Watcher(agent.stub)
    watcher.start()
    watcher.attached.wait(10)
    world = chaosfaults.World()
    clients = [chaosfaults.Client(agent, world, f"r{i}c{c}", rng.random()) for c in range(args.clients)]
    for c in clients:
        c.start()
    faults = chaosfaults.Faults(agent, world, watcher, rng)
    faults.runner_faults(rng.randint(0, 2))
    faults.kill_agent_at(MOMENTS[i % len(MOMENTS)])
    time.sleep(rng.uniform(0.2, 0.6))  # churn on the restarted agent
    for c in clients:
        c.finish()
    faults.continue_all()
    chaoscheck.wait_for_builds(agent.stub, agent.state_dir)
    world.settle(agent.stub)
    found = check(agent, world, watcher)
    watcher.close()
    cleanup(agent, found)
    totals.rounds += 1
    totals.agent_kills += faults.agent_kills
    totals.runner_kills += faults.runner_kills
    totals.runner_stops += faults.runner_stops
    totals.event_gaps += watcher.gaps
    totals.detail += [f"round {i}: {d}" for d in found.detail + watcher.gap_detail]
    for k in ("vms_lost", "orphans", "double_runs"):
        setattr(totals, k, getattr(totals, k) + getattr(found, k))
    totals.state_mismatches += found.mismatches
    print(
        f"round {i:2d} ({MOMENTS[i % len(MOMENTS)]:7s}): {faults.agent_kills} agent kill(s), {faults.runner_kills} "
        f"runner kill(s), {faults.runner_stops} stop(s), {len(world.told)} VMs told, {watcher.events} events; "
        f"lost {found.vms_lost} orphans {found.orphans} double {found.double_runs} mismatches {found.mismatches} "
        f"gaps {watcher.gaps}",
        flush=True,
    )


def check(agent: chaosfaults.Agent, world: chaosfaults.World, watcher: chaoscheck.Watcher) -> chaoscheck.Findings:
    """The checks of a round (see the module docstring)."""
    found = chaoscheck.Findings()
    vms = list(agent.stub.ListVms(pb.ListVmsRequest(), timeout=30).vms)
    chaoscheck.check_told(vms, world.told, found)
    chaoscheck.check_processes(vms, agent.state_dir, found)
    for name in watcher.caught_up(vms):
        watcher.gaps += 1
        watcher.gap_detail.append(f"{name}: the watcher never received its newest events")
    chaoscheck.check_states(agent.stub, vms, found)
    return found


def cleanup(agent: chaosfaults.Agent, found: chaoscheck.Findings) -> None:
    """Destroys every VM; a runner still there afterwards is an orphan."""
    for vm in agent.stub.ListVms(pb.ListVmsRequest(), timeout=30).vms:
        for rpc in ("StopVm", "DestroyVm"):
            try:
                getattr(agent.stub, rpc)(pb.VmRequest(name=vm.spec.name), timeout=30)
            except grpc.RpcError as e:
                if rpc == "DestroyVm":
                    found.note("orphans", f"{vm.spec.name}: DestroyVm {e.code().name}: {e.details()}")
    deadline = time.monotonic() + 5
    while chaoscheck.runner_names(agent.state_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid, name in chaoscheck.runner_names(agent.state_dir).items():
        found.note("orphans", f"runner {pid} of {name!r} outlived its destroy")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The soak's flags."""
    p = argparse.ArgumentParser(prog="bench/chaos.py", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=20, help="rounds of churn and faults (default 20)")
    p.add_argument("--clients", type=int, default=3, help="clients churning VMs (default 3)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--max-seconds", type=float, default=900, help="start no round after this long (default 900)")
    p.add_argument("--no-enospc", action="store_true", help="skip the full-disk check")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the rounds and the full-disk check; prints the JSON summary."""
    args = parse_args(argv)
    totals, start = Totals(), time.monotonic()
    with chaosfaults.Agent.private("chaos") as agent:
        for i in range(args.rounds):
            if time.monotonic() - start > args.max_seconds:
                print(f"stopping after {i} rounds: --max-seconds {args.max_seconds:g} reached", file=sys.stderr)
                break
            one_round(agent, i, args, totals)
    enospc_ok = True if args.no_enospc else chaosfaults.enospc_check(totals.detail)
    for line in totals.detail:
        print(line, file=sys.stderr)
    summary = {k: v for k, v in vars(totals).items() if k != "detail"} | {"enospc_ok": enospc_ok}
    summary["seconds"] = round(time.monotonic() - start, 1)
    print(json.dumps(summary))
    bad = any(summary[k] for k in ("vms_lost", "orphans", "event_gaps", "double_runs", "state_mismatches"))
    return 1 if bad or not enospc_ok else 0


if __name__ == "__main__":
    sys.exit(main())
