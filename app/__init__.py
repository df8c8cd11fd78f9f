"""Entry points: the `steadyscribe` command line and its subcommands (run, align, serve, profiles, models, notify)."""
