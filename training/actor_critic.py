"""PPO's four roles on ONE base model (built from the primitives in :mod:`training.roles`).

    policy     LoRA adapter "policy", trainable (fresh = the SFT model at step 0, or an rlhf-vN)
    reference  the same model with every adapter disabled
    reward     adapter "reward" + score head from a reward-vN, frozen
    critic     adapter "critic" + value head, trainable; PPO-max initialises both from the reward model

The model stays in eval mode (no dropout), so the log-probs of the rollout and of the first update
step agree exactly; gradients still flow where a parameter requires them.

Shared frozen trunk: when the policy and critic adapters sit on the top layers only
(``--lora-layers K``), the layers below them are the same function for the policy, the reference
and the critic. :meth:`trunk` runs them ONCE per rollout batch; every role's forward (and backward)
then runs only the top K layers from the cached hidden states.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from rlhf_demo.base_model import load_base_model
from rlhf_demo.registry import Registry
from training import roles as R


def adapter_start_layer(model, name: str) -> int:
    """The lowest decoder layer that adapter ``name`` changes (0 when it covers every layer)."""
    layers = model.peft_config[name].layers_to_transform
    if layers is None:
        return 0
    return min([layers] if isinstance(layers, int) else layers)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding (row i's first real token is position 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class ActorCriticRoles:
    def __init__(self, model, tokenizer, critic_head: R.ScalarHead, scorer: R.RewardScorer, reward_name: str,
                 split_layer: int = 0):
        self.split_layer = split_layer  # first layer with a trainable adapter (0 = no shared trunk)
        self.model = model
        self.tokenizer = tokenizer
        self.critic_head = critic_head
        self.scorer = scorer
        self.reward_name = reward_name
        self.model.eval()

    @classmethod
    def build(cls, settings, registry: Registry, cfg) -> "ActorCriticRoles":
        base, tokenizer = load_base_model(settings)
        if settings.load_in_4bit:  # QLoRA: every role's adapter trains on the one NF4 base
            from peft import prepare_model_for_kbit_training
            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
        version = R.resolve_reward_version(settings, cfg.reward_model or None)
        reward = R.RewardModel.from_dir(base, version.path, adapter_name="reward", trainable=False)
        model = reward.model
        n_layers = R.num_layers(base)
        lora = R.lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules.split(","),
                             layers=cfg.lora_layers or None, num_layers=n_layers)
        if cfg.init_policy == "sft":
            model = R.add_adapter(model, "policy", lora)
        else:
            model = R.load_adapter(model, registry.get(cfg.init_policy, kind="policy").path, "policy", trainable=True)
        if cfg.critic_from_reward:  # PPO-max: critic initialised from the reward model
            model = R.load_adapter(model, version.path, "critic", trainable=True)
            head = R.ScalarHead.load(version.path / R.HEAD_FILE)
        else:
            model = R.add_adapter(model, "critic", lora)
            head = R.ScalarHead(R.hidden_size(model))
        device = next(model.parameters()).device
        head = head.to(device).requires_grad_(True)
        R.set_adapter_trainable(model, "reward", False)
        scorer = R.RewardScorer(reward, tokenizer, name=version.name, card=version.card,
                                max_length=int(version.card.get("config", {}).get("max_length", 1024)))
        split = min(adapter_start_layer(model, "policy"), adapter_start_layer(model, "critic"))
        return cls(model, tokenizer, head, scorer, version.name, split_layer=split if cfg.shared_trunk else 0)

    # -- roles ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def use(self, role: str | None):
        """``None`` = the reference (adapters disabled); else the adapter of that role."""
        if role is None:
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

    def _hidden(self, input_ids, attention_mask, trunk) -> torch.Tensor:
        if trunk is None:
            return R.forward_hidden(self.model, input_ids, attention_mask, position_ids(attention_mask))
        return R.forward_hidden(self.model, None, attention_mask, position_ids(attention_mask),
                                inputs_embeds=trunk, start_layer=self.split_layer)

    def logits(self, role: str | None, input_ids, attention_mask, grad: bool = False, trunk=None) -> torch.Tensor:
        with self.use(role), torch.set_grad_enabled(grad):
            hidden = self._hidden(input_ids, attention_mask, trunk)
            return R.causal_lm(self.model).get_output_embeddings()(hidden)

    def values(self, input_ids, attention_mask, grad: bool = False, trunk=None) -> torch.Tensor:
        with self.use("critic"), torch.set_grad_enabled(grad):
            return self.critic_head(self._hidden(input_ids, attention_mask, trunk))

    def score(self, conversations: list[list[dict]]) -> torch.Tensor:
        """Reward-model scores of whole conversations (prompt messages + the answer)."""
        with self.use("reward"):
            return torch.tensor(self.scorer.score(conversations), dtype=torch.float32)

    # -- parameters, state, saving -----------------------------------------------------------
    def params(self, role: str) -> list[torch.nn.Parameter]:
        ps = [p for n, p in self.model.named_parameters() if f".{role}." in n and "lora_" in n]
        if role == "critic":
            ps += list(self.critic_head.parameters())
        return ps

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"critic_head": self.critic_head}

    def save_policy(self, out_dir: Path) -> Path:
        """The policy adapter as a standard PEFT directory (what the registry publishes)."""
        R.save_adapter(self.model, "policy", Path(out_dir))
        return Path(out_dir)
