"""The ``cas`` command line: git's habits over an artifact store.

``cas [--root URL] [--json] COMMAND``; the root also comes from ``CAS_ROOT`` (default
``./.cas``). Quiet by default; ``--json`` prints one JSON document; exit codes: 0 success,
1 problems found (fsck problems, gc refused, push/pull conflicts), 2 usage or runtime
error. Errors go to stderr as ``cas: <message>``, never as a traceback. The everyday
commands are in :mod:`cas.cli.everyday`; maintenance and transfer (gc, fsck, reindex,
sync, du, push, pull) in :mod:`cas.cli.admin`. docs/cli.md shows every command with an example.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from collections.abc import Sequence
from typing import Final

from cas import __version__
from cas import catalog as _catalog
from cas.cli import admin, everyday
from cas.cli.common import DEFAULT_ROOT, EXIT_ERROR, EXIT_OK, Command
from cas.cli.output import Output
from cas.errors import CasError
from cas.serve import cli as serve_cli


def build_parser() -> argparse.ArgumentParser:
    # --root and --json work before the command (git style) and after it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default=argparse.SUPPRESS, help="store root URL")
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document"
    )
    parser = argparse.ArgumentParser(
        prog="cas", description="A content-addressed artifact store for ML pipelines."
    )
    parser.add_argument(
        "--root", default=os.environ.get("CAS_ROOT") or DEFAULT_ROOT,
        help="store root: a folder, file://, memory://, s3://, gs://, az:// (env CAS_ROOT; default ./.cas)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON document (for scripts)")
    parser.add_argument("--version", action="version", version=f"cas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, run: Command, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(run=run)
        return p

    everyday.add_commands(add)
    admin.add_commands(add)
    serve_cli.add_arguments(
        add("serve", cmd_serve, "serve the store over HTTP: a web page, a read API and "
            "FlowyML's catalog API (needs the extra: pip install 'cas-store[serve]')"),
        root=False,
    )  # fmt: skip
    return parser


def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    return serve_cli.run(args)


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, CasError) and exc.filename:
        return f"{exc.strerror or exc}: {exc.filename}"
    return str(exc) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    out = Output(bool(args.json))
    try:
        code: int = args.run(args, out)
    except KeyboardInterrupt:
        sys.stderr.write("cas: interrupted\n")
        return 130
    except BrokenPipeError:
        # The reader went away (`cas ls | head`): not an error; silence the final flush.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except (CasError, _catalog.CatalogError, OSError) as exc:
        sys.stderr.write(f"cas: {_message(exc)}\n")
        if out.json and not out.documented:  # a script reads one document, failed or not
            out.document({"error": _message(exc), "kind": type(exc).__name__, "exit": EXIT_ERROR})
        return EXIT_ERROR
    return code


def run() -> None:
    bound_malloc()
    sys.exit(main())


#: glibc's mmap threshold for this process (the ``cas`` command), unless the environment
#: sets one (``MALLOC_MMAP_THRESHOLD_``). By default glibc raises the threshold to the
#: largest block freed so far (a 16 MiB pack), after which the 1 MiB chunks a transfer
#: allocates and frees come from heaps that fragment and are not given back: a 200 MiB
#: put on S3 peaked at +147 MiB over an idle process, +80 MiB with this bound
#: (docs/performance.md). Only the command sets it: a library does not tune the malloc
#: of the process that imports it.
MMAP_THRESHOLD: Final = 1 << 20


def bound_malloc() -> None:
    """Bound this process's malloc as :data:`MMAP_THRESHOLD` says (glibc on Linux)."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


_M_MMAP_THRESHOLD: Final = -3  # glibc's malloc.h


if __name__ == "__main__":
    run()
