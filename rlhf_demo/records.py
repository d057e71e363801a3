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

    def conversation(self, which: str) -> list[dict]:
        """The prompt plus the ``"chosen"`` or ``"rejected"`` answer as the last assistant message."""
        return self.prompt + [{"role": "assistant", "content": getattr(self, which)}]

    def to_trl(self) -> dict:
        row = {"prompt": self.prompt, "chosen": [{"role": "assistant", "content": self.chosen}],
               "rejected": [{"role": "assistant", "content": self.rejected}]}
        if self.margin is not None:
            row["margin"] = self.margin
        return row


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
