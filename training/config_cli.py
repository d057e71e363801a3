"""Dataclass configs on the command line (like TRL's HfArgumentParser, without the framework).

Each field becomes ``--field-name`` with its ``metadata["help"]`` and default in ``--help``; bools
get ``--x/--no-x``; ``list[str]`` fields are repeatable (``--prompts seed --prompts arena``) or
space-separated. The shared settings flags (--data-dir, --base-model, --load-in-4bit, …) come too.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

from rlhf_demo.config import Settings, add_settings_args, settings_from_args


def _field_type(f: dataclasses.Field, cls) -> tuple[type, type | None]:
    """(type, item type of a list) of a field; ``X | None`` counts as ``X``."""
    t = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(t) if a is not type(None)]
    if typing.get_origin(t) in (typing.Union, types.UnionType) and len(args) == 1:
        t = args[0]
    if typing.get_origin(t) is list:
        return list, typing.get_args(t)[0]
    return t, None


def add_dataclass_args(parser: argparse.ArgumentParser, cls, title: str | None = None) -> argparse.ArgumentParser:
    """One ``--flag`` per field of ``cls``, with the field's ``metadata["help"]`` and its default.

    ``metadata`` may also give ``choices``, ``metavar`` and, for list fields, ``action="append"``
    (one value per flag); other list fields take one or more values and are repeatable.
    """
    group = parser.add_argument_group(title or f"{cls.__name__} (defaults shown)")
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        meta = dict(f.metadata)
        help_text = meta.pop("help", "")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kind, item = _field_type(f, cls)
        kw: dict = {"dest": f.name, "help": help_text}
        if kind is bool:
            kw.update(action=argparse.BooleanOptionalAction, default=default, help=f"{help_text} (default: {default})")
        elif kind is list:
            kw.update(type=item, default=None)  # None: the field's default_factory fills it in
            kw.update(action="append") if meta.get("action") == "append" else kw.update(nargs="+", action="extend")
            kw["help"] += f" (repeatable; default: {' '.join(map(str, default))})"
        else:
            kw.update(type=kind, default=default)
            if default is not None:
                kw["help"] += " (default: %(default)r)" if isinstance(default, str) else " (default: %(default)s)"
        for k in ("choices", "metavar"):
            if k in meta:
                kw[k] = meta[k]
        group.add_argument(flag, **kw)
    return parser


def config_from_args(cls, args: argparse.Namespace):
    """The dataclass from parsed flags; list fields left unset get their default."""
    values = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name)
        if v is None and f.default_factory is not dataclasses.MISSING:
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
