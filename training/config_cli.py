"""Moved: the one flag parser is :mod:`rlhf_demo.flags` (transformers' ``HfArgumentParser`` plus the project's
conventions). These names stay importable from here for code written against the old module."""

from rlhf_demo.flags import ConfigParser, config_from_args, parse_config  # noqa: F401
