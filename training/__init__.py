"""Training pipelines of RLHF Arena: preference data, model roles, reward model, PPO-max, and their pure losses."""
