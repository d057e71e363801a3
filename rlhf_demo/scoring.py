"""Scoring with a reward adapter — the core's, so that the evaluation (a judge), PPO (its reward) and the
reward trainer all score one way, and ``eval`` never imports ``training``.

* :class:`RewardModel` — a LoRA adapter + :class:`~rlhf_demo.adapters.ScalarHead` on the shared base, read at
  the LAST token of a chat-templated conversation;
* :class:`RewardScorer` — batched, no-grad ``.score([[messages…], …]) -> [float, …]``;
* :class:`ToyReward` — ``toy:WORD``, a reward with a known answer for diagnosing PPO;
* :func:`resolve_reward_version` / :func:`load_reward_scorer` — a registry version (``reward-v0`` by default,
  else the current reward model of this base: :meth:`rlhf_demo.registry.Registry.current`; never a judge
  unless asked).

A reward model in the registry (``kind: "reward"``) is a directory with ``adapter_config.json``,
``adapter_model.safetensors`` (standard PEFT), ``score_head.safetensors`` and ``card.json``.
Core: imports nothing from ``training``, ``eval`` or the app.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .adapters import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, HEAD_FILE, ScalarHead, add_adapter, forward_hidden,
                       hidden_size, last_token_scores, load_adapter, save_adapter, set_active_adapter, use_adapter)
from .generation import encode_conversation
from .model_patches import causal_lm, is_peft
from .padding import pad_rows
from .safety_term import SafetyTerm

log = logging.getLogger(__name__)


DEFAULT_REWARD = "reward-v0"


class RewardModel:
    """A LoRA adapter (``adapter_name``) + :class:`ScalarHead` on the shared base."""

    def __init__(self, model, head: ScalarHead, adapter_name: str = "reward"):
        self.model = model
        self.head = head
        self.adapter_name = adapter_name

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def create(cls, base, config, adapter_name: str = "reward", kbit_training: bool = False,
               gradient_checkpointing: bool = False) -> "RewardModel":
        """A fresh reward adapter + head on ``base`` (a transformers or peft model)."""
        if kbit_training and not is_peft(base):
            from peft import prepare_model_for_kbit_training

            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing)
        elif gradient_checkpointing:
            causal_lm(base).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            causal_lm(base).enable_input_require_grads()
        model = add_adapter(base, adapter_name, config)
        set_active_adapter(model, adapter_name)
        head = ScalarHead(hidden_size(model)).to(next(p.device for p in model.parameters()))
        return cls(model, head, adapter_name)

    @classmethod
    def from_dir(cls, base, path: Path, adapter_name: str = "reward", trainable: bool = False) -> "RewardModel":
        """Load a saved reward model (adapter files + ``score_head.safetensors``) onto ``base``."""
        path = Path(path)
        for f in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, HEAD_FILE):
            if not (path / f).is_file():
                raise FileNotFoundError(f"{path} is not a reward model: {f} is missing")
        shared = is_peft(base)
        model = load_adapter(base, path, adapter_name, trainable=trainable)
        if not shared:  # on a model with other adapters, the active one stays active (scoring switches)
            set_active_adapter(model, adapter_name)
        head = ScalarHead.load(path / HEAD_FILE, device=next(p.device for p in model.parameters()))
        head.requires_grad_(trainable)
        return cls(model, head, adapter_name)

    # -- parameters -----------------------------------------------------------------------
    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        params = [(n, p) for n, p in self.model.named_parameters()
                  if p.requires_grad and f".{self.adapter_name}." in n]
        return params + [(f"head.{n}", p) for n, p in self.head.named_parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> "RewardModel":
        self.model.train(mode)
        self.head.train(mode)
        return self

    def eval(self) -> "RewardModel":
        return self.train(False)

    @property
    def device(self) -> torch.device:
        return self.head.linear.weight.device

    # -- scoring --------------------------------------------------------------------------
    def pair_rewards(self, batch, lm_loss: bool = False, inputs_embeds: torch.Tensor | None = None,
                     start_layer: int = 0):
        """Rewards of a packed :class:`~training.data.PairBatch`: ``(chosen [B], rejected [B], lm_logits)``.

        One forward pass per batch: each row holds ``[prefix | chosen | rejected]``.
        ``lm_logits`` (``[B, C, V]`` at ``batch.lm_index``, or None) feed the LM loss on ``chosen``.
        ``inputs_embeds``/``start_layer``: start from cached hidden states of the frozen bottom layers.
        """
        set_active_adapter(self.model, self.adapter_name)
        hidden = forward_hidden(self.model, None if inputs_embeds is not None else batch.input_ids,
                                batch.attention_mask, batch.position_ids, inputs_embeds, start_layer)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        chosen = self.head(hidden[rows, batch.chosen_index])
        rejected = self.head(hidden[rows, batch.rejected_index])
        logits = None
        if lm_loss:
            picked = hidden.gather(1, batch.lm_index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
            logits = causal_lm(self.model).get_output_embeddings()(picked)
        return chosen, rejected, logits

    def lora_start_layer(self) -> int:
        """The first decoder layer with this adapter's LoRA weights (layers below it are frozen)."""
        cfg = self.model.peft_config[self.adapter_name]
        layers = cfg.layers_to_transform
        if layers is None:
            return 0
        return min([layers] if isinstance(layers, int) else layers)

    def score_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards of right-padded conversations ``[B, T]`` at their last non-pad token.

        The reward adapter is active for this call only; the previously active adapter is restored.
        """
        with use_adapter(self.model, self.adapter_name):
            return last_token_scores(self.model, self.head, input_ids, attention_mask)

    # -- saving ---------------------------------------------------------------------------
    def save(self, out_dir: Path) -> Path:
        """PEFT adapter files + ``score_head.safetensors`` (a registry ``reward`` version's files)."""
        out_dir = Path(out_dir)
        save_adapter(self.model, self.adapter_name, out_dir)
        self.head.save(out_dir / HEAD_FILE)
        return out_dir


class RewardScorer:
    """Batched, no-grad scoring of whole conversations: ``.score([[msgs…], …]) -> [float, …]``."""

    def __init__(self, reward_model: RewardModel, tokenizer, max_length: int = 1024, batch_size: int = 8,
                 name: str = "", card: dict | None = None, safety=None):
        self.reward_model = reward_model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.name = name
        self.card = card or {}
        # a composed version's safety term (rlhf_demo.safety_term.SafetyTerm), added by finish(); None = plain
        self.safety = safety

    def finish(self, conversations: Sequence[list[dict]], raw_scores) -> list[float]:
        """The version's reward from the reward head's raw scores: plus the safety term for a composed version."""
        raw = [float(x) for x in raw_scores]
        return raw if self.safety is None else self.safety.compose(conversations, raw)

    @property
    def model(self):
        return self.reward_model.model

    def encode(self, conversation: list[dict]) -> list[int]:
        if not conversation or conversation[-1].get("role") != "assistant":
            raise ValueError("a conversation to score must end with an assistant message")
        ids = encode_conversation(self.tokenizer, conversation)
        return ids[-self.max_length:]

    @torch.no_grad()
    def score(self, conversations: Sequence[list[dict]]) -> list[float]:
        """One reward per conversation (prompt messages + the assistant's answer), in input order
        (for a composed version: the head's score plus the safety term)."""
        return self.finish(conversations, self.score_raw(conversations))

    @torch.no_grad()
    def score_raw(self, conversations: Sequence[list[dict]]) -> list[float]:
        """The reward head's scores alone (no safety term)."""
        if not conversations:
            return []
        rows = [self.encode(c) for c in conversations]
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        out = [0.0] * len(rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        device = self.reward_model.device
        was_training = self.model.training
        self.reward_model.eval()
        try:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                ids, mask = pad_rows([rows[i] for i in chunk], pad, "right")
                scores = self.reward_model.score_ids(ids.to(device), mask.to(device))
                for b, i in enumerate(chunk):
                    out[i] = float(scores[b])
        finally:
            self.reward_model.train(was_training)
        return out

    def score_pairs(self, pairs) -> tuple[list[float], list[float]]:
        """(chosen rewards, rejected rewards) of :class:`~training.data.PreferencePair` s."""
        chosen = self.score([p.conversation("chosen") for p in pairs])
        rejected = self.score([p.conversation("rejected") for p in pairs])
        return chosen, rejected
TOY_PREFIX = "toy:"


class ToyReward:
    """A reward with a known answer, for diagnosing PPO: ``toy:WORD`` pays 1 for an answer that contains
    WORD as a whole word (case-insensitive), else 0 — the optimal policy says WORD in every answer.

    Same interface as :class:`RewardScorer` (``.score(conversations) -> [float]``, ``.name``, ``.card``)
    but no adapter and no model: PPO with it runs without a reward model (its critic starts fresh).
    """

    reward_model = None

    def __init__(self, word: str):
        import re

        word = word.strip()
        if not word or not re.fullmatch(r"[\w'-]+", word):
            raise ValueError(f"toy reward {TOY_PREFIX}{word!r}: WORD must be one word (letters, digits, ' or -)")
        self.word = word
        self.name = f"{TOY_PREFIX}{word}"
        self.card = {"kind": "toy-reward", "word": word}
        self._pattern = re.compile(rf"(?<![\w'-]){re.escape(word)}(?![\w'-])", re.IGNORECASE)

    @staticmethod
    def parse(spec: str | None) -> "ToyReward | None":
        """The toy reward named by ``spec`` (``toy:WORD``), or None for a registry name."""
        if not spec or not spec.startswith(TOY_PREFIX):
            return None
        return ToyReward(spec[len(TOY_PREFIX):])

    def answer_score(self, text: str) -> float:
        return 1.0 if self._pattern.search(text or "") else 0.0

    def score(self, conversations: Sequence[list[dict]]) -> list[float]:
        out = []
        for c in conversations:
            if not c or c[-1].get("role") != "assistant":
                raise ValueError("a conversation to score must end with an assistant message")
            out.append(self.answer_score(c[-1].get("content", "")))
        return out


def resolve_reward_version(settings, name: str | None = None, registry=None, allow_judge: bool = False):
    """The registry version of a reward model.

    ``name`` picks one. Otherwise: among the reward models trained on ``settings.base_model`` (or
    whose card names no base), ``reward-v0`` (the shipped default) if present, else the newest.
    A judge (card ``"role": "judge"``) is never a default, and naming one is refused unless
    ``allow_judge`` (the evaluation's helpfulness judge): nothing trains against a judge.
    """
    from rlhf_demo.registry import Registry, RegistryError

    registry = registry or Registry(settings.versions_dir)
    if name:
        version = registry.get(name, kind="reward")
        if version.card.get("role") == "judge" and not allow_judge:
            raise RegistryError(f"{name} is a judge (its card has role 'judge'): it grades policies in the "
                                "evaluation and is never trained against or trained further; pick a reward-vN")
        return version
    version = registry.current("reward", base_model=settings.base_model, role="reward", prefer=DEFAULT_REWARD)
    if version is None:  # a judge is never a default
        versions = [v for v in registry.list("reward") if v.card.get("role") != "judge"]
        other = f" (there are reward models for other bases: {', '.join(v.name for v in versions)})" if versions else ""
        raise RegistryError(f"no reward model for base {settings.base_model!r}{other}: train one with "
                            "`python -m training.reward_model` (or `make train-reward`)")
    return version


def load_reward_scorer(settings, name: str | None = None, model=None, tokenizer=None, batch_size: int = 8,
                       adapter_name: str = "reward", allow_judge: bool = False) -> RewardScorer:
    """Load a reward model from the registry as a :class:`RewardScorer`.

    ``name``: a registry version (default: ``reward-v0``, or the newest reward model if that is
    missing; only models trained on ``settings.base_model`` are considered by default). ``model``/``tokenizer``: an already loaded base (or peft model, e.g. PPO's policy) to put
    the reward adapter on — one base in memory for every role; otherwise the base is loaded from
    ``settings`` (``--load-in-4bit`` applies).
    """
    version = resolve_reward_version(settings, name, allow_judge=allow_judge)
    card_base = version.card.get("base_model")
    if card_base and card_base != settings.base_model:
        log.warning("reward model %s was trained on base %s, scoring with %s", version.name, card_base,
                    settings.base_model)
    if model is None:
        from rlhf_demo.base_model import load_base_model

        model, loaded_tokenizer = load_base_model(settings)
        tokenizer = tokenizer or loaded_tokenizer
    elif tokenizer is None:
        from rlhf_demo.base_model import load_tokenizer

        tokenizer = load_tokenizer(settings)
    reward = RewardModel.from_dir(model, version.path, adapter_name=adapter_name, trainable=False)
    reward.eval()
    max_length = int(version.card.get("config", {}).get("max_length", 1024))
    return RewardScorer(reward, tokenizer, max_length=max_length, batch_size=batch_size, name=version.name,
                        card=version.card, safety=SafetyTerm.load(version.path))
