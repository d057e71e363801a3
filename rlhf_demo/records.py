"""The core's typed records: what export returns and training reads. TRL JSON only at file boundaries
(:meth:`PreferencePair.to_trl`; the readers in ``training.data`` turn rows into records).

* :class:`PreferencePair` — after ``prompt`` (chat messages), ``chosen`` beats ``rejected``;
* :class:`PromptItem` — a prompt for PPO rollouts;
* a version of a model is :class:`rlhf_demo.registry.Version`.

Core: imports nothing from ``training``, ``eval`` or the app.
"""

from __future__ import annotations

from dataclasses import dataclass

from .registry import Version  # noqa: F401 - the third record, kept with the registry that makes it

@dataclass
class PreferencePair:
    """One preference: after ``prompt`` (chat messages), ``chosen`` beats ``rejected``."""

    prompt: list[dict]
    chosen: str
    rejected: str
    margin: float | None = None
    source: str = ""
    id: str | None = None
    category: str | None = None
    meta: dict | None = None  # provenance of an arena pair (rlhf_demo.export.vote_meta: vote id, pairing, ...)

    def conversation(self, which: str) -> list[dict]:
        """The prompt plus the ``"chosen"`` or ``"rejected"`` answer as the last assistant message."""
        return self.prompt + [{"role": "assistant", "content": getattr(self, which)}]

    def to_trl(self) -> dict:
        row = {"prompt": self.prompt, "chosen": [{"role": "assistant", "content": self.chosen}],
               "rejected": [{"role": "assistant", "content": self.rejected}]}
        if self.margin is not None:
            row["margin"] = self.margin
        if self.meta is not None:
            row["meta"] = self.meta
        return row

    @classmethod
    def from_export_row(cls, row: dict, source: str = "arena") -> "PreferencePair":
        """A row :mod:`rlhf_demo.export` built (prompt messages, ONE assistant message each side, ``meta``)."""
        return cls(row["prompt"], row["chosen"][0]["content"], row["rejected"][0]["content"], row.get("margin"),
                   source, meta=row.get("meta"))


@dataclass
class PromptItem:
    """A prompt for PPO rollouts."""

    messages: list[dict]
    source: str = ""
    id: str | None = None
    category: str | None = None

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]

    def to_row(self) -> dict:
        """The JSONL row of a prompt file (``{"id", "category", "prompt"}``; the last user message as the prompt)."""
        return {"id": self.id, "category": self.category, "prompt": self.text}
