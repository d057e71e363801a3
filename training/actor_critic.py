"""PPO's four roles on ONE base model (built from the primitives in :mod:`training.roles`).

    policy     LoRA adapter "policy", trainable (fresh = the SFT model at step 0, or an rlhf-vN)
    reference  the same model with every adapter disabled (SFT); with --kl-reference init, the KL penalty's
               reference is a frozen adapter "reference", a copy of the starting policy
    reward     adapter "reward" + score head from a reward-vN, frozen
    critic     adapter "critic" + value head, trainable; PPO-max initialises both from the reward model

The model stays in eval mode (no dropout), so the log-probs of the rollout and of the first update
step agree exactly; gradients still flow where a parameter requires them.

Shared frozen trunk: when the policy and critic adapters sit on the top layers only
(``--lora-layers K``), the layers below them are the same function for the policy, the reference
and the critic. :meth:`trunk` runs them ONCE per rollout batch; every role's forward (and backward)
then runs only the top K layers from the cached hidden states. When the reward adapter also sits at
or above that layer, :meth:`score_and_trunk` scores the rollouts from the same trunk too.

Speed at the same numbers, up to float rounding (each helper says why): :meth:`token_logprobs` runs
the LM head only where an answer token is predicted, a chunk of rows at a time; on CPU every role's
forward runs float32 matmul attention (:func:`training.roles.float32_attention_forward`); roles switch
through :class:`training.roles.AdapterSwitch`; the LM head gets contiguous inputs while decoding
(:func:`training.roles.contiguous_lm_head_input`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from rlhf_demo.base_model import load_base_model
from rlhf_demo.generation import end_of_turn_id, stop_ids
from rlhf_demo.padding import pad_rows
from rlhf_demo.registry import Registry
from rlhf_demo.safety_term import SafetyTerm
from training import losses as L
from training import roles as R

# Rows of the [rows, vocab] logits block that token_logprobs computes at a time without gradients:
# 128 x 49k float32 is 25 MB (plus the bf16 logits and the softmax), and 128-row GEMMs are still efficient.
LOGPROB_CHUNK_ROWS = 128
# Most tokens score_and_trunk runs through the frozen layers after a rollout's shared prefix so that the reward model
# reads exactly its text-path input (usually 1-2: the end-of-turn "<|im_end|>\n"); longer rows are scored from text.
MAX_REWARD_CONTINUATION = 64


def adapter_start_layer(model, name: str) -> int:
    """The lowest decoder layer that adapter ``name`` changes (0 when it covers every layer)."""
    layers = model.peft_config[name].layers_to_transform
    if layers is None:
        return 0
    return min([layers] if isinstance(layers, int) else layers)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding (row i's first real token is position 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def reward_continuations(rollout_rows: list[list[int]], reward_rows: list[list[int]],
                         max_len: int = MAX_REWARD_CONTINUATION) -> list[tuple[int, list[int]] | None]:
    """How the reward model's input follows from each rollout: ``(k, tokens)`` = its first ``k`` tokens, then these.

    ``rollout_rows[i]`` are a rollout's prompt + answer tokens; ``reward_rows[i]`` what the text path
    feeds the reward model (the chat-templated conversation, truncated as the scorer truncates).
    Usually the latter is the former plus an end-of-turn suffix (SmolLM2: ``<|im_end|>\n`` after an
    answer cut at the length limit, ``\n`` after one that ended with ``<|im_end|>``): ``k`` is the whole
    rollout. When decoding and re-encoding the answer changes its tokens (a sampled non-canonical
    tokenisation, a special token the text drops), ``k`` is where they part. ``None`` when the
    continuation would be longer than ``max_len`` or nothing is shared (e.g. a prompt the scorer
    truncated): that row is scored from its text. ``tokens`` is never empty (an exact match re-reads
    the last token).
    """
    out: list[tuple[int, list[int]] | None] = []
    for r, e in zip(rollout_rows, reward_rows, strict=True):
        k = 0
        for a, b in zip(r, e):
            if a != b:
                break
            k += 1
        k = min(k, len(e) - 1)  # at least one token to read the score at
        out.append((k, list(e[k:])) if k >= 1 and len(e) - k <= max_len else None)
    return out


def continuation_cap(lengths: list[int], text_lengths: list[int], width: int, frozen_layers: int,
                     top_layers: int) -> int:
    """The longest continuation worth running through the shared trunk (longer ones: scored from text).

    The continuation pass pads every continuing row to the longest continuation, ``cap`` tokens,
    through the frozen layers; then the reward adapter reads ``width + cap`` columns per row through the
    top layers. A row scored from its text costs a full forward over its ``text_lengths`` tokens. So
    one row whose re-encoded answer parts from the rollout early (a continuation of 40 tokens) is
    cheaper from text than padding every row's 2-token continuation to 40. Returns the cap (among the
    given lengths, or 0 = all from text) that minimises the total token-layers.
    """
    def cost(cap: int) -> int:
        shared = sum(n <= cap for n in lengths)
        from_text = sum(t for n, t in zip(lengths, text_lengths) if n > cap)
        return shared * (frozen_layers * cap + top_layers * (width + cap)) + (frozen_layers + top_layers) * from_text

    return min([0] + sorted(set(lengths)), key=lambda cap: (cost(cap), -cap))


def suffix_batch(suffixes: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [R, S], mask [R, S])``: each row's tokens left-aligned and right-padded, S the longest."""
    return pad_rows(suffixes, pad_id, "right", min_width=1)


class ActorCriticRoles:
    label_safety = None  # --label-safety: a training.label_safety.LabelSafety whose term is added to every score

    def __init__(self, model, tokenizer, critic_head: R.ScalarHead, scorer: R.RewardScorer, reward_name: str,
                 split_layer: int = 0):
        self.split_layer = split_layer  # first layer with a trainable adapter (0 = no shared trunk)
        self.model = model
        self.tokenizer = tokenizer
        self.critic_head = critic_head
        self.scorer = scorer
        self.reward_name = reward_name
        self.model.eval()
        R.contiguous_lm_head_input(self.model)  # decode: no 450 MB weight copy at each batch's prefill
        # the token that ends an answer (kept in a rollout that reached it)
        self.end_of_turn_id = end_of_turn_id(tokenizer)
        if self.end_of_turn_id is None:
            self.end_of_turn_id = min(stop_ids(tokenizer, model))
        self._switch = R.AdapterSwitch(self.model) if R.AdapterSwitch.supported(self.model) else None
        self._params: dict[str, list[torch.nn.Parameter]] = {}
        # the reward model reads the shared trunk too when its adapter starts at or above the split
        self.reward_shares_trunk = (bool(split_layer) and "reward" in model.peft_config
                                    and adapter_start_layer(model, "reward") >= split_layer)
        self.last_shared_scores: int | None = None  # rows the last score_and_trunk scored from the trunk
        self.last_safety: torch.Tensor | None = None  # a composed reward's safety term of the last rows scored
        # The temperature the rollouts were sampled at: token_logprobs scores answers under the same tempered
        # distribution (logits / T, as TRL does), so PPO's ratios and KL penalty are on-policy at T != 1.
        # SmolLM2's LM head has no bias, so logits / T = head(hidden / T): the hidden rows are scaled instead.
        self.logit_temperature = 1.0
        # On CPU, the policy/reference/critic/reward forwards (not the no-grad trunk, not decoding) run their
        # attention in float32 matmuls (training.roles.float32_attention_forward): as accurate as SDPA's flash
        # kernel and ~4x faster in the backward pass. Its results also do not move with the padded width of the
        # batch (bitwise, in our measurements at PPO's sizes), so a mini-batch trimmed to its used columns
        # reproduces the rollout's old log-probs exactly: the ratio is 1 at the first step. The flash kernel
        # rounds differently per width: up to 0.09 nats per token in bf16 on SmolLM2. Its [B, heads, T, T] float32
        # scores cost memory quadratic in T; CUDA keeps SDPA's fused kernels.
        self.float32_attention = next(model.parameters()).device.type == "cpu"

    @classmethod
    def build(cls, settings, registry: Registry, cfg) -> "ActorCriticRoles":
        base, tokenizer = load_base_model(settings)
        if settings.load_in_4bit:  # QLoRA: every role's adapter trains on the one NF4 base
            from peft import prepare_model_for_kbit_training
            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
        toy = R.ToyReward.parse(cfg.reward_model)  # toy:WORD — a known-answer reward, no reward model
        version = None if toy else R.resolve_reward_version(settings, cfg.reward_model or None)
        reward = None if toy else R.RewardModel.from_dir(base, version.path, adapter_name="reward", trainable=False)
        model = base if toy else reward.model
        n_layers = R.num_layers(base)
        lora = R.lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules,
                             layers=cfg.lora_layers or None, num_layers=n_layers)
        if cfg.init_policy == "sft":
            model = R.add_adapter(model, "policy", lora)
        else:
            start = registry.get(cfg.init_policy, kind="policy").path
            model = R.load_adapter(model, start, "policy", trainable=True)
            if getattr(cfg, "kl_reference", "sft") == "init":  # the KL penalty's reference: a frozen copy of the start
                model = R.load_adapter(model, start, "reference")
        if cfg.critic_from_reward and not toy:  # PPO-max: critic initialised from the reward model
            model = R.load_adapter(model, version.path, "critic", trainable=True)
        else:
            model = R.add_adapter(model, "critic", lora)
        if cfg.critic_from_reward and not toy and getattr(cfg, "critic_reward_head", True):
            head = R.ScalarHead.load(version.path / R.HEAD_FILE)
        else:  # a fresh value head (zeros by default: it predicts 0 until it learns)
            std = getattr(cfg, "value_head_init_std", -1.0)
            head = R.ScalarHead(R.hidden_size(model), init_std=None if std < 0 else std)
        device = next(model.parameters()).device
        head = head.to(device).requires_grad_(True)
        if toy:
            scorer = toy
        else:
            R.set_adapter_trainable(model, "reward", False)
            scorer = R.RewardScorer(reward, tokenizer, name=version.name, card=version.card,
                                    max_length=int(version.card.get("config", {}).get("max_length", 1024)),
                                    safety=SafetyTerm.load(version.path))
        split = min(adapter_start_layer(model, "policy"), adapter_start_layer(model, "critic"))
        return cls(model, tokenizer, head, scorer, scorer.name, split_layer=split if cfg.shared_trunk else 0)

    # -- roles ------------------------------------------------------------------------------
    @property
    def kl_reference(self) -> str | None:
        """The role the KL penalty is taken against: the frozen "reference" adapter (--kl-reference init) or
        ``None``, SFT (every adapter off). Validation's exact KL is always to SFT."""
        return "reference" if "reference" in getattr(self.model, "peft_config", {}) else None

    @contextlib.contextmanager
    def use(self, role: str | None):
        """``None`` = the reference (adapters disabled); else the adapter of that role."""
        if self._switch is not None:  # cheap: flags on the LoRA layers collected once
            with self._switch.use(role):
                yield
        elif role is None:
            with R.adapters_disabled(self.model):
                yield
        else:
            with R.use_adapter(self.model, role):
                yield

    @torch.no_grad()
    def trunk(self, input_ids, attention_mask) -> torch.Tensor | None:
        """Hidden states entering ``split_layer``: computed once, shared by policy, reference and critic."""
        if not self.split_layer:
            return None
        with self.use(None):
            return R.frozen_hidden(self.model, input_ids, attention_mask, position_ids(attention_mask),
                                   self.split_layer)

    def _attention(self):
        """The attention every role's training-path forward runs with (see ``float32_attention`` in __init__)."""
        return R.float32_attention(self.model) if self.float32_attention else contextlib.nullcontext()

    def _hidden(self, input_ids, attention_mask, trunk) -> torch.Tensor:
        with self._attention():
            if trunk is None:
                return R.forward_hidden(self.model, input_ids, attention_mask, position_ids(attention_mask))
            return R.forward_hidden(self.model, None, attention_mask, position_ids(attention_mask),
                                    inputs_embeds=trunk, start_layer=self.split_layer)

    def logits(self, role: str | None, input_ids, attention_mask, grad: bool = False, trunk=None) -> torch.Tensor:
        with self.use(role), torch.set_grad_enabled(grad):
            hidden = self._hidden(input_ids, attention_mask, trunk)
            return R.causal_lm(self.model).get_output_embeddings()(hidden)

    def token_logprobs(self, role: str | None, input_ids, attention_mask, response_mask, grad: bool = False,
                       trunk=None, entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs of the answer tokens under ``role`` (and the entropies there), float32 ``[B, T-1]``.

        ``response_mask [B, T-1]`` marks the positions whose next token is an answer token; the result is
        0 elsewhere. Equals ``logprobs_from_logits(logits(...)[:, :-1], input_ids[:, 1:])`` on the
        masked positions, but the LM head (49k x 576 for SmolLM2) runs only on those rows — about
        half of a rollout batch is prompt and padding — and, without gradients, a chunk of rows at a
        time, so the ``[B, T, V]`` logits never exist (:func:`training.losses.logprobs_from_hidden`).
        """
        with self.use(role), torch.set_grad_enabled(grad):
            hidden = self._hidden(input_ids, attention_mask, trunk)[:, :-1]
            sel = response_mask.bool()
            head = R.causal_lm(self.model).get_output_embeddings()
            if self.logit_temperature != 1.0:
                if getattr(head, "bias", None) is not None:
                    raise ValueError("--temperature != 1 needs an LM head without bias (logits / T = head(h / T))")
                hidden = hidden / self.logit_temperature
            logp, ent = L.logprobs_from_hidden(head, hidden[sel],
                                               input_ids[:, 1:][sel], chunk_size=0 if grad else LOGPROB_CHUNK_ROWS,
                                               with_entropy=entropy)
            return L.scatter_masked(logp, sel), (L.scatter_masked(ent, sel) if entropy else None)

    @torch.no_grad()
    def token_kl(self, input_ids, attention_mask, response_mask, trunk=None) -> torch.Tensor:
        """Exact KL(policy ‖ reference) of the full next-token distributions at each answer position,
        float32 ``[B, T-1]`` (0 elsewhere; :func:`rlhf_demo.kl.kl_from_hidden`: the LM head runs on a
        block of answer rows at a time, so no ``[B, T, V]`` logits)."""
        from rlhf_demo.kl import kl_from_hidden

        sel = response_mask.bool()
        with self.use("policy"):
            hp = self._hidden(input_ids, attention_mask, trunk)[:, :-1][sel]
        with self.use(None):
            hr = self._hidden(input_ids, attention_mask, trunk)[:, :-1][sel]
        kl = kl_from_hidden(R.causal_lm(self.model).get_output_embeddings(), hp, hr, chunk_rows=LOGPROB_CHUNK_ROWS)
        return L.scatter_masked(kl, sel)

    def values(self, input_ids, attention_mask, grad: bool = False, trunk=None) -> torch.Tensor:
        with self.use("critic"), torch.set_grad_enabled(grad):
            return self.critic_head(self._hidden(input_ids, attention_mask, trunk))

    def score(self, conversations: list[list[dict]]) -> torch.Tensor:
        """Reward-model scores of whole conversations (prompt messages + the answer); for a composed version
        the head's score plus the safety term (the term alone is kept in ``last_safety``)."""
        if self.scorer.reward_model is None:  # a toy reward reads the text only
            self.last_safety = None
            return torch.tensor(self.scorer.score(conversations), dtype=torch.float32)
        return self._finish(conversations, self._score_raw(conversations))

    def _score_raw(self, conversations: list[list[dict]]) -> torch.Tensor:
        with self.use("reward"):
            return torch.tensor(self.scorer.score_raw(conversations), dtype=torch.float32)

    def _finish(self, conversations: list[list[dict]], raw: torch.Tensor) -> torch.Tensor:
        """Head scores -> the version's reward, plus --label-safety's term when set; ``last_safety`` = the safety
        term of each row (None for a plain reward without --label-safety)."""
        total, self.last_safety = raw, None
        if getattr(self.scorer, "safety", None) is not None:
            total = torch.tensor(self.scorer.finish(conversations, raw.tolist()), dtype=torch.float32)
            self.last_safety = total - raw
        if self.label_safety is not None:
            term = self.label_safety.score(conversations)
            total = total + term
            self.last_safety = term if self.last_safety is None else self.last_safety + term
        return total

    @torch.no_grad()
    def score_and_trunk(self, conversations: list[list[dict]], input_ids, attention_mask):
        """``(scores [B], trunk)``: the reward-model scores of the rollouts and the shared trunk, in one pass.

        The trunk is bitwise :meth:`trunk`'s; the scores are :meth:`score`'s up to float rounding.
        The reward model's input — the chat-templated conversation — is the rollout's own tokens plus
        a short end-of-turn suffix (or, where re-encoding the answer's text changes its tokens, the
        rollout's tokens up to that point and then the re-encoded rest: :func:`reward_continuations`).
        So the trunk pass keeps its KV cache and continues through those few tokens
        (:func:`training.roles.frozen_hidden_and_continuation`), and the reward adapter runs only the
        top layers over trunk + continuation. That replaces a full forward over re-encoded text
        (30 layers on SmolLM2) with ``num_layers - split_layer`` layers (8) and a few-token
        continuation. Rows that share too little (:func:`continuation_cap`) are scored from their text
        as before.
        """
        B, T = input_ids.shape
        if not self.reward_shares_trunk:
            return self.score(conversations), self.trunk(input_ids, attention_mask)
        rows = [input_ids[i][attention_mask[i].bool()].tolist() for i in range(B)]
        encoded = [self.scorer.encode(c) for c in conversations]
        plan = reward_continuations(rows, encoded)
        cap = continuation_cap([len(c[1]) if c else 10**9 for c in plan], [len(e) for e in encoded], T,
                               self.split_layer, R.num_layers(self.model) - self.split_layer)
        plan = [c if c and len(c[1]) <= cap else None for c in plan]
        shared = [i for i, c in enumerate(plan) if c is not None]
        self.last_shared_scores = len(shared)
        if not shared:
            return self.score(conversations), self.trunk(input_ids, attention_mask)
        device = input_ids.device
        idx = torch.tensor(shared, device=device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        c_ids, c_mask = (t.to(device) for t in suffix_batch([plan[i][1] for i in shared], pad))
        keep = torch.tensor([plan[i][0] if plan[i] else 0 for i in range(B)], device=device)
        # the reward model reads each row's first k tokens (the rest of a row whose tokens part is masked out)
        real_index = attention_mask.long().cumsum(-1) - 1
        past = (attention_mask.bool() & (real_index < keep.unsqueeze(-1))).to(attention_mask.dtype)
        pos = position_ids(attention_mask)
        c_pos = keep.index_select(0, idx).unsqueeze(-1) + torch.arange(c_ids.shape[1], device=device)
        with self.use(None):
            trunk, c_trunk = R.frozen_hidden_and_continuation(self.model, input_ids, attention_mask, pos,
                                                              self.split_layer, idx, c_ids, c_mask, c_pos, past)
        mask = torch.cat([past.index_select(0, idx), c_mask.to(past.dtype)], 1)
        with self.use("reward"), self._attention():
            hidden = R.forward_hidden(self.model, None, mask, torch.cat([pos.index_select(0, idx), c_pos], 1),
                                      inputs_embeds=torch.cat([trunk.index_select(0, idx), c_trunk], 1),
                                      start_layer=self.split_layer)
        last = L.last_token_index(mask)
        scores = torch.zeros(B, dtype=torch.float32)
        picked = hidden[torch.arange(len(shared), device=device), last]
        scores[shared] = self.scorer.reward_model.head(picked).float().cpu()
        text = [i for i, c in enumerate(plan) if c is None]
        if text:
            scores[text] = self._score_raw([conversations[i] for i in text])
        return self._finish(conversations, scores), trunk  # a composed version: plus the safety term

    # -- parameters, state, saving -----------------------------------------------------------
    def params(self, role: str) -> list[torch.nn.Parameter]:
        """The trainable parameters of a role (collected once: the optimiser steps, gradient averaging and
        clipping ask for them at every mini-batch)."""
        if role not in self._params:
            ps = [p for n, p in self.model.named_parameters() if f".{role}." in n and "lora_" in n]
            if role == "critic":
                ps += list(self.critic_head.parameters())
            self._params[role] = ps
        return list(self._params[role])

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"critic_head": self.critic_head}

    def save_policy(self, out_dir: Path) -> Path:
        """The policy adapter as a standard PEFT directory (what the registry publishes)."""
        R.save_adapter(self.model, "policy", Path(out_dir))
        return Path(out_dir)
