"""The ``latent-transforms`` command line: ``list`` and ``fetch`` codec checkpoints, ``train`` a codec and
``register`` it by name (``unregister`` removes it), run the ``demo``.

Each subcommand is a ``_cmd_*(args)`` function registered in ``_build_parser`` with ``set_defaults(func=...)``
(``train``'s and ``demo``'s by their modules' ``register_cli``, which it calls).
Errors print one line to stderr (after argparse's usage for a malformed option) and exit with status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import warnings
from typing import Any, TextIO

from . import __version__, demo, hub, train
from .validation import is_out_of_memory

__all__: list[str] = []  # the package's own machinery: none of it is API (docs/api.md)

_PROG = "latent-transforms"


def _size(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _quality(q: dict[str, object]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in q.items()) or "-"


def _where(row: dict[str, Any]) -> str:
    """Where a listed checkpoint is available: cached, shipped, only remote, or nowhere (no hub URL set)."""
    return ", ".join(w for w in ("cached", "shipped") if row[w]) or ("remote" if row["remote"] else "missing")


def _cmd_list(args: argparse.Namespace) -> None:
    rows = hub.list_checkpoints()
    if not rows:
        print("no checkpoints registered")
        return
    if args.verbose:
        for r in rows:
            print(f"{r['name']}  ({r['config'].get('kind', '?')}, {_size(r.get('size'))}, {_where(r)})")
            for label, value in (("trained on", r.get("trained_on") or "-"), ("quality", _quality(r.get("quality") or {})),
                                 ("notes", r.get("notes") or "-"), ("file", f"{r['file']}  sha256 {r['sha256']}")):
                print(f"  {label + ':':<12}{value}")
        return
    table = [("NAME", "KIND", "SIZE", "AVAILABLE", "QUALITY")]
    for r in rows:
        quality = r.get("quality") or {}
        headline = {k: v for k, v in quality.items() if k.startswith("test_")} or dict(list(quality.items())[:2])
        table.append((r["name"], str(r["config"].get("kind", "?")), _size(r.get("size")), _where(r), _quality(headline)))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print(f"\n(`{_PROG} list -v`: every quality figure, training data, notes and sha256)")


def _cmd_fetch(args: argparse.Namespace) -> None:
    print(hub.fetch(args.name))


def _cmd_register(args: argparse.Namespace) -> None:
    done = hub.register_run(args.run, name=args.name, overwrite=args.overwrite)
    if not done.changed:
        print(f"{done.name!r} is already registered with this run's checkpoint ({done.path}); nothing changed")
        return
    print(f"registered {done.name!r} in {hub.user_registry_path()} (checkpoint: {done.path})")
    print(f"load it:  codec = latent_transforms.hub.load({done.name!r})")


def _cmd_unregister(args: argparse.Namespace) -> None:
    entry = hub.unregister(args.name, persist=True)
    print(f"unregistered {args.name!r} from {hub.user_registry_path()}")
    copy = hub.cache_dir() / entry["file"]
    users = sorted(r["name"] for r in hub.list_checkpoints() if r["file"] == entry["file"])
    if args.keep_file or not copy.is_file():
        return
    if users:
        print(f"kept {copy}: checkpoint {users[0]!r} uses it too")
        return
    copy.unlink()
    print(f"deleted {copy}")


def _build_parser() -> argparse.ArgumentParser:
    """The argument parser; add a subcommand with ``subparsers.add_parser(...).set_defaults(func=...)``."""
    parser = argparse.ArgumentParser(prog=_PROG, description="Semantic data augmentation with pretrained codecs.")
    parser.add_argument("--version", action="version", version=f"{_PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = subparsers.add_parser("list", help="list the registered codec checkpoints and where they are available")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="every detail of each checkpoint: training data, quality figures, notes, file and sha256")
    p.set_defaults(func=_cmd_list)

    p = subparsers.add_parser("fetch", help="verify a checkpoint, downloading it into the cache unless it is shipped "
                                            "or cached; print its path")
    p.add_argument("name", help="registered checkpoint name (see `list`)")
    p.set_defaults(func=_cmd_fetch)

    p = subparsers.add_parser(
        "register", help="register a trained codec by name, for every process: `hub.load(NAME)`, `fetch NAME`",
        description="Copy the checkpoint of a `train` run into the cache dir as NAME.safetensors and add NAME to the "
                    "user registry (registry.json in the cache dir), so any process can load it by name.")
    p.add_argument("run", metavar="RUN.json", help="the JSON `train` wrote beside its checkpoint (OUT/NAME.json)")
    p.add_argument("--name", help="the name to register (default: the run's name)")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint you registered under that name")
    p.set_defaults(func=_cmd_register)

    p = subparsers.add_parser(
        "unregister", help="remove a name you registered, and the checkpoint copy `register` put in the cache dir",
        description="Remove NAME from the user registry (registry.json in the cache dir) and delete NAME's checkpoint "
                    "file from the cache dir unless --keep-file or another registered name uses it. Shipped "
                    "checkpoints cannot be removed.")
    p.add_argument("name", help="a name you registered (see `list`)")
    p.add_argument("--keep-file", action="store_true", help="leave the checkpoint file in the cache dir")
    p.set_defaults(func=_cmd_unregister)

    train.register_cli(subparsers)
    demo.register_cli(subparsers)
    return parser


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    print(f"{_PROG}: warning: {message}", file=sys.stderr if file is None else file)


def _stdout_is_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone: poll reports an error on its write end (Linux; elsewhere,
    where poll may not say so, False: the broken pipe is then reported as an error)."""
    try:
        import select

        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no file descriptor (a captured stdout)
        return False


def _end_by_sigint() -> None:
    """End this process by SIGINT, as Python does after an uncaught ``KeyboardInterrupt`` (status 130 in a shell): bash
    takes a command that exited 130 itself as having handled the Ctrl-C, and a script's loop goes on to its next
    command. Returns where SIGINT does not end a process so (not POSIX)."""
    if os.name != "posix":
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing more to tell it
            stream.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.raise_signal(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns 0, or exits with status 2 after a one-line error on stderr (130 on Ctrl-C, 141 when
    the reader of stdout went away, as a shell reports SIGPIPE). As the command (``argv`` None), a Ctrl-C ends the
    process by SIGINT (``_end_by_sigint``) rather than by ``SystemExit(130)``."""
    args = _build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():  # one line each, as the errors: not Python's "file:line: UserWarning" + source
            warnings.showwarning = _show_warning
            args.func(args)
            sys.stdout.flush()  # here, where a closed pipe is caught below, not at exit
    except BrokenPipeError as e:
        if not _stdout_is_closed():  # another pipe broke: an error like any other
            print(f"{_PROG}: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        # `latent-transforms list | head`: the reader has what it wanted; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail again
        raise SystemExit(141) from None  # as a shell reports a command ended by SIGPIPE
    except (hub.HubError, LookupError, ValueError, OSError, ImportError, ArithmeticError) as e:
        print(f"{_PROG}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except RuntimeError as e:  # only out of memory: any other is a bug, and its traceback is wanted
        if not is_out_of_memory(e):
            raise
        print(f"{_PROG}: error: out of memory ({' '.join(str(e).split())}); with `train`, try a smaller --batch-size "
              f"or --hidden", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        if argv is None:  # the command itself, not main([...]) called in a process of one's own
            _end_by_sigint()
        raise SystemExit(130) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
