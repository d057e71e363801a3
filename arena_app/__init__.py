"""The app floor: the arena's Gradio UI, its Training tab, i18n, the login users file, and the training
pipeline that orchestrates ``training`` and ``eval``.

Imports point down only: ``arena_app`` → ``training`` / ``eval`` → ``rlhf_demo`` (the core). The UI and the
Training tab use the core alone; the tab runs the pipeline as a process (``python -m arena_app.pipeline``)
and follows it through files the core reads (``rlhf_demo.pipeline_state``, ``rlhf_demo.metrics_log``).
"""
