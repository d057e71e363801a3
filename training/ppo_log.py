"""What PPO reports: the rollout metrics the paper says reveal collapse, the collapse guard that stops a
collapsing run, the key that picks the best checkpoint, the PNG curves, and the card of a published version.
The monitoring and logging step of :mod:`training.ppo` (the validation itself, which samples from the policy,
stays there).
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from rlhf_demo.registry import reward_identity
from training import losses as L

if TYPE_CHECKING:
    from training.ppo import Experience, Rollout
    from training.ppo_config import PPOConfig


def rollout_metrics(ro: Rollout, ex: Experience, cfg: PPOConfig) -> dict[str, float]:
    mask = ro.response_mask
    lengths = mask.sum(1).float()
    seq_kl = (ex.kl * mask).sum(1)
    nll = -L.masked_mean(ex.old_logp, mask)
    return {
        "reward/score_mean": float(ex.scores.mean()),
        "reward/score_std": float(ex.scores.std()) if len(ex.scores) > 1 else 0.0,
        "reward/normalized_mean": float((ex.rewards * mask).sum(1).mean()),
        "objective/kl": float(seq_kl.mean()),
        "objective/kl_per_token": float(L.masked_mean(ex.kl, mask)),
        "response/length": float(lengths.mean()),
        "response/eos_rate": float(ro.reached_eos.float().mean()),
        "response/perplexity": float(torch.exp(nll)),
        "response/repeated_4gram": float(np.mean([L.repeated_ngram_fraction(t, 4) for t in ro.response_tokens])),
        "policy/entropy": float(L.masked_mean(ex.entropy, mask)),
        "value/explained_variance": L.explained_variance(ex.old_values, ex.returns, mask),
    }


class CollapseGuard:
    """Stops the run when a collapse signal persists for `patience` iterations (PPO-max §5)."""

    # "Answers pinned at max length" is a collapse only if the starting policy clearly ended its answers
    # on its own: its share of cut answers must be this far below --max-length-pinned. A model whose
    # answers mostly run past --response-length already (a short limit) cannot show this collapse, and
    # a few-sample estimate of its EOS rate would make the signal fire on noise.
    PINNED_START_MARGIN = 0.15

    def __init__(self, cfg: PPOConfig):
        self.cfg, self.streak, self.start_eos_rate = cfg, {}, None

    def set_start(self, eos_rate: float) -> None:
        """The starting policy's EOS rate, measured on the validation prompts before training."""
        self.start_eos_rate = eos_rate

    def signals(self, m: dict[str, float]) -> dict[str, bool]:
        c = self.cfg
        if self.start_eos_rate is None:  # no baseline given: the first iteration's answers stand in
            self.start_eos_rate = m["response/eos_rate"]
        out = {}
        if "val/kl_exact" in m:  # measured at validation iterations only; between them the KL streak stands
            out[f"KL {m['val/kl_exact']:.2f} nats per answer (exact, on sampled validation answers) above the "
                f"bound {c.kl_bound}"] = m["val/kl_exact"] > c.kl_bound
        return out | {
            f"answers pinned at max length (EOS rate {m['response/eos_rate']:.2f}, "
            f"{self.start_eos_rate:.2f} at the start)":
                1 - m["response/eos_rate"] >= c.max_length_pinned
                and 1 - self.start_eos_rate <= c.max_length_pinned - self.PINNED_START_MARGIN,
            f"perplexity collapsed to {m['response/perplexity']:.3f}": m["response/perplexity"] < c.min_perplexity,
            f"repeated 4-grams {m['response/repeated_4gram']:.2f}": m["response/repeated_4gram"] > c.max_repeated_ngrams,
        }

    def check(self, m: dict[str, float]) -> str | None:
        for name, firing in self.signals(m).items():
            key = name.split(" ")[0]
            self.streak[key] = self.streak.get(key, 0) + 1 if firing else 0
            patience = self.cfg.kl_guard_validations if key == "KL" else self.cfg.guard_patience
            if self.streak[key] >= patience:
                return name
        return None

    def state_dict(self):
        return {"streak": dict(self.streak), "start_eos_rate": self.start_eos_rate}

    def load_state_dict(self, s):
        self.streak, self.start_eos_rate = dict(s["streak"]), s["start_eos_rate"]


def selection_key(m: dict, cfg: PPOConfig) -> tuple[float, float]:
    """How good a validated checkpoint is (higher is better): --best-metric, then the validation score."""
    return (m[cfg.best_metric], m["val/score"])


PLOTTED = ["reward/score_mean", "train/readout_score", "reward/rm_mean", "reward/safety_mean", "objective/kl",
           "response/length", "response/perplexity", "policy/entropy", "policy/clipfrac", "policy/approx_kl", "value/loss",
           "value/explained_variance", "val/score", "val/refusal_margin", "val/refusal_sensitive", "val/kl_exact"]


OVERLAID = {"train/readout_score": ["train/readout_sampled_score"]}  # drawn on the same axes as the key


def plot_curves(rows: list[dict], out: Path) -> Path | None:
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 4, figsize=(16, 13))
    for ax, key in zip(axes.flat, PLOTTED):
        for series in [key] + OVERLAID.get(key, []):
            pts = [(r["step"], r[series]) for r in rows if r.get(series) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, label=series.split("/")[-1])
        if OVERLAID.get(key) and any(r.get(s) is not None for s in OVERLAID[key] for r in rows):
            ax.legend(fontsize=7)
        ax.set_title(key)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.suptitle("PPO-max training curves")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def policy_card(cfg: PPOConfig, settings, roles, best: dict, rows: list[dict], stopped: str | None,
                n_train: int, n_val: int) -> dict:
    """The card of a policy version PPO publishes: parent, reward model (and its hash), config, data, metrics."""
    final = {k: v for k, v in rows[-1].items() if k != "step"} if rows else {}
    return {"kind": "policy", "parent": cfg.init_policy, "base_model": settings.base_model,
            "reward_model": roles.reward_name,
            "reward_model_sha256": roles.scorer.card.get("files", {}).get("adapter_model.safetensors"),
            "reward_model_identity": reward_identity(roles.scorer.card),
            "trainer": "training.ppo (PPO-max)", "config": asdict(cfg),
            "validation_dtype": cfg.validation_dtype_name(settings),  # --val-dtype resolved on this machine
            "data": {"prompts": cfg.prompts, "train_prompts": n_train, "val_prompts": n_val},
            "best_step": best["step"], "metrics": {"best": best, "final": final}, "stopped": stopped,
            "command": "python -m training.ppo " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("ppo.py")
            else None}
