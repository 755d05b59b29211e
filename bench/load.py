"""Benchmark: the agent under load. For --seconds (default 30) against its own local agent, --watchers streams follow
all VMs as kvmplat.client does (WatchEventBatches; `--stream events`: one event a message, WatchEvents) and check
every VM's sequence numbers for gaps, while --clients (8) each cycle
create/start/pause/resume/stop/destroy on `loop` guests (16 MiB, 1 vCPU) and time every RPC. One run, on a fresh
agent, per number of watchers given (default 50, then 200).

Watchers and clients run in two processes (asyncio each), so the watchers' work does not sit in the clients'
latency. Each run prints per-RPC figures, then a JSON line: {"watchers", "ops", "errors_by_code", "rpc_ms": {"p50",
"p99", "max"}, "events_lost", ...}. Goal (50 watchers): no unexpected errors, no lost events, p99 ≤ 50 ms on a
2-core machine; the 200-watcher line is a figure. --agent measures another checkout's kvmplat-agent (side by side).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import agentproc
import grpc
from kvmplat.v1 import agent_pb2 as pb
from kvmplat.v1 import agent_pb2_grpc as pbg

CYCLE = ("CreateVm", "StartVm", "PauseVm", "ResumeVm", "StopVm", "DestroyVm")


# --- watchers (one process) -------------------------------------------------------------------------------------
def events_of(call: Any, batches: bool) -> Any:
    """The events of a watch call, one at a time."""
    if not batches:
        return call

    async def each() -> Any:
        async for batch in call:
            for ev in batch.events:
                yield ev

    return each()


async def watch(stub: Any, out: dict[str, Any], calls: list[Any], batches: bool) -> None:
    """One follow stream over all VMs; counts events and per-VM sequence gaps until the stream is cancelled.

    A plain `async for` per stream: a read future and an asyncio.wait per message cost this process about as much
    CPU as the agent spent sending, on the same two cores the agent's latency is measured on.
    """
    last: dict[str, int] = {}
    method = stub.WatchEventBatches if batches else stub.WatchEvents
    call = method(pb.WatchEventsRequest(follow=True))
    calls.append(call)
    try:
        async for ev in events_of(call, batches):
            prev = last.get(ev.vm)
            if prev is not None and ev.seq != prev + 1:
                out["lost"] += max(0, ev.seq - prev - 1)
                out["reordered"] += int(ev.seq <= prev)
            last[ev.vm] = ev.seq
            out["events"] += 1
        out["ended"] += 1  # the agent ended a stream that follows
    except asyncio.CancelledError:
        pass  # cancelled at the end of the run
    except grpc.aio.AioRpcError as e:
        if e.code() != grpc.StatusCode.CANCELLED:
            out["errors"][e.code().name] += 1


async def watchers_main(address: str, n: int, seconds: float, batches: bool, conn: Any) -> None:
    """Runs n watchers until `seconds` after they all subscribed; reports totals through `conn`."""
    out: dict[str, Any] = {"events": 0, "lost": 0, "reordered": 0, "ended": 0, "errors": Counter()}
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pbg.AgentStub(ch)  # type: ignore[no-untyped-call]
        calls: list[Any] = []
        tasks = [asyncio.create_task(watch(stub, out, calls, batches)) for _ in range(n)]
        await asyncio.sleep(0.5)  # let every stream reach the agent before the clients start
        conn.send("ready")
        await asyncio.sleep(seconds + 1.0)  # and outlast them, so their last events arrive
        for call in calls:
            call.cancel()
        await asyncio.gather(*tasks)
    conn.send({**out, "errors": dict(out["errors"])})


def watchers_proc(address: str, n: int, seconds: float, batches: bool, conn: Any) -> None:
    """Process entry of the watchers."""
    asyncio.run(watchers_main(address, n, seconds, batches, conn))


# --- clients (this process) -------------------------------------------------------------------------------------
def request(rpc: str, name: str) -> Any:
    """The request of one step of the cycle."""
    if rpc == "CreateVm":
        spec = pb.VmSpec(name=name, vcpus=1, memory_mib=16, boot=pb.BootSpec(builtin="loop"))
        return pb.CreateVmRequest(spec=spec)
    return pb.VmRequest(name=name)


async def client(stub: Any, cid: int, deadline: float, lat: dict[str, list[float]], errors: Counter[str]) -> int:
    """Cycles VMs until the deadline; returns how many cycles completed."""
    cycles = 0
    while time.monotonic() < deadline:
        name = f"load-{cid}-{cycles}"
        for rpc in CYCLE:
            t = time.perf_counter()
            try:
                await getattr(stub, rpc)(request(rpc, name), timeout=30)
            except grpc.aio.AioRpcError as e:
                errors[f"{rpc}:{e.code().name}"] += 1
                await cleanup(stub, name)
                break
            lat[rpc].append((time.perf_counter() - t) * 1000)
        else:
            cycles += 1
    return cycles


async def cleanup(stub: Any, name: str) -> None:
    """Stops and destroys a VM a failed cycle left behind."""
    for rpc in ("StopVm", "DestroyVm"):
        with contextlib.suppress(grpc.aio.AioRpcError):
            await getattr(stub, rpc)(pb.VmRequest(name=name), timeout=30)


async def clients_main(address: str, n: int, seconds: float) -> tuple[dict[str, list[float]], Counter[str], int]:
    """Runs n cycling clients, each on its own channel, for `seconds`."""
    lat: dict[str, list[float]] = defaultdict(list)
    errors: Counter[str] = Counter()
    channels = [grpc.aio.insecure_channel(address) for _ in range(n)]
    stubs = [pbg.AgentStub(ch) for ch in channels]  # type: ignore[no-untyped-call]
    for s in stubs:
        await s.GetCapabilities(pb.GetCapabilitiesRequest(), timeout=10)
    deadline = time.monotonic() + seconds
    cycles = await asyncio.gather(*(client(s, i, deadline, lat, errors) for i, s in enumerate(stubs)))
    for ch in channels:
        await ch.close()
    return lat, errors, sum(cycles)


# --- report -------------------------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of values."""
    if not values:
        return 0.0
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 2)


def report(args: argparse.Namespace, lat: dict[str, list[float]], errors: Counter[str], cycles: int, w: Any) -> None:
    """Prints a line per RPC and the JSON summary."""
    every = [v for vs in lat.values() for v in vs]
    for rpc in CYCLE:
        vs = lat.get(rpc, [])
        print(
            f"{rpc:10s} n={len(vs):5d} p50={pct(vs, 0.5):6.2f} ms p99={pct(vs, 0.99):6.2f} ms max={pct(vs, 1):6.2f} ms"
        )
    by_code: Counter[str] = Counter()
    for key, count in errors.items():
        by_code[key.split(":")[1]] += count
    for code, count in w["errors"].items():
        by_code[f"watch:{code}"] += count
    summary = {
        "seconds": args.seconds,
        "clients": args.clients,
        "watchers": args.watchers,
        "stream": args.stream,
        "cycles": cycles,
        "ops": len(every),
        "ops_per_s": round(len(every) / args.seconds, 1),
        "errors_by_code": dict(by_code),
        "errors_by_rpc": dict(errors),
        "rpc_ms": {"p50": pct(every, 0.5), "p99": pct(every, 0.99), "max": pct(every, 1)},
        "rpc_p99_ms": {rpc: pct(lat.get(rpc, []), 0.99) for rpc in CYCLE},
        "events_seen": w["events"],
        "events_lost": w["lost"],
        "events_reordered": w["reordered"],
        "watch_streams_ended": w["ended"],
        "cpu_s": w["cpu_s"],  # CPU seconds over the run: agent, watchers, clients, runners (ended ones, + template)
        "loadavg": Path("/proc/loadavg").read_text().split()[0],  # others' work on this host shows here
    }
    print(json.dumps(summary))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The benchmark's flags."""
    p = argparse.ArgumentParser(prog="bench/load.py", description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=30.0, help="how long the clients cycle VMs (default 30)")
    p.add_argument(
        "--watchers",
        type=int,
        nargs="+",
        default=[50, 200],
        help="event streams following all VMs: one run (and JSON line) per number given (default 50 200)",
    )
    p.add_argument("--clients", type=int, default=8, help="clients cycling VMs (default 8)")
    p.add_argument(
        "--stream",
        choices=("batches", "events"),
        default="batches",
        help="how watchers follow: WatchEventBatches as kvmplat.client does (default), or WatchEvents",
    )
    p.add_argument("--agent", default=str(agentproc.AGENT), help="the kvmplat-agent to measure (default: this venv's)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Starts the agent and the watcher process, runs the clients, prints the figures."""
    args = parse_args(argv)
    for n in args.watchers:
        with agentproc.agent("load", program=args.agent) as (address, proc, _):
            run(argparse.Namespace(**{**vars(args), "watchers": n}), address, proc.pid)


def run(args: argparse.Namespace, address: str, agent_pid: int = 0) -> None:
    """The watcher process and the clients against the agent at `address` (args.watchers: one number)."""
    parent, child = mp.get_context("spawn").Pipe()
    batches = args.stream == "batches"
    watchers = mp.get_context("spawn").Process(
        target=watchers_proc, args=(address, args.watchers, args.seconds, batches, child)
    )
    try:
        watchers.start()
        assert parent.recv() == "ready"
        pids = {"agent": agent_pid, "watchers": watchers.pid or 0, "clients": os.getpid()}
        pids["runners"] = agentproc.template_pid(agent_pid)  # the template and the runners it reaped
        cpu0 = {who: agentproc.cpu_seconds(pid, who == "runners") for who, pid in pids.items() if pid}
        lat, errors, cycles = asyncio.run(clients_main(address, args.clients, args.seconds))
        cpu = {who: round(agentproc.cpu_seconds(pids[who], who == "runners") - c, 2) for who, c in cpu0.items()}
        w = parent.recv()
        w["cpu_s"] = cpu
        watchers.join(10)
        report(args, lat, errors, cycles, w)
    finally:
        if watchers.is_alive():
            watchers.kill()


if __name__ == "__main__":
    main()
