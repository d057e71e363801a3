"""Dataclass configs on the command line (like TRL's HfArgumentParser, without the framework).

Each field becomes ``--field-name`` with its ``metadata["help"]`` and default in ``--help``; bools
get ``--x/--no-x``; ``list[str]`` fields are repeatable (``--prompts seed --prompts arena``) or
space-separated. The shared settings flags (--data-dir, --base-model, --load-in-4bit, …) come too.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from rlhf_demo.config import Settings, add_settings_args, settings_from_args


def add_dataclass_args(parser: argparse.ArgumentParser, cls, title: str | None = None) -> None:
    group = parser.add_argument_group(title or f"{cls.__name__} (defaults shown)")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = hints[f.name]
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                               help=f"{help_text} (default: {default})")
        elif typing.get_origin(kind) is list:
            group.add_argument(flag, nargs="+", action="extend", default=None,
                               help=f"{help_text} (repeatable; default: {' '.join(map(str, default))})")
        else:
            group.add_argument(flag, type=kind, default=default, help=f"{help_text} (default: {default!r})")


def config_from_args(cls, args: argparse.Namespace):
    values = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name)
        if v is None and typing.get_origin(typing.get_type_hints(cls)[f.name]) is list:
            v = f.default_factory()
        values[f.name] = v
    return cls(**values)


def parse_config(cls, prog: str, description: str | None, argv: list[str] | None = None):
    """Parse ``cls`` fields plus the shared settings; returns ``(config, settings)``."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(parser, cls)
    add_settings_args(parser)
    args = parser.parse_args(argv)
    settings: Settings = settings_from_args(args)
    return config_from_args(cls, args), settings
