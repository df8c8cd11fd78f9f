"""`steadyscribe profiles list|show|validate`: inspect and check run profiles.

A profile error exits 2, as it does for `steadyscribe run` (bad configuration).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from steadyscribe.profiles import ProfileError, list_profiles, load_profile, profile_yaml

# The exit status of bad configuration, as `steadyscribe run` gives it.
PROFILE_ERROR_EXIT = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `profiles` command; each sub-command's `func(args)` returns an exit code."""
    profiles = subparsers.add_parser("profiles", help="list, show or validate run profiles")
    commands = profiles.add_subparsers(dest="profiles_command", required=True)

    commands.add_parser("list", help="profiles that can be named, and their files").set_defaults(func=list_command)

    show = commands.add_parser("show", help="print a profile fully merged (extends resolved) as YAML")
    show.add_argument("profile", help="a profile name or a path to a YAML file")
    show.set_defaults(func=show_command)

    validate = commands.add_parser("validate", help="check profile files; exit 2 if any is invalid")
    validate.add_argument("paths", nargs="+", metavar="PATH")
    validate.set_defaults(func=validate_command)


def list_command(args: argparse.Namespace) -> int:
    for name, path in list_profiles().items():
        try:
            description = load_profile(str(path)).description
        except ProfileError:
            description = "(invalid: run `steadyscribe profiles validate`)"
        print(f"{name:<14} {description}  [{path}]")
    return 0


def show_command(args: argparse.Namespace) -> int:
    try:
        print(profile_yaml(load_profile(args.profile)), end="")
    except ProfileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return PROFILE_ERROR_EXIT
    return 0


def validate_command(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.paths:
        try:
            load_profile(str(Path(path).absolute()))  # always a file, even when named like a profile
            print(f"ok: {path}")
        except ProfileError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
    return PROFILE_ERROR_EXIT if failed else 0
