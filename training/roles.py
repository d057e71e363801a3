"""One base model, several roles as LoRA adapters (the design card's "one base, four roles").

* **policy**    — a LoRA adapter (``rlhf-vN`` in the registry);
* **reference** — the same base with every adapter disabled (:func:`adapters_disabled`);
* **critic**    — a LoRA adapter plus a :class:`ScalarHead` read at EVERY token (:func:`token_values`);
* **reward**    — a LoRA adapter plus a :class:`ScalarHead` read at the LAST token of a
  chat-templated conversation (:class:`RewardModel`), frozen during PPO.

All adapters live on one peft model over one base (bf16/fp32, or NF4 with ``--load-in-4bit``), so
memory is one base model whatever the number of roles. The pieces are the core's, so that the arena,
the evaluation and training share one implementation:

* :mod:`rlhf_demo.adapters` — the PEFT plumbing: adapters, scalar heads, hidden states;
* :mod:`rlhf_demo.model_patches` — the transformers/peft private-API patches, behind a version guard;
* :mod:`rlhf_demo.scoring` — the reward model, :class:`RewardScorer` (with a composed version's safety
  term) and :func:`load_reward_scorer`.

This module gathers them under the names training uses; the PPO roles on one base are
:class:`training.actor_critic.ActorCriticRoles`.
"""

from rlhf_demo.adapters import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, ATTENTION, DEFAULT_TARGETS, HEAD_FILE,  # noqa: F401
                                MLP, ScalarHead, adapters_disabled, add_adapter, attention_mask_for,
                                contiguous_lm_head_input, forward_hidden, frozen_hidden,
                                frozen_hidden_and_continuation, hidden_size, last_token_scores, load_adapter,
                                lora_config, num_layers, preserve_requires_grad, save_adapter, set_active_adapter,
                                set_adapter_trainable, token_values, use_adapter)
from rlhf_demo.model_patches import (FLOAT32_ATTENTION, AdapterSwitch, causal_lm, check_versions,  # noqa: F401
                                     decoder, decoder_slice, float32_attention, float32_attention_forward, is_peft)
from rlhf_demo.scoring import (DEFAULT_REWARD, TOY_PREFIX, RewardModel, RewardScorer, ToyReward,  # noqa: F401
                               load_reward_scorer, resolve_reward_version)
