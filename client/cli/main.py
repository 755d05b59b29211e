"""The `kvmplat` command line: global options, the subcommand registry, and the one mapping from errors to exit codes.

Exit codes (the contract the acceptance checks rely on):
    0  done
    1  refused by the agent: its reason on stderr, one line
    2  usage error, bad input file, an OS error (one line naming the file), or the agent cannot be reached (one
       line naming the address); an unexpected error (a bug) too, in one line unless KVMPLAT_DEBUG is set

Subcommands live in the modules named by `COMMAND_MODULES`; each exposes `register(commands: Commands) -> None` and
adds its parsers with `commands.add(name, handler, help)`. A handler takes a `Context` and returns an exit code;
it raises `UsageError`, `SpecError` or a client error rather than printing them. A module may instead expose
`add_commands(subparsers)` and set `func(args) -> int` on its parsers (plain argparse; it then prints its own
errors). Adding a command group is one line in `COMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

if TYPE_CHECKING:
    from kvmplat.client.agent import Client

__all__ = [
    "COMMAND_MODULES",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "Commands",
    "Context",
    "Handler",
    "Refused",
    "UsageError",
    "build_parser",
    "main",
]

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2
ENV_DEBUG = "KVMPLAT_DEBUG"  # set: an unexpected error (a bug) shows its traceback

COMMAND_MODULES: tuple[str, ...] = (
    "kvmplat.client.cli.commands",
    "kvmplat.client.cli.console",
    "kvmplat.client.cli.demo",
    "kvmplat.client.cli.image",
    "kvmplat.client.cli.moving",
    "kvmplat.client.cli.scheduling",
)


class UsageError(Exception):
    """Bad command-line input found by a handler (exit 2)."""


class Refused(Exception):
    """A platform refused before any agent is asked (a domain's exact CPU model with no level, a machine no KVM
    runs): exit 1, like the agent's own refusals."""


class _ParseError(Exception):
    """argparse's complaint, carried to `main` so it reaches the injected stderr."""

    def __init__(self, usage: str, message: str) -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of exiting on bad input."""

    def error(self, message: str) -> NoReturn:
        """Raises _ParseError (argparse would print and exit)."""
        raise _ParseError(self.format_usage(), message)


@dataclass
class Context:
    """What a handler gets: parsed arguments, output streams, the environment and a lazily made Client."""

    args: argparse.Namespace
    stdout: TextIO
    stderr: TextIO
    env: Mapping[str, str]
    _client: Client | None = field(default=None, repr=False)

    def address(self) -> str:
        """The agent address: --agent, else KVMPLAT_AGENT, else the default socket."""
        from kvmplat.client.agent import default_address

        return str(getattr(self.args, "agent", None) or default_address(dict(self.env)))

    def client(self) -> Client:
        """The Client for the chosen agent (made on first use, so commands that need no agent never import grpc)."""
        if self._client is None:
            from kvmplat.client.agent import Client, TlsFiles

            a = self.args
            if not a.timeout > 0:
                raise UsageError(f"--timeout must be a positive number of seconds, not {a.timeout}")
            tls_args = (getattr(a, "tls_ca", None), getattr(a, "tls_cert", None), getattr(a, "tls_key", None))
            tls = TlsFiles(*tls_args) if any(tls_args) else None
            self._client = Client(self.address(), timeout=a.timeout, tls=tls)
        return self._client

    def print(self, text: str) -> None:
        """One line (or block) to stdout, flushed so followers and pipes see it at once."""
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def warn(self, text: str) -> None:
        """One line to stderr, prefixed with the program name."""
        self.stderr.write(f"kvmplat: {text}\n")
        self.stderr.flush()

    def close(self) -> None:
        """Closes the client's channel if one was made."""
        if self._client is not None:
            self._client.close()
            self._client = None


Handler = Callable[[Context], int]


def _add_global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """--agent, TLS files and --timeout; on subcommands they default to SUPPRESS so the top level's value stands."""

    def default(value: Any) -> Any:
        """`value` at the top level, SUPPRESS on subcommands."""
        return argparse.SUPPRESS if suppress else value

    g = parser.add_argument_group("agent connection")
    g.add_argument("--agent", metavar="ADDR", default=default(None), help="unix:///PATH, unix:PATH or tcp://HOST:PORT")
    g.add_argument("--tls-ca", metavar="PEM", default=default(None), help="CA that signed the agent (tcp)")
    g.add_argument("--tls-cert", metavar="PEM", default=default(None), help="client certificate (mTLS)")
    g.add_argument("--tls-key", metavar="PEM", default=default(None), help="client key (mTLS)")
    g.add_argument("--timeout", metavar="S", type=float, default=default(10.0), help="per-call timeout (10)")


class Commands:
    """The registry command modules add to: `add(name, handler, help)` returns the subcommand's parser."""

    def __init__(self, subparsers: Any) -> None:
        self.subparsers = subparsers

    def add(self, name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        """A new subcommand `name` run by `handler`; global options work after its name too."""
        parser: argparse.ArgumentParser = self.subparsers.add_parser(name, help=help, description=help)
        _add_global_options(parser, suppress=True)
        parser.set_defaults(handler=handler)
        return parser

    @staticmethod
    def add_json(parser: argparse.ArgumentParser) -> None:
        """The --json flag every read command takes."""
        parser.add_argument("--json", action="store_true", help="print protobuf JSON (one object)")


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """The full `kvmplat` parser with every installed command module registered."""
    parser = _Parser(prog="kvmplat", description="Drive a kvmplat agent: KVM guests with a declared platform.")
    _add_global_options(parser, suppress=False)
    commands = Commands(parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser))
    for name in modules:
        module = importlib.import_module(name)
        if hasattr(module, "register"):
            module.register(commands)
        else:
            module.add_commands(commands.subparsers)
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Runs one `kvmplat` command and returns its exit code."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except _ParseError as e:
        err.write(f"{e.usage}kvmplat: error: {e}\n")
        return EXIT_USAGE
    except SystemExit as e:  # --help
        return int(e.code or 0) if isinstance(e.code, int | None) else EXIT_USAGE
    handler = getattr(args, "handler", None)
    if handler is None and getattr(args, "func", None) is None:
        err.write("kvmplat: error: a command is needed (see kvmplat --help)\n")
        return EXIT_USAGE
    ctx = Context(args, out, err, os.environ if env is None else env)
    try:
        return int(handler(ctx) if handler is not None else args.func(args))
    except BaseException as e:
        return _exit_code(e, ctx)
    finally:
        ctx.close()


def _exit_code(exc: BaseException, ctx: Context) -> int:
    """The one mapping from what a handler raised to a message and an exit code."""
    from kvmplat.client.agent import AddressError
    from kvmplat.client.errors import KvmplatError, Unreachable
    from kvmplat.client.specfile import SpecError

    if isinstance(exc, UsageError | SpecError | AddressError):
        ctx.warn(" ".join(str(exc).split()))
        return EXIT_USAGE
    if isinstance(exc, Unreachable):
        ctx.warn(exc.one_line())
        return EXIT_USAGE
    if isinstance(exc, Refused):
        ctx.warn(f"refused: {' '.join(str(exc).split())}")
        return EXIT_REFUSED
    if isinstance(exc, KvmplatError):
        ctx.warn(f"{exc.code}: {exc.one_line()}" if exc.code else exc.one_line())
        return EXIT_REFUSED
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, BrokenPipeError):
        _silence_stdout(ctx)
        return EXIT_OK  # the reader went away (`| head`): nothing left to say
    if isinstance(exc, OSError):  # the environment (a missing directory, a full disk): the user's to fix
        where = f"{exc.filename}: " if exc.filename else ""
        ctx.warn(f"{where}{exc.strerror or exc}")
        return EXIT_USAGE
    if ctx.env.get(ENV_DEBUG) or not isinstance(exc, Exception):
        raise exc
    ctx.warn(f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())} (a bug; {ENV_DEBUG}=1 shows where)")
    return EXIT_USAGE


def _silence_stdout(ctx: Context) -> None:
    """Points a closed stdout at /dev/null so the interpreter's final flush does not complain."""
    if ctx.stdout is sys.stdout:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
