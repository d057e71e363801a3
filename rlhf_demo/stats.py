"""Pure statistics shared by the evaluation (``eval``) and the pipeline's gates (``arena_app.gates``).

Standard library only. ``eval/stats.py`` re-exports the first group, so ``eval.stats.wilson_interval`` and
friends are these functions.

* :func:`wilson_interval`, :func:`proportion` — the Wilson score interval of a binomial proportion.
* :func:`binomial_two_sided_p`, :func:`mcnemar_exact` — the exact binomial test at p = 1/2; McNemar's exact
  test is that test on the discordant pairs of a paired binary outcome.
* :func:`newcombe_paired_interval`, :func:`paired_rates` — the interval of the difference of two paired
  proportions (Newcombe 1998, method 10: Wilson intervals of each rate combined with the phi correlation).
* :func:`decide` — what a gate concludes from such an interval: ``worse``, ``within`` (shown within the allowed
  change) or ``not enough evidence``.
* :func:`cohen_kappa`, :func:`fleiss_kappa` — chance-corrected agreement of two / several raters, with intervals
  (``rlhf_demo.agreement`` applies them to the arena's overlap set).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Sequence

# ---------------------------------------------------------------------------------------------
# proportions
# ---------------------------------------------------------------------------------------------
def z_value(confidence: float) -> float:
    """Two-sided normal quantile: 1.959964 for 0.95."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (no continuity correction).

    ``center = (k + z²/2) / (n + z²)``, ``half = z / (n + z²) · sqrt(k(n−k)/n + z²/4)``.
    With n = 0 there is no information: (0, 1).
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = z_value(confidence)
    z2 = z * z
    center = (k + z2 / 2.0) / (n + z2)
    half = z / (n + z2) * math.sqrt(k * (n - k) / n + z2 / 4.0)
    return max(0.0, center - half), min(1.0, center + half)


def proportion(k: int, n: int, confidence: float = 0.95) -> dict:
    """A rate with its Wilson interval, in the report's standard shape."""
    lo, hi = wilson_interval(int(k), int(n), confidence)
    return {"rate": (k / n) if n else None, "ci": [lo, hi], "k": int(k), "n": int(n),
            "confidence": confidence, "method": "wilson"}


# ---------------------------------------------------------------------------------------------
# exact binomial tests
# ---------------------------------------------------------------------------------------------
def binomial_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided binomial test of H0: p = 1/2 (the distribution is symmetric, so the
    "sum of outcomes no more likely than k" p-value equals twice the smaller tail, capped at 1)."""
    if n == 0:
        return 1.0
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    small = min(k, n - k)
    if 2 * small == n:
        return 1.0
    # log-space sum of C(n, i) / 2^n for i <= small (stable for large n)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2.0)
            for i in range(small + 1)]
    top = max(logs)
    tail = math.exp(top) * sum(math.exp(v - top) for v in logs)
    return min(1.0, 2.0 * tail)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """McNemar's exact test for paired binary outcomes (e.g. "complied" for the same prompts
    under two policies). Only discordant pairs carry information: ``a_only`` = a true & b false,
    ``b_only`` = b true & a false; p = exact binomial test of a_only out of a_only + b_only at 1/2.
    """
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need equal lengths, got {len(a)} and {len(b)}")
    pairs = [(bool(x), bool(y)) for x, y in zip(a, b)]
    a_only = sum(1 for x, y in pairs if x and not y)
    b_only = sum(1 for x, y in pairs if y and not x)
    both = sum(1 for x, y in pairs if x and y)
    neither = len(pairs) - a_only - b_only - both
    return {"a_only": a_only, "b_only": b_only, "both": both, "neither": neither,
            "n": len(pairs), "discordant": a_only + b_only,
            "p_value": binomial_two_sided_p(a_only, a_only + b_only), "method": "mcnemar-exact"}


# ---------------------------------------------------------------------------------------------
# paired proportions: the interval of the difference, and what a gate concludes from it
# ---------------------------------------------------------------------------------------------
def newcombe_paired_interval(both: int, a_only: int, b_only: int, neither: int,
                             confidence: float = 0.95) -> tuple[float, float]:
    """Interval of ``p_a − p_b`` for paired binary outcomes (Newcombe 1998, method 10).

    The 2x2 table of the same n items: ``both`` (a and b true), ``a_only``, ``b_only``, ``neither``.
    ``p_a = (both + a_only)/n``, ``p_b = (both + b_only)/n``, ``θ = p_a − p_b``; ``(l_i, u_i)`` the Wilson
    intervals of each rate; ``φ`` the phi coefficient of the table, ``(both·neither − a_only·b_only) / sqrt(product
    of the margins)``, with the numerator reduced by n/2 (not below 0) when positive, and 0 when a margin is
    empty. Then
    ``L = θ − sqrt((p_a − l_a)² − 2φ(p_a − l_a)(u_b − p_b) + (u_b − p_b)²)`` and
    ``U = θ + sqrt((u_a − p_a)² − 2φ(u_a − p_a)(p_b − l_b) + (p_b − l_b)²)``. Unlike an interval from the
    discordant pairs alone it widens with few items even when the two agree on all of them.
    """
    counts = (both, a_only, b_only, neither)
    if any(x < 0 for x in counts):
        raise ValueError(f"counts must be >= 0, got {counts}")
    n = sum(counts)
    if n == 0:
        return -1.0, 1.0
    pa, pb = (both + a_only) / n, (both + b_only) / n
    la, ua = wilson_interval(both + a_only, n, confidence)
    lb, ub = wilson_interval(both + b_only, n, confidence)
    margins = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    cross = both * neither - a_only * b_only  # Newcombe's continuity correction of a positive phi
    cross = max(0.0, cross - n / 2) if cross > 0 else cross
    phi = cross / math.sqrt(margins) if margins else 0.0
    theta = pa - pb
    lo = theta - math.sqrt(max(0.0, (pa - la) ** 2 - 2 * phi * (pa - la) * (ub - pb) + (ub - pb) ** 2))
    hi = theta + math.sqrt(max(0.0, (ua - pa) ** 2 - 2 * phi * (ua - pa) * (pb - lb) + (pb - lb) ** 2))
    return max(-1.0, lo), min(1.0, hi)


def paired_rates(a: Sequence[bool], b: Sequence[bool], confidence: float = 0.95) -> dict:
    """Two rates on the same items (e.g. "complied with a harmful prompt" under a candidate ``a`` and the
    current policy ``b``): each rate, the difference ``a − b`` with its paired interval
    (:func:`newcombe_paired_interval`) and McNemar's exact test."""
    m = mcnemar_exact(a, b)
    n = m["n"]
    lo, hi = newcombe_paired_interval(m["both"], m["a_only"], m["b_only"], m["neither"], confidence)
    return {"n": n, "rate_a": (m["both"] + m["a_only"]) / n if n else None,
            "rate_b": (m["both"] + m["b_only"]) / n if n else None,
            "difference": (m["a_only"] - m["b_only"]) / n if n else None, "ci": [lo, hi],
            "confidence": confidence, "method": "newcombe-paired-wilson (method 10)",
            "mcnemar": {k: m[k] for k in ("a_only", "b_only", "discordant", "p_value")}}


WORSE, WITHIN, NOT_ENOUGH = "worse", "within", "not enough evidence"


def decide(lo: float, hi: float, allowed: float) -> str:
    """A gate's conclusion about a rise (or a level) with interval ``[lo, hi]`` against the ``allowed`` one:
    ``worse`` when the whole interval is above it, ``within`` when the whole interval is at or below it,
    else ``not enough evidence`` (the data cannot tell the two apart)."""
    if lo > allowed + 1e-12:
        return WORSE
    if hi <= allowed + 1e-12:
        return WITHIN
    return NOT_ENOUGH




def cohen_kappa(a: Sequence, b: Sequence, confidence: float = 0.95) -> dict:
    """Cohen's kappa of two raters' labels on the same items: (p_o − p_e) / (1 − p_e).

    Labels are any hashable categories (yes/no, or a vote's winner); ``p_e = Σ_c p_a(c)·p_b(c)``. The interval
    is the Wilson interval of ``p_o`` (k agreements of n) mapped through ``κ = (p_o − p_e)/(1 − p_e)`` with
    ``p_e`` held fixed — like Cohen's (1960) standard error it ignores the sampling variability of ``p_e``, but
    unlike ``κ ± z·se`` it is never zero-width when the raters agree on every item.

    Returns ``{"n", "agreement" (p_o), "expected" (p_e), "kappa", "ci", "confidence"}``; kappa (and its
    interval) is NaN when p_e = 1 (both raters gave one label to everything)."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} labels against {len(b)}")
    n = len(a)
    if n == 0:
        raise ValueError("no items")
    agree = sum(1 for x, y in zip(a, b) if x == y)
    po = agree / n
    ca, cb = _counts(a), _counts(b)
    pe = sum(ca[c] * cb.get(c, 0) for c in ca) / (n * n)
    if pe >= 1:
        nan = float("nan")
        return {"n": n, "agreement": po, "expected": pe, "kappa": nan, "ci": [nan, nan], "confidence": confidence}
    lo, hi = wilson_interval(agree, n, confidence)
    return {"n": n, "agreement": po, "expected": pe, "kappa": (po - pe) / (1 - pe),
            "ci": [(lo - pe) / (1 - pe), (hi - pe) / (1 - pe)], "confidence": confidence}


def _counts(labels) -> dict:
    out: dict = {}
    for x in labels:
        out[x] = out.get(x, 0) + 1
    return out


def _fleiss_point(items: Sequence[dict]) -> tuple[float, float]:
    """(P̄, P_e) of items given as {label: count} with at least two ratings each."""
    totals: dict = {}
    p_bar, ratings = 0.0, 0
    for counts in items:
        m = sum(counts.values())
        p_bar += sum(c * (c - 1) for c in counts.values()) / (m * (m - 1))
        ratings += m
        for c, k in counts.items():
            totals[c] = totals.get(c, 0) + k
    return p_bar / len(items), sum((k / ratings) ** 2 for k in totals.values())


def fleiss_kappa(items: Sequence, confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0) -> dict:
    """Fleiss' kappa of several raters on the same items: ``(P̄ − P_e) / (1 − P_e)``.

    ``items``: one entry per item, either the list of labels it got or a ``{label: count}`` mapping. Items with
    fewer than two ratings are left out. ``P_i = Σ_c n_ic(n_ic − 1) / (m_i(m_i − 1))`` (the share of agreeing
    rater pairs on item i; with ``m_i`` ratings), ``P̄`` their mean, ``p_c`` the share of all ratings in
    category c and ``P_e = Σ_c p_c²``. With the same number of raters on every item this is Fleiss (1971); with
    varying numbers it is the usual generalisation (each item's pairs weigh the same). The interval is the
    percentile bootstrap over items (``n_resamples``, seeded), since Fleiss' standard error is the one under
    κ = 0, not an interval. Returns ``{"n_items", "ratings", "agreement" (P̄), "expected" (P_e), "kappa", "ci",
    "confidence", "method"}``; kappa is NaN when P_e = 1.
    """
    import random

    rows = [dict(x) if isinstance(x, dict) else _counts(x) for x in items]
    rows = [r for r in rows if sum(r.values()) >= 2]
    if not rows:
        raise ValueError("no item has two or more ratings")
    p_bar, p_e = _fleiss_point(rows)
    kappa = (p_bar - p_e) / (1 - p_e) if p_e < 1 else float("nan")
    ci = [float("nan"), float("nan")]
    if n_resamples > 0 and not math.isnan(kappa):
        rng = random.Random(seed)
        ks = []
        for _ in range(n_resamples):
            pb, pe = _fleiss_point([rows[rng.randrange(len(rows))] for _ in rows])
            ks.append((pb - pe) / (1 - pe) if pe < 1 else 1.0)  # all one label in a resample: full agreement
        ks.sort()
        lo_i = int(math.floor((1 - confidence) / 2 * (n_resamples - 1)))
        hi_i = int(math.ceil((1 + confidence) / 2 * (n_resamples - 1)))
        ci = [ks[lo_i], ks[hi_i]]
    return {"n_items": len(rows), "ratings": sum(sum(r.values()) for r in rows), "agreement": p_bar,
            "expected": p_e, "kappa": kappa, "ci": ci, "confidence": confidence,
            "method": f"fleiss; percentile bootstrap over items ({n_resamples} resamples, seed {seed})"}
