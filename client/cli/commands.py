"""The core `kvmplat` subcommands: caps, check, create, the lifecycle verbs, list, show, events.

Each handler reads `ctx.args`, calls the agent through `ctx.client()`, prints either protobuf JSON (`--json`: exactly
one object; `events`: one object per line) or readable text, and returns 0. Refusals and bad input are raised and
turned into exit codes by `kvmplat.client.cli.main`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kvmplat.client.cli import output
from kvmplat.client.cli.main import EXIT_OK, Commands, Context, Refused, UsageError
from kvmplat.client.specfile import load_spec
from kvmplat.v1 import agent_pb2 as pb

__all__ = ["register", "spec_from_args"]

MAX_INPUT_BYTES = 4 << 20  # --spec and --xml files (domain_xml refuses above 2 MiB with its own reason)


def register(commands: Commands) -> None:
    """Adds the core subcommands."""
    p = commands.add("caps", _caps, "what the host can run")
    p.add_argument("--refresh", action="store_true", help="re-run the probe guests instead of the cached truth")
    commands.add_json(p)
    p = commands.add("check", _check, "the effective platform a spec would get, or why it is refused")
    _add_spec_source(p, libvirt=False)
    commands.add_json(p)
    p = commands.add("create", _create, "create a VM from a spec")
    p.add_argument(
        "name",
        metavar="NAME",
        nargs="?",
        default="",
        help="VM name (default: the spec's or the XML's; needed with --from-libvirt, where it names the domain)",
    )
    _add_spec_source(p, libvirt=True)
    p.add_argument("--start", action="store_true", help="start it at once")
    commands.add_json(p)
    for verb, help_text in _VERBS.items():
        p = commands.add(verb, _lifecycle, help_text)
        p.add_argument("name", metavar="NAME")
        if verb == "destroy":
            p.add_argument("--force", action="store_true", help="stop a RUNNING or PAUSED VM first (one call)")
        commands.add_json(p)
    commands.add_json(commands.add("list", _list, "every VM on the agent"))
    p = commands.add("show", _show, "one VM in full")
    p.add_argument("name", metavar="NAME")
    commands.add_json(p)
    p = commands.add("events", _events, "events so far (of one VM or all); live with --follow")
    p.add_argument("name", metavar="NAME", nargs="?", default="", help="one VM (default: every VM)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument("--since", metavar="SEQ", type=int, default=0, help="only events with seq > SEQ")
    p.add_argument("--json", action="store_true", help="one protobuf JSON object per line")


_VERBS = {
    "start": "start a CREATED VM, or boot a STOPPED one again",
    "pause": "pause a RUNNING VM",
    "resume": "resume a PAUSED VM",
    "stop": "stop a VM (start boots it again)",
    "destroy": "free a STOPPED, CRASHED or CREATED VM and everything it held (--force: a running one too)",
}


def _add_spec_source(parser: argparse.ArgumentParser, libvirt: bool) -> None:
    """--spec FILE | --xml FILE (| --from-libvirt URI): exactly one."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--spec", metavar="FILE", help="VmSpec as protobuf JSON")
    group.add_argument("--xml", metavar="FILE", help="libvirt domain XML, translated to a VmSpec")
    if libvirt:
        group.add_argument("--from-libvirt", metavar="URI", help="translate domain NAME as defined in libvirt at URI")


def spec_from_args(ctx: Context, name: str = "") -> pb.VmSpec:
    """The VmSpec named by --spec, --xml or --from-libvirt, with NAME (when given) overriding its name."""
    return spec_source(ctx, name)[0]


def spec_source(ctx: Context, name: str = "") -> tuple[pb.VmSpec, bool]:
    """(the VmSpec of --spec, --xml or --from-libvirt, whether kvmplat would run it): a spec file always, a domain
    only when it opts in (`<kvmplat:vm run="yes">`); others are QEMU's to run, judged on their platform alone, as
    the libvirt hook judges them."""
    a = ctx.args
    if a.spec is not None:
        spec, runs = load_spec(a.spec), True
    elif a.xml is not None:
        spec, runs = _translate(ctx, _read_text(a.xml), a.xml)
    else:
        spec, runs = _translate(ctx, _libvirt_xml(a.from_libvirt, name), f"{a.from_libvirt} domain {name}")
    if name:
        spec.name = name
    return spec, runs


def _read_text(path: str) -> str:
    """A text file's contents, or UsageError naming it; read only up to MAX_INPUT_BYTES (a spec or a domain XML is
    small: a huge file, or /dev/zero, is refused without being held in memory)."""
    try:
        with Path(path).open("rb") as f:
            data = f.read(MAX_INPUT_BYTES + 1)
        if len(data) > MAX_INPUT_BYTES:
            raise UsageError(f"{path} is larger than {MAX_INPUT_BYTES} bytes: not a VM spec or domain XML")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None


def _translate(ctx: Context, xml_text: str, source: str) -> tuple[pb.VmSpec, bool]:
    """domain XML -> (VmSpec, opted in) through kvmplat.client.libvirt.domain_xml; its warnings go to stderr."""
    from kvmplat.client.libvirt import domain_xml  # imported only when --xml / --from-libvirt is used

    try:
        translation = domain_xml.translate(xml_text)
    except domain_xml.DomainRefused as e:
        raise Refused(f"{source}: {e}") from None
    except ValueError as e:
        raise UsageError(f"{source}: {e}") from None
    for warning in translation.warnings:
        ctx.warn(f"warning: {source}: {warning}")
    spec: pb.VmSpec = translation.spec
    return spec, bool(translation.opt_in)


def _libvirt_xml(uri: str, name: str) -> str:
    """The domain XML of `name` as libvirt at `uri` has it (kvmplat.client.libvirt.source, read-only)."""
    from kvmplat.client.libvirt import source  # libvirt-python itself loads only here

    try:
        xml: str = source.domain_xml(uri, name)
    except source.LibvirtError as e:
        raise UsageError(str(e)) from None
    return xml


def _caps(ctx: Context) -> int:
    caps = ctx.client().capabilities(refresh=ctx.args.refresh)
    ctx.print(output.to_json(caps) if ctx.args.json else output.format_caps(caps))
    return EXIT_OK


def _check(ctx: Context) -> int:
    spec, runs = spec_source(ctx)
    reply = pb.CheckPlatformResponse(effective_platform=ctx.client().check_platform(spec, platform_only=not runs))
    ctx.print(output.to_json(reply) if ctx.args.json else output.format_platform(reply.effective_platform))
    return EXIT_OK


def _create(ctx: Context) -> int:
    if ctx.args.from_libvirt is not None and not ctx.args.name:
        raise UsageError("create --from-libvirt needs NAME: the libvirt domain to translate")
    spec = spec_from_args(ctx, ctx.args.name)
    if not spec.name:
        raise UsageError("the VM needs a name: give NAME, or a name in the spec")
    vm = ctx.client().create_vm(spec, start=ctx.args.start)
    ctx.print(output.to_json(vm) if ctx.args.json else output.format_vm_line(vm))
    return EXIT_OK


def _lifecycle(ctx: Context) -> int:
    client, name, verb = ctx.client(), ctx.args.name, ctx.args.command
    if verb == "destroy":
        client.destroy_vm(name, force=ctx.args.force)
        ctx.print(output.to_json(pb.DestroyVmResponse()) if ctx.args.json else f"{name}: destroyed")
        return EXIT_OK
    action = {"start": client.start_vm, "pause": client.pause_vm, "resume": client.resume_vm, "stop": client.stop_vm}
    vm = action[verb](name)
    ctx.print(output.to_json(vm) if ctx.args.json else output.format_vm_line(vm))
    return EXIT_OK


def _list(ctx: Context) -> int:
    vms = ctx.client().list_vms()
    if ctx.args.json:
        ctx.print(output.to_json(pb.ListVmsResponse(vms=vms)))
    else:
        ctx.print(output.format_vm_table(vms) if vms else "no VMs")
    return EXIT_OK


def _show(ctx: Context) -> int:
    vm = ctx.client().get_vm(ctx.args.name)
    ctx.print(output.to_json(vm) if ctx.args.json else output.format_vm(vm))
    return EXIT_OK


def _events(ctx: Context) -> int:
    a = ctx.args
    if a.since < 0:
        raise UsageError("--since takes a sequence number >= 0")
    stream = ctx.client().watch_events(a.name, since_seq=a.since, follow=a.follow)
    try:
        for event in stream:
            ctx.print(output.to_json(event, one_line=True) if a.json else output.format_event(event))
    finally:
        stream.cancel()
    if a.follow and a.name:  # a followed stream of one VM ends only when the agent forgets it: say so
        end = f"{a.name} destroyed"
        if a.json:
            ctx.warn(f"{end}: end of its events")  # stdout stays one JSON object a line
        else:
            ctx.print(end)
    return EXIT_OK
