"""The refusal judge, in the core so that training (PPO validation), eval and the app share one.

``detector`` holds the judges by name (``judge_refusals(responses, prompts, judge)``; default
``rules-v2+probe-v1``), ``rules_v2`` the second rule set, ``probe`` the linear probe on the base model.
Definition, measured precision/recall and the frozen test set: ``eval/README.md`` ("Refusal judge").
"""
