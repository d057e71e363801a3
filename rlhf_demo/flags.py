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

So plain, list and bool fields are added here; ``Literal`` and ``Enum`` fields go to the library. Also not in the
library, and used by the project's configs through a field's ``metadata``:

* ``"flag"``: another spelling than ``--field-name`` (eval's ``suites`` field is ``--suite``, repeatable);
  ``"aliases"``: older spellings that keep working (``--num-threads`` for ``threads``);
* ``"cli": False``: not a flag (set by the program, e.g. eval's ``command``); ``"settings": True``: the field is
  filled from the shared settings flag of the same name (eval's ``max_new_tokens`` is ``--max-new-tokens``);
* **nested configs**: a field whose type is a config dataclass (``PipelineConfig.reward: RewardConfig``) with
  ``metadata["prefix"]`` gets one ``--<prefix>-<field>`` flag per field of the inner config (its default taken
  from the field's default instance), except the fields named in ``metadata["fixed"]`` (set by the outer program).
  The library flattens nothing: its nested dataclasses are not supported at all.
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
        nested = []
        for f in dataclasses.fields(cls):
            if not f.init or f.metadata.get("cli") is False or f.metadata.get("settings"):
                continue
            f.type = hints[f.name]
            if dataclasses.is_dataclass(f.type):
                nested.append(f)
            else:
                self._parse_dataclass_field(group, f)
        for f in nested:
            self._add_nested(f)
        self.dataclass_types = [*self.dataclass_types, cls]
        return self

    def _add_nested(self, outer: dataclasses.Field) -> None:
        """``--<prefix>-<name>`` for every field of the config ``outer`` holds, except its ``fixed`` ones."""
        inner_cls, meta = outer.type, outer.metadata
        prefix, fixed, inner = meta["prefix"], set(meta.get("fixed", ())), _default(outer)
        group = self.add_argument_group(f"{inner_cls.__name__}: --{prefix}-* ({meta.get('help', '')}; defaults "
                                        f"shown; set by the program: {', '.join(sorted(fixed)) or 'nothing'})")
        hints = typing.get_type_hints(inner_cls)
        for f in nested_fields(outer):
            value = getattr(inner, f.name)
            extra = {k: v for k, v in f.metadata.items() if k not in ("flag", "aliases", "action")}
            copy = (dataclasses.field(default_factory=lambda v=value: list(v), metadata=extra) if isinstance(value, list)
                    else dataclasses.field(default=value, metadata=extra))
            copy.name, copy.type = f"{prefix}_{f.name}", hints[f.name]
            self._parse_dataclass_field(group, copy)

    @staticmethod
    def _parse_dataclass_field(parser, field: dataclasses.Field):
        kind, item = _field_type(field.type)
        meta = dict(field.metadata)
        help_text = meta.pop("help", "")
        default = _default(field)
        flags = [meta.pop("flag", None) or "--" + field.name.replace("_", "-"), *meta.pop("aliases", ())]
        if kind is bool:
            parser.add_argument(*flags, dest=field.name, action=argparse.BooleanOptionalAction, default=default,
                                help=f"{help_text} (default: {default})")
            return
        if kind is list:
            kw: dict = {"dest": field.name, "type": item, "default": None,  # None: config_from_args fills the default
                        "help": f"{help_text} (repeatable" + (f"; default: {' '.join(map(str, default))})"
                                                              if default is not None else ")")}
            kw.update(action="append") if meta.get("action") == "append" else kw.update(nargs="+", action="extend")
            for k in ("choices", "metavar"):
                if k in meta:
                    kw[k] = meta[k]
            parser.add_argument(*flags, **kw)
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
        parser.add_argument(*flags, **kw)

    def parse_config(self, cls, argv: list[str] | None = None):
        """Parse ``argv`` (default: ``sys.argv[1:]``); returns ``(cls instance, Settings)``."""
        args = self.parse_args(argv)
        return config_from_args(cls, args), settings_from_args(args)


def nested_fields(outer: dataclasses.Field) -> list[dataclasses.Field]:
    """The fields of the config a nested field holds that are flags (``--<prefix>-<name>``)."""
    fixed = set(outer.metadata.get("fixed", ()))
    return [f for f in dataclasses.fields(outer.type if isinstance(outer.type, type) else _default(outer))
            if f.init and f.name not in fixed and f.metadata.get("cli") is not False]


def config_from_args(cls, args: argparse.Namespace):
    """The dataclass from parsed flags; list fields left unset get their default; a field that is no flag keeps its
    default (or takes the shared settings flag of its name, ``metadata["settings"]``); a nested config is its
    field's default instance with the ``--<prefix>-<name>`` flags applied."""
    values = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.metadata.get("cli") is False or (f.metadata.get("settings") and not hasattr(args, f.name)):
            continue
        if dataclasses.is_dataclass(hints[f.name]) and "prefix" in f.metadata:
            f.type = hints[f.name]
            inner, prefix = _default(f), f.metadata["prefix"]
            given = {g.name: getattr(args, f"{prefix}_{g.name}") for g in nested_fields(f)}
            values[f.name] = dataclasses.replace(inner, **{k: v for k, v in given.items() if v is not None
                                                           or not isinstance(getattr(inner, k), list)})
            continue
        v = getattr(args, f.name)
        if v is None and f.default_factory is not dataclasses.MISSING:
            v = f.default_factory()
        values[f.name] = v
    return cls(**values)


def parse_config(cls, prog: str, description: str | None, argv: list[str] | None = None) -> tuple[object, Settings]:
    """``cls``'s flags plus the shared settings; returns ``(config, settings)``."""
    return ConfigParser(cls, prog=prog, description=description).parse_config(cls, argv)
