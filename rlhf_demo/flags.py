"""One flag parser for every entry point (``python app.py``, ``python -m training.reward_model``,
``python -m training.ppo``, ``python -m arena_app.pipeline``, ``python -m eval``, ``python -m rlhf_demo.generate``).

:class:`ConfigParser` is transformers' ``HfArgumentParser`` (one ``--flag-name`` per field of a config
dataclass, its ``metadata["help"]`` as the help, ``Literal``/``Enum``/``Optional`` fields, ``--field_name``
spellings too, and ``parse_dict`` / ``parse_json_file`` / ``parse_yaml_file`` for configs in files), plus the
shared settings flags (:func:`rlhf_demo.config.add_settings_args`: data dir, base model, device, …, each
naming its environment variable; flag > environment variable > default). Three things the library cannot do,
so :meth:`ConfigParser._parse_dataclass_field` does them itself:

* **repeatable list flags** (``--data seed --data hh=x.jsonl``; ``metadata["action"] = "append"`` for one value
  a flag, otherwise ``nargs="+"`` that extends): the library's ``nargs="+"`` keeps only the last occurrence,
  and an ``append`` onto its default list would keep the default's items too. Here the parsed value is None
  when the flag is absent and :func:`config_from_args` fills in the field's default;
* **``--x/--no-x`` for every bool** (the library gives ``--no_x`` only to bools whose default is True);
* **the default in every flag's help** (without the library's ``ArgumentDefaultsHelpFormatter``, which would
  also print ``(default: None)`` where the help text says what None means);
* **one spelling a flag**: the library registers ``--field_name`` first (what usage lines and error messages
  show) and ``--field-name`` second; the project's flags, in the README and the Makefile, are ``--field-name``.

So plain, list and bool fields are added here; ``Literal`` and ``Enum`` fields go to the library.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import types
import typing

from transformers import HfArgumentParser

from .config import Settings, add_settings_args, settings_from_args


def _field_type(t) -> tuple[type, type | None]:
    """(type, item type of a list) of a resolved field type; ``X | None`` counts as ``X``."""
    args = [a for a in typing.get_args(t) if a is not type(None)]
    if typing.get_origin(t) in (typing.Union, types.UnionType) and len(args) == 1:
        t = args[0]
    if typing.get_origin(t) is list:
        return list, typing.get_args(t)[0]
    return t, None


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


class ConfigParser(HfArgumentParser):
    """``HfArgumentParser`` with the project's list/bool/help conventions and the shared settings flags.

    ``ConfigParser(PPOConfig, prog=…, description=…)`` adds PPOConfig's flags (in a group titled ``title``) and,
    unless ``settings=False``, the shared settings flags; :meth:`parse_config` returns ``(config, settings)``."""

    def __init__(self, dataclass_types=None, title: str | None = None, settings: bool = True, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(None, **kwargs)
        if dataclass_types is None:
            dataclass_types = []
        elif dataclasses.is_dataclass(dataclass_types):
            dataclass_types = [dataclass_types]
        for cls in dataclass_types:
            self.add_dataclass(cls, title)
        if settings:
            add_settings_args(self)

    def add_dataclass(self, cls, title: str | None = None) -> "ConfigParser":
        """One flag per field of ``cls`` in an argument group (default title: ``<Class> (defaults shown)``)."""
        group = self.add_argument_group(title or f"{cls.__name__} (defaults shown)")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                f.type = hints[f.name]
                self._parse_dataclass_field(group, f)
        self.dataclass_types = [*self.dataclass_types, cls]
        return self

    @staticmethod
    def _parse_dataclass_field(parser, field: dataclasses.Field):
        kind, item = _field_type(field.type)
        meta = dict(field.metadata)
        help_text = meta.pop("help", "")
        default = _default(field)
        flag = "--" + field.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=default,
                                help=f"{help_text} (default: {default})")
            return
        if kind is list:
            kw: dict = {"dest": field.name, "type": item, "default": None,  # None: config_from_args fills the default
                        "help": f"{help_text} (repeatable; default: {' '.join(map(str, default))})"}
            kw.update(action="append") if meta.get("action") == "append" else kw.update(nargs="+", action="extend")
            for k in ("choices", "metavar"):
                if k in meta:
                    kw[k] = meta[k]
            parser.add_argument(flag, **kw)
            return
        if typing.get_origin(kind) is typing.Literal or (isinstance(kind, type) and issubclass(kind, enum.Enum)):
            copy = dataclasses.field(default=field.default, default_factory=field.default_factory,
                                     metadata={**meta, "help": f"{help_text} (default: {default})"})
            copy.name, copy.type = field.name, kind
            HfArgumentParser._parse_dataclass_field(parser, copy)  # choices from the type: the library's way
            return
        kw = {"dest": field.name, "type": kind, "default": default, "help": help_text}
        if default is not None:
            kw["help"] += " (default: %(default)r)" if isinstance(default, str) else " (default: %(default)s)"
        for k in ("choices", "metavar"):
            if k in meta:
                kw[k] = meta[k]
        parser.add_argument(flag, **kw)

    def parse_config(self, cls, argv: list[str] | None = None):
        """Parse ``argv`` (default: ``sys.argv[1:]``); returns ``(cls instance, Settings)``."""
        args = self.parse_args(argv)
        return config_from_args(cls, args), settings_from_args(args)


def config_from_args(cls, args: argparse.Namespace):
    """The dataclass from parsed flags; list fields left unset get their default."""
    values = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        v = getattr(args, f.name)
        if v is None and f.default_factory is not dataclasses.MISSING:
            v = f.default_factory()
        values[f.name] = v
    return cls(**values)


def parse_config(cls, prog: str, description: str | None, argv: list[str] | None = None) -> tuple[object, Settings]:
    """``cls``'s flags plus the shared settings; returns ``(config, settings)``."""
    return ConfigParser(cls, prog=prog, description=description).parse_config(cls, argv)
