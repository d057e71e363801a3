"""Prompt suggestions and the pairing helpers of the arena's handlers (a mixin of :class:`arena_app.ui.ArenaApp`).

* the clickable examples under the input and "Suggest a prompt" draw from the prompt pool
  (:mod:`rlhf_demo.prompt_pool`; the project's pool unless ``--prompt-pool FILE``) in the page's language; a turn
  sent from either is stored with ``prompt_source`` ``example`` / ``suggested`` and the pool prompt's category;
* :meth:`SuggestionsMixin.battles` feeds the new-version boost (:func:`rlhf_demo.pairing.choose_pair`);
* :meth:`SuggestionsMixin._replay` starts an overlap-set round (:func:`rlhf_demo.pairing.replay_candidates`).

The mixin uses the app's ``store``, ``policies()``, ``_identity``, ``_fail``, ``send``, ``pair_rng`` and
``_rng_lock``.
"""

from __future__ import annotations

import time

import gradio as gr

from arena_app.i18n import request_language
from rlhf_demo.arena import ArenaError, Round
from rlhf_demo.pairing import battles_per_version, replay_candidates
from rlhf_demo.store import StoreError


class SuggestionsMixin:
    @property
    def prompt_pool(self):
        if self._prompt_pool is None:
            from rlhf_demo.prompt_pool import project_pool

            self._prompt_pool = project_pool()
        return self._prompt_pool

    def examples(self, lang: str):
        """The clickable example prompts under the input (fixed per language)."""
        return self.prompt_pool.examples(lang, 3, seed=0)

    def battles(self):
        """Votes per version against another version (voided ones left out), cached for 5 s; None when the store
        cannot be read (then no boost)."""
        now = time.monotonic()
        if self._battles is None or now - self._battles[0] > 5.0:
            try:
                self._battles = (now, battles_per_version(self.store.votes(blind_only=True)))
            except StoreError:
                return None
        return self._battles[1]

    def suggest(self, request: gr.Request):
        """"Suggest a prompt": a prompt of the pool (in the page's language) into the input box, and remembered
        for the session so that sending it unedited marks the turn ``suggested``."""
        lang = request_language(request)
        try:
            self._identity(request)
        except ArenaError as exc:
            raise self._fail(exc, lang) from None
        with self._rng_lock:
            p = self.prompt_pool.suggest(lang, self.pair_rng)
        if p is None:
            raise self._fail(ArenaError("no_suggestions"), lang)
        return p.text, {"text": p.text, **p.meta()}

    def _example_fn(self, i: int):
        def example(rnd, mode, left_choice, right_choice, temperature, top_p, max_new_tokens, seed,
                    request: gr.Request):
            lang = request_language(request)
            ex = self.examples(lang)
            if i >= len(ex):
                raise self._fail(ArenaError("no_suggestions"), lang)
            yield from self.send(ex[i].text, rnd, mode, left_choice, right_choice, temperature, top_p,
                                 max_new_tokens, seed, None, request, source=("example", ex[i].meta()))
        example.__name__ = f"example_{i}"
        return example

    def example_labels(self, request: gr.Request):
        """The example buttons' labels, in the page's language."""
        ex = self.examples(request_language(request))
        return tuple(gr.update(value=ex[i].text if i < len(ex) else "", visible=i < len(ex)) for i in range(3))

    def _replay(self, user) -> Round | None:
        """With probability ``overlap_share``, a round replaying a pair another user voted on (signed-in users only)."""
        if self.overlap_share <= 0 or not user:
            return None
        with self._rng_lock:
            if self.pair_rng.random() >= self.overlap_share:
                return None
        try:
            candidates = replay_candidates(self.store.votes(blind_only=True), user, self.policies())
        except StoreError:
            return None
        if not candidates:
            return None
        with self._rng_lock:
            return Round.replay(self.pair_rng.choice(candidates), self.pair_rng)
