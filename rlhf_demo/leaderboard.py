"""Bradley–Terry ratings from arena votes, with bootstrap intervals, win rates and battle counts.

Model: P(i beats j) = 1 / (1 + 10 ** ((R_j - R_i) / 400)). A tie (and "both are bad") counts as
half a win for each side. The maximum-likelihood ratings are found with Hunter's MM iteration
(2004) on the win counts; a weak prior of ``prior`` virtual ties between every pair of models keeps
the ratings finite when a model won or lost every battle and ties together models that never
met. Ratings are put on the Elo scale: base 1000 for the anchor (SFT when it took part,
otherwise the mean), 400 points per factor 10 of odds — so winning 75% of battles is
400·log10(3) ≈ +191 points. The 95% intervals are percentiles of refits on battles resampled
with replacement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .arena import outcome
from .registry import SFT

SCALE = 400.0
BASE = 1000.0


@dataclass(frozen=True)
class Battle:
    a: str
    b: str
    score_a: float  # 1 a won, 0 b won, 0.5 tie / both bad


def battles_from_votes(votes: list[dict], blind_only: bool = True) -> list[Battle]:
    """One battle per stored vote (left vs right). Named-mode votes are left out unless asked."""
    out = []
    for v in votes:
        if blind_only and not v.get("blind", True):
            continue
        if v["left_policy"] == v["right_policy"]:
            continue  # a model against itself says nothing about ratings
        out.append(Battle(v["left_policy"], v["right_policy"], outcome(v["winner"])))
    return out


def _index(battles: list[Battle], models: list[str] | None) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    names = sorted({m for bt in battles for m in (bt.a, bt.b)} | set(models or []))
    idx = {m: k for k, m in enumerate(names)}
    ia = np.array([idx[bt.a] for bt in battles], dtype=np.int64)
    ib = np.array([idx[bt.b] for bt in battles], dtype=np.int64)
    s = np.array([bt.score_a for bt in battles], dtype=np.float64)
    return names, ia, ib, s


def _wins(n: int, ia, ib, s, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """W[i, j]: (half-)wins of i over j; N[i, j]: battles between i and j."""
    w = np.ones_like(s) if weights is None else weights
    W = np.zeros((n, n))
    N = np.zeros((n, n))
    np.add.at(W, (ia, ib), w * s)
    np.add.at(W, (ib, ia), w * (1.0 - s))
    np.add.at(N, (ia, ib), w)
    np.add.at(N, (ib, ia), w)
    return W, N


def bt_strengths(W: np.ndarray, N: np.ndarray, prior: float = 0.5, max_iter: int = 10000,
                 tol: float = 1e-10) -> np.ndarray:
    """Bradley–Terry strengths (geometric mean 1) by MM iteration on win matrix W, game matrix N."""
    n = W.shape[0]
    if n == 0:
        return np.zeros(0)
    off = 1.0 - np.eye(n)
    W = W + prior / 2.0 * off  # `prior` virtual games per pair, each a tie
    N = N + prior * off
    wins = W.sum(1)
    p = np.ones(n)
    for _ in range(max_iter):
        denom = (N / (p[:, None] + p[None, :])).sum(1)
        new = wins / np.maximum(denom, 1e-300)
        new /= math.exp(np.log(np.maximum(new, 1e-300)).mean())
        if np.max(np.abs(np.log(new) - np.log(p))) < tol:
            p = new
            break
        p = new
    return p


def to_ratings(p: np.ndarray, names: list[str], anchor: str | None = SFT, scale: float = SCALE,
               base: float = BASE) -> np.ndarray:
    r = scale * np.log10(p)
    if anchor in names:
        return r - r[names.index(anchor)] + base
    return r - r.mean() + base if len(r) else r


def fit_ratings(battles: list[Battle], models: list[str] | None = None, anchor: str | None = SFT,
                prior: float = 0.5) -> dict[str, float]:
    """Bradley–Terry ratings (Elo scale) of every model in ``battles`` (and ``models``)."""
    names, ia, ib, s = _index(battles, models)
    W, N = _wins(len(names), ia, ib, s)
    return dict(zip(names, to_ratings(bt_strengths(W, N, prior), names, anchor).tolist()))


def bootstrap_intervals(battles: list[Battle], rounds: int = 200, seed: int = 0, anchor: str | None = SFT,
                        prior: float = 0.5, level: float = 0.95,
                        models: list[str] | None = None) -> dict[str, tuple[float, float]]:
    """Percentile intervals of the ratings over ``rounds`` resamples of the battles."""
    names, ia, ib, s = _index(battles, models)
    if not battles or rounds <= 0:
        return {m: (math.nan, math.nan) for m in names}
    rng = np.random.default_rng(seed)
    # resample by multinomial counts over the battles (same as drawing battles with replacement)
    samples = np.empty((rounds, len(names)))
    counts = rng.multinomial(len(battles), np.full(len(battles), 1.0 / len(battles)), size=rounds)
    for k in range(rounds):
        W, N = _wins(len(names), ia, ib, s, counts[k].astype(np.float64))
        samples[k] = to_ratings(bt_strengths(W, N, prior, max_iter=2000, tol=1e-8), names, anchor)
    lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return {m: (float(lo[i]), float(hi[i])) for i, m in enumerate(names)}


def matrices(battles: list[Battle], models: list[str] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, win_rate, counts): win_rate[i, j] = share of i's battles against j that i won (ties
    half; NaN when they never met), counts[i, j] = battles between i and j."""
    names, ia, ib, s = _index(battles, models)
    W, N = _wins(len(names), ia, ib, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(N > 0, W / np.where(N > 0, N, 1), np.nan)
    return names, rate, N.astype(int)


@dataclass
class Leaderboard:
    rows: list[dict] = field(default_factory=list)  # rank, model, rating, lo, hi, battles, wins, win_rate
    names: list[str] = field(default_factory=list)
    win_rate: np.ndarray | None = None
    counts: np.ndarray | None = None
    n_votes: int = 0
    n_battles: int = 0
    by_winner: dict = field(default_factory=dict)


def compute(votes: list[dict], blind_only: bool = True, rounds: int = 200, seed: int = 0,
            anchor: str | None = SFT) -> Leaderboard:
    """Everything the Leaderboard tab shows, from stored votes."""
    used = [v for v in votes if v.get("blind", True) or not blind_only]
    battles = battles_from_votes(used, blind_only=blind_only)
    by_winner: dict[str, int] = {}
    for v in used:
        by_winner[v["winner"]] = by_winner.get(v["winner"], 0) + 1
    board = Leaderboard(n_votes=len(used), n_battles=len(battles), by_winner=by_winner)
    if not battles:
        return board
    ratings = fit_ratings(battles, anchor=anchor)
    ci = bootstrap_intervals(battles, rounds=rounds, seed=seed, anchor=anchor)
    names, rate, counts = matrices(battles)
    board.names, board.win_rate, board.counts = names, rate, counts
    rows = []
    for i, m in enumerate(names):
        n = int(counts[i].sum())
        wins = float(np.nansum(np.where(counts[i] > 0, rate[i] * counts[i], 0.0)))
        rows.append({"model": m, "rating": ratings[m], "lo": ci[m][0], "hi": ci[m][1], "battles": n,
                     "win_rate": wins / n if n else math.nan})
    rows.sort(key=lambda r: -r["rating"])
    for k, r in enumerate(rows, 1):
        r["rank"] = k
    board.rows = rows
    return board
