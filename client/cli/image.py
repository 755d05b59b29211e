"""`kvmplat image build` and `kvmplat image path [--json]`, registered by the CLI with one call to add_commands().

Each handler is `func(args) -> int` (the exit code), set with set_defaults(func=...) on its parser.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from kvmplat.client import guest_image as image

__all__ = ["add_commands", "main"]


def _progress(stream: TextIO) -> image.Progress:
    """A progress callback printing one line per step."""

    def report(message: str) -> None:
        print(f"kvmplat image: {message}", file=stream, flush=True)

    return report


def _build(args: argparse.Namespace) -> int:
    """kvmplat image build."""
    try:
        result = image.build(_progress(sys.stderr), refresh=args.refresh)
    except image.ImageError as exc:
        print(f"kvmplat image build: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


def _path(args: argparse.Namespace) -> int:
    """kvmplat image path."""
    try:
        result = image.paths()
    except image.ImageError as exc:
        print(f"kvmplat image path: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


def add_commands(subparsers: Any) -> None:
    """Register `image build` and `image path` on the CLI's top-level subparsers (from add_subparsers())."""
    parser = subparsers.add_parser("image", help="the Linux guest image (Debian kernel + busybox initramfs)")
    sub = parser.add_subparsers(dest="image_command", required=True)
    build = sub.add_parser("build", help="download Debian's kernel and busybox-static, build vmlinux and initramfs")
    build.add_argument("--refresh", action="store_true", help="rebuild even if a finished build is cached")
    build.add_argument("--json", action="store_true", help="print the resulting paths as JSON")
    build.set_defaults(func=_build)
    path = sub.add_parser("path", help="print the built image's kernel, vmlinux, initrd and default cmdline")
    path.add_argument("--json", action="store_true", help="one JSON object")
    path.set_defaults(func=_path)


def main(argv: list[str] | None = None) -> int:
    """Run the image commands alone (`python -m kvmplat.client.cli.image image build`)."""
    parser = argparse.ArgumentParser(prog="kvmplat")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
