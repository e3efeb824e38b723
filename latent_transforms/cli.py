"""The ``latent-transforms`` command line: ``list`` and ``fetch`` codec checkpoints, ``train`` a codec, run the
``demo``.

Each subcommand is a ``_cmd_*(args)`` function registered in ``build_parser`` with ``set_defaults(func=...)``.
Errors print one line to stderr and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys

from . import __version__, demo, hub, train

PROG = "latent-transforms"


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _quality(q: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in q.items()) or "-"


def _cmd_list(args: argparse.Namespace) -> None:
    rows = hub.list_checkpoints()
    if not rows:
        print("no checkpoints registered")
        return
    table = [("NAME", "KIND", "SIZE", "TRAINED ON", "QUALITY", "AVAILABLE")]
    for r in rows:
        where = ", ".join(w for w in ("cached", "shipped") if r[w]) or "remote"
        table.append((r["name"], str(r["config"].get("kind", "?")), _size(r.get("size")),
                      r.get("trained_on") or "-", _quality(r.get("quality") or {}), where))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _cmd_fetch(args: argparse.Namespace) -> None:
    print(hub.fetch(args.name))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; add a subcommand with ``subparsers.add_parser(...).set_defaults(func=...)``."""
    parser = argparse.ArgumentParser(prog=PROG, description="Semantic data augmentation with pretrained codecs.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = subparsers.add_parser("list", help="list the registered codec checkpoints and where they are available")
    p.set_defaults(func=_cmd_list)

    p = subparsers.add_parser("fetch", help="download and verify a checkpoint into the cache; print its path")
    p.add_argument("name", help="registered checkpoint name (see `list`)")
    p.set_defaults(func=_cmd_fetch)

    train.register_cli(subparsers)
    demo.register_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns 0, or exits with status 2 after a one-line error on stderr."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (hub.HubError, LookupError, ValueError, OSError, ImportError, ArithmeticError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
