"""One module per ``taichi-dr`` subcommand: ``add_arguments(parser)`` and ``run(args)``."""
