"""`kvmplat snapshot`, `kvmplat restore` and `kvmplat migrate`: a VM out to a file, back from one, or live to
another agent (the usual --agent and --tls-* flags reach the source; the source agent dials the target itself)."""

from __future__ import annotations

import json
import sys

from kvmplat.client.cli import output
from kvmplat.client.cli.main import EXIT_OK, Commands, Context, UsageError
from kvmplat.v1 import agent_pb2 as pb

__all__ = ["register"]

MIB = 1 << 20


def register(commands: Commands) -> None:
    """Adds snapshot, restore and migrate."""
    p = commands.add("snapshot", _snapshot, "write a PAUSED VM's complete state to a file")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--out", required=True, metavar="FILE", help="the snapshot file to write")
    commands.add_json(p)
    p = commands.add("restore", _restore, "create a VM from a snapshot file (RUNNING, or PAUSED with --paused)")
    p.add_argument("name", metavar="NAME", help="the restored VM's name")
    p.add_argument("--from", dest="source", required=True, metavar="FILE", help="the snapshot file")
    p.add_argument("--paused", action="store_true", help="restore it PAUSED")
    commands.add_json(p)
    p = commands.add("migrate", _migrate, "move a RUNNING VM live to another agent")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--to", required=True, metavar="tcp://HOST:PORT", help="the target agent")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")


def _snapshot(ctx: Context) -> int:
    size = ctx.client().snapshot_to_file(ctx.args.name, ctx.args.out)
    summary = {"name": ctx.args.name, "file": ctx.args.out, "bytes": size}
    ctx.print(json.dumps(summary) if ctx.args.json else f"{ctx.args.name}: snapshot of {size / MIB:.1f} MiB")
    return EXIT_OK


def _restore(ctx: Context) -> int:
    try:
        vm = ctx.client().restore_from_file(ctx.args.name, ctx.args.source, ctx.args.paused)
    except OSError as e:
        raise UsageError(f"cannot read {ctx.args.source}: {e.strerror}") from None
    ctx.print(output.to_json(vm) if ctx.args.json else output.format_vm_line(vm))
    return EXIT_OK


def _progress_line(p: pb.MigrationProgress) -> str:
    return (
        f"migrate: {p.phase} round {p.round}: {p.bytes_sent / MIB:.1f} MiB sent, {p.dirty_pages} dirty pages, "
        f"expected downtime {p.expected_downtime_ms} ms"
        + (f", vCPUs throttled {p.throttle_percent}%" if p.throttle_percent else "")
    )


def _migrate(ctx: Context) -> int:
    last = None
    for p in ctx.client().migrate_vm(ctx.args.name, ctx.args.to):
        last = p
        if p.phase != "done":
            print(_progress_line(p), file=sys.stderr, flush=True)
    if last is None or last.phase != "done":
        raise UsageError("the agent ended the migration without saying it was done")
    summary = {
        "rounds": last.round,
        "mib_sent": round(last.bytes_sent / MIB, 2),
        "downtime_ms": last.downtime_ms,
        "total_ms": last.total_ms,
        "target": last.target,
    }
    ctx.print(json.dumps(summary) if ctx.args.json else f"{ctx.args.name}: migrated to {last.target} {summary}")
    return EXIT_OK
