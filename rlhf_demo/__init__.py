"""RLHF Arena: rate side by side, train a reward model and PPO-max, evaluate — on one machine."""

__version__ = "0.1.0"
