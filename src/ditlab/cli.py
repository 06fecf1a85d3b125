"""The ``ditlab`` command: one entry point, subcommands discovered in ``ditlab.commands``."""
from __future__ import annotations

import argparse
import errno
import importlib
import pkgutil
import sys
import warnings
from types import ModuleType

from ditlab.errors import UserError


def _command_modules() -> list[ModuleType]:
    import ditlab.commands as pkg

    modules = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"ditlab.commands.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "run"):
            modules.append(module)
    return modules


_WRITE_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class _Parser(argparse.ArgumentParser):
    """Usage mistakes print one line, like every other user error, and exit with code 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    # The default format adds the file and source line of the warning: noise for a CLI user.
    return f"warning: {' '.join(str(message).split())}\n"


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every discovered subcommand."""
    parser = _Parser(
        prog="ditlab", description="Diffusion Transformers: train, sample, evaluate."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _extra_ok=getattr(module, "ACCEPTS_OVERRIDES", False))
    return parser




def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user mistakes print one line and return 2."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "_extra_ok", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "_extra_ok", False):
        args.overrides = list(getattr(args, "overrides", None) or []) + extra
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    default_format, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return int(args._run(args) or 0)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        if err.errno not in _WRITE_ERRORS:
            raise
        # Permissions and space are the machine's state, not a bug: one line, like other user errors.
        where = f": '{err.filename}'" if err.filename else ""
        print(f"error: {err.strerror}{where}: choose a writable path or free some space", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = default_format


if __name__ == "__main__":
    sys.exit(main())
