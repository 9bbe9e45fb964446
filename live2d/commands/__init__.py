"""Subcommands of ``live2d``: each module has ``add_args(parser)`` and ``main(args) -> int``."""
