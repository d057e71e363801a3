"""The refusal judge, in the core so that training (PPO validation), eval and the app share one.

``detector`` holds the judges by name (``judge_refusals(responses, prompts, judge)``; default
``rules-v2+probe-v2``), ``rules_v2`` the second rule set, ``probe`` / ``probe_v2`` the linear probes on the
base model (probe-v1: block 16; probe-v2: blocks 13 and 20), ``clf`` the fine-tuned classifier refusal-clf-v1
(LoRA on the base + a pooled head; judge ``rules-v2+clf-v1``).
Definition, measured precision/recall and the frozen test set: ``eval/README.md`` ("Refusal judge").
"""
