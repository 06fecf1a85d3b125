"""Subcommands of the ``ditlab`` CLI, one module each.

Every module here defines ``NAME`` (the subcommand, e.g. ``"train"``), ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. ``ditlab.cli`` discovers them, so adding a
command never edits a shared file.
"""
