"""The libvirt `qemu` hook: admits or refuses a domain start by asking the kvmplat agent, and runs opted-in domains.

Contract (libvirt's hook protocol, https://libvirt.org/hooks.html), run by libvirtd as
`/etc/libvirt/hooks/qemu NAME OPERATION SUB-OPERATION EXTRA` with the full domain XML on stdin:

    prepare begin   translate the XML, CheckPlatform (opted-in domains: the full dry run of CreateVm, so what
                    would fail at `start` fails here; others: the platform only): exit 0 possible; exit 1 + one
                    line on stderr otherwise (libvirt aborts the start and shows that line). Unreadable XML is
                    refused the same way.
    start begin     domains with <kvmplat:vm run="yes">: CreateVm on the agent (failure aborts the start)
    started begin   those domains: StartVm
    stopped end     those domains: DestroyVm (stopping first if needed); exit status is ignored by libvirt
    release end     the same, idempotently
    anything else   exit 0 (stdin is drained, stdout stays empty so migrate/restore XML is left unchanged)

It never calls back into libvirt (libvirt forbids it: the daemon is waiting on the hook). Agent unreachable: exit 1
("fail closed") unless the configuration says `on_unreachable = fail-open`.

Configuration: /etc/kvmplat/hook.conf (path overridden by env KVMPLAT_HOOK_CONFIG), `key = value` lines, `#`
comments; a missing default file means all defaults:

    agent = unix:///run/kvmplat/agent.sock   # or unix:PATH, tcp://HOST:PORT; env KVMPLAT_AGENT overrides it
    tls_ca = /etc/kvmplat/ca.pem              # tcp only: mutual TLS files
    tls_cert = /etc/kvmplat/hook.pem
    tls_key = /etc/kvmplat/hook.key
    on_unreachable = fail-closed              # or fail-open
    timeout = 5                               # seconds per agent call
    scope = kvm                               # or opted-in, all: which domains the hook judges (hook_scope)

Domains out of scope pass untouched: exit 0, nothing printed, no agent call. For a domain in scope, `prepare`
reports the translation's warnings (what kvmplat does not apply: disks, NICs, ...) to the journal (syslog, ident
kvmplat-hook) and, when the domain is admitted, on stderr (a refusal keeps stderr to its one line).

Start-up cost matters (libvirt waits for the hook at every domain start), so grpc is imported only when the agent
is called, and nothing beyond grpc and the generated stubs (no grpc_status, health or reflection).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import IO, Any, NamedTuple

from kvmplat.client.libvirt.domain_xml import (
    MAX_XML_BYTES,
    DomainRefused,
    DomainXmlError,
    Translation,
    parse_document,
    translate_root,
)
from kvmplat.client.libvirt.hook_scope import SCOPES, in_scope
from kvmplat.v1 import agent_pb2 as pb

# client.py's CHANNEL_OPTIONS, repeated: the hook does not import the Client (its start-up cost)
CHANNEL_OPTIONS = (("grpc.max_send_message_length", 4 << 20), ("grpc.max_receive_message_length", 16 << 20))

__all__ = ["CONFIG_PATH", "ENV_AGENT", "ENV_CONFIG", "ConfigError", "HookConfig", "load_config", "main"]

CONFIG_PATH = "/etc/kvmplat/hook.conf"
ENV_CONFIG = "KVMPLAT_HOOK_CONFIG"
ENV_AGENT = "KVMPLAT_AGENT"
# Codes meaning "no agent answered": the policy decides; every other code is the agent's own answer.
_UNREACHABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED")


class ConfigError(ValueError):
    """The hook configuration file is unreadable or says something unknown."""


class HookConfig(NamedTuple):
    """Where the agent is and what to do when it cannot be reached (NamedTuple, not dataclass: start-up cost)."""

    agent: str = "unix:///run/kvmplat/agent.sock"
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    on_unreachable: str = "fail-closed"
    timeout: float = 5.0
    scope: str = "kvm"


def _parse_config(text: str, path: str) -> HookConfig:
    values: dict[str, Any] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.partition("#")[0].strip()
        if not line:
            continue
        key, sep, value = (part.strip() for part in line.partition("="))
        if not sep or key not in HookConfig._fields:
            raise ConfigError(f"{path}:{number}: expected one of {', '.join(HookConfig._fields)} = VALUE")
        values[key] = value
    if values.get("on_unreachable", "fail-closed") not in ("fail-closed", "fail-open"):
        raise ConfigError(f"{path}: on_unreachable must be fail-closed or fail-open")
    if values.get("scope", "kvm") not in SCOPES:
        raise ConfigError(f"{path}: scope must be one of {', '.join(SCOPES)}")
    try:
        values["timeout"] = float(values.get("timeout", 5.0))
    except ValueError:
        raise ConfigError(f"{path}: timeout must be a number of seconds") from None
    return HookConfig(**values)


def load_config(env: Mapping[str, str]) -> HookConfig:
    """The configuration from KVMPLAT_HOOK_CONFIG or /etc/kvmplat/hook.conf, with KVMPLAT_AGENT applied last."""
    path = env.get(ENV_CONFIG) or CONFIG_PATH
    try:
        with open(path, encoding="utf-8") as f:
            config = _parse_config(f.read(), path)
    except FileNotFoundError:
        if env.get(ENV_CONFIG):
            raise ConfigError(f"{path} (from {ENV_CONFIG}) does not exist") from None
        config = HookConfig()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    if env.get(ENV_AGENT):
        config = config._replace(agent=env[ENV_AGENT])
    return config


class AgentError(Exception):
    """A failed agent call: the gRPC status code name and the agent's one-line message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _target(address: str) -> str:
    if address.startswith("unix:"):
        return address
    if address.startswith("tcp://"):
        return address[len("tcp://") :]
    raise ConfigError(f"agent address {address!r}: expected unix:///PATH, unix:PATH or tcp://HOST:PORT")


def _read(path: str) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


class Agent:
    """The few agent calls the hook makes, over grpc imported on first use."""

    def __init__(self, config: HookConfig) -> None:
        import grpc
        from kvmplat.v1 import agent_pb2_grpc

        self._grpc = grpc
        target = _target(config.agent)
        if config.agent.startswith("tcp://") and (config.tls_ca or config.tls_cert):
            creds = grpc.ssl_channel_credentials(_read(config.tls_ca), _read(config.tls_key), _read(config.tls_cert))
            self._channel = grpc.secure_channel(target, creds, options=CHANNEL_OPTIONS)
        else:
            self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = agent_pb2_grpc.AgentStub(self._channel)  # type: ignore[no-untyped-call]
        self._timeout = config.timeout

    def call(self, method: str, request: Any) -> Any:
        """One unary call; a failure becomes AgentError(code name, first line of the status message)."""
        try:
            return getattr(self._stub, method)(request, timeout=self._timeout)
        except self._grpc.RpcError as e:
            code = e.code().name if e.code() is not None else "UNKNOWN"
            lines = (e.details() or code).strip().splitlines() or [code]
            raise AgentError(code, lines[0][:400]) from None

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()


class _Run:
    """One hook invocation: the domain's name, the configuration and where to write."""

    def __init__(
        self,
        name: str,
        stderr: IO[str],
        agent_factory: Callable[[HookConfig], Agent],
        journal: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.config = HookConfig()
        self.stderr = stderr
        self.agent_factory = agent_factory
        self.journal = journal

    def warn(self, warnings: tuple[str, ...], stderr: bool) -> None:
        """The translation's warnings, one line each, in the journal and (`stderr`) on stderr, for the
        administrator; a refusal keeps stderr to its one line, which libvirt shows as the start's error."""
        for w in warnings:
            line = f"domain {self.name!r}: warning: {' '.join(w.split())}"
            if stderr:
                self.say(line)
            if self.journal is not None:
                self.journal(line)

    def say(self, text: str) -> None:
        """One line on stderr, whitespace collapsed: libvirt shows the hook's stderr as the error's tail."""
        self.stderr.write(f"kvmplat: {' '.join(text.split())}\n")

    def refuse(self, text: str) -> int:
        """Says why the domain is refused and returns the failing status."""
        self.say(f"domain {self.name!r} refused: {text}")
        return 1

    def unreachable(self, err: AgentError, where: str) -> int:
        """The status for "no agent answered", by the configured policy."""
        # grpc's connect errors nest several "a: b: c" layers; the innermost names the cause (ENOENT, refused, ...).
        cause = err.message.rpartition(": ")[2] or err.code
        if self.config.on_unreachable == "fail-open":
            self.say(f"agent unreachable at {self.config.agent} ({cause}); {where} admitted (fail-open)")
            return 0
        return self.refuse(f"kvmplat agent unreachable at {self.config.agent} ({cause}); on_unreachable = fail-closed")

    def call(self, method: str, request: Any) -> Any:
        """One agent call on a fresh connection (a hook run makes one or two)."""
        agent = self.agent_factory(self.config)
        try:
            return agent.call(method, request)
        finally:
            agent.close()


def _describe(t: Translation) -> str:
    compat = t.spec.platform.compat
    return t.os_type + (f", compat {compat}" if compat else "")


def _prepare(run: _Run, t: Translation) -> int:
    try:
        # a domain kvmplat will run (opted in) gets the full dry run of CreateVm, boot source and all; the others are
        # run by QEMU, so only their platform is kvmplat's business
        run.call("CheckPlatform", pb.CheckPlatformRequest(spec=t.spec, platform_only=not t.opt_in))
    except AgentError as e:
        run.warn(t.warnings, stderr=False)
        if e.code in _UNREACHABLE:
            return run.unreachable(e, "start")
        return run.refuse(f"{_describe(t)}: {e.message}")
    run.warn(t.warnings, stderr=True)
    return 0


def _start(run: _Run, t: Translation) -> int:
    return _ask(run, "CreateVm", pb.CreateVmRequest(spec=t.spec, start=False), "create")


def _started(run: _Run, t: Translation) -> int:
    return _ask(run, "StartVm", pb.VmRequest(name=t.spec.name), "start")


def _ask(run: _Run, method: str, request: Any, verb: str) -> int:
    """One call at a domain start; the agent's refusal (or its absence) decides the start."""
    try:
        run.call(method, request)
    except AgentError as e:
        if e.code in _UNREACHABLE:
            return run.unreachable(e, "start")
        return run.refuse(f"kvmplat could not {verb} it: {e.message}")
    return 0


def _stopped(run: _Run, t: Translation) -> int:
    request = pb.VmRequest(name=t.spec.name)
    try:
        try:
            run.call("DestroyVm", request)
        except AgentError as e:
            if e.code != "FAILED_PRECONDITION":
                raise
            run.call("StopVm", request)
            run.call("DestroyVm", request)
    except AgentError as e:
        if e.code != "NOT_FOUND":
            run.say(f"could not destroy kvmplat VM {t.spec.name!r}: {e.message}")
    return 0  # libvirt ignores the status after a stop; the line above is for its log


# (operation, sub-operation) → action; `opt_in` actions run only for domains with <kvmplat:vm run="yes">.
_ACTIONS: dict[tuple[str, str], tuple[Callable[[_Run, Translation], int], bool]] = {
    ("prepare", "begin"): (_prepare, False),
    ("start", "begin"): (_start, True),
    ("started", "begin"): (_started, True),
    ("stopped", "end"): (_stopped, True),
    ("release", "end"): (_stopped, True),
}
# Where a failure must stop the domain: libvirt only honours the exit status of these.
_BLOCKING = {("prepare", "begin"), ("start", "begin"), ("started", "begin")}


def _read_stdin(stdin: IO[bytes]) -> bytes | None:
    """The domain XML, or None when it is over the size cap (the rest is drained so libvirt never sees EPIPE)."""
    data = stdin.read(MAX_XML_BYTES + 1)
    if len(data) <= MAX_XML_BYTES:
        return data
    while stdin.read(1 << 16):
        pass
    return None


def _translation(data: bytes | None, scope: str) -> Translation | None:
    """The domain's translation, or None when it is not in the hook's `scope`."""
    if data is None:
        raise DomainXmlError(f"domain XML is larger than {MAX_XML_BYTES} bytes")
    try:
        root = parse_document(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise DomainXmlError("domain XML is not UTF-8") from None
    if not in_scope(root, scope):
        return None
    return translate_root(root)


def main(
    argv: list[str],
    stdin: IO[bytes],
    stdout: IO[str],
    stderr: IO[str],
    env: Mapping[str, str],
    agent_factory: Callable[[HookConfig], Agent] = Agent,
    journal: Callable[[str], None] | None = None,
) -> int:
    """Runs the hook for argv = [NAME, OPERATION, SUB-OPERATION, EXTRA] (program name excluded); returns the status.
    `journal` receives the lines meant for the system log (translation warnings). Nothing escapes as a traceback:
    an unexpected error is one line, and refuses the start where libvirt honours the status (fail closed)."""
    del stdout  # the hook never rewrites the XML libvirt passes through
    try:
        return _main(argv, stdin, stderr, env, agent_factory, journal)
    except Exception as e:  # a bug or a broken environment: libvirt shows stderr's line as the start's error
        op = (argv[1], argv[2] if len(argv) > 2 else "-") if len(argv) > 1 else ("", "")
        stderr.write(f"kvmplat: hook failed: {type(e).__name__}: {' '.join(str(e).split())}\n")
        return 1 if op in _BLOCKING else 0


def _main(
    argv: list[str],
    stdin: IO[bytes],
    stderr: IO[str],
    env: Mapping[str, str],
    agent_factory: Callable[[HookConfig], Agent],
    journal: Callable[[str], None] | None,
) -> int:
    if len(argv) < 2:
        stderr.write("usage: qemu NAME OPERATION [SUB-OPERATION [EXTRA]] < domain.xml (run by libvirtd)\n")
        return 2
    op = (argv[1], argv[2] if len(argv) > 2 else "-")
    data = _read_stdin(stdin)
    action = _ACTIONS.get(op)
    if action is None:
        return 0
    blocking = op in _BLOCKING
    run = _Run(argv[0], stderr, agent_factory, journal)
    try:
        run.config = load_config(env)  # first: the scope decides whether this domain is ours at all
        try:
            t = _translation(data, run.config.scope)
        except DomainRefused as e:  # the same answer the agent would give: the platform is refused
            return run.refuse(f"platform refused: {e}") if op == ("prepare", "begin") else 0
        except DomainXmlError as e:
            return run.refuse(f"cannot read its domain XML: {e}") if op == ("prepare", "begin") else 0
        if t is None or (action[1] and not t.opt_in):
            return 0
        return action[0](run, t)
    except (ConfigError, OSError) as e:
        return run.refuse(f"hook configuration: {e}") if blocking else 0


def entry() -> None:
    """Process entry: runs `main` on the process's argv, stdin and environment, then exits at once."""
    import sys

    status = main(sys.argv[1:], sys.stdin.buffer, sys.stdout, sys.stderr, os.environ, journal=_syslog)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skips interpreter teardown (module GC, grpc's shutdown): libvirt waits on this process at every start.
    os._exit(status)


def _syslog(line: str) -> None:
    """One line to the system log (the journal on systemd hosts), as kvmplat-hook; never fails the hook."""
    import syslog

    try:
        syslog.openlog("kvmplat-hook", 0, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_WARNING, line)
    except OSError:
        pass
