"""Bradley–Terry ratings from arena votes, with bootstrap intervals, win rates and battle counts.

Model: P(i beats j) = 1 / (1 + 10 ** ((R_j - R_i) / 400)). A tie (and "both are bad") counts as
half a win for each side. The maximum-likelihood ratings are found with Hunter's MM iteration
(2004) on the win counts; a weak prior of ``prior`` virtual ties between every pair of models keeps
the ratings finite when a model won or lost every battle and ties together models that never
met. Ratings are put on the Elo scale: base 1000 for the anchor (SFT when it took part,
otherwise the mean), 400 points per factor 10 of odds — so winning 75% of battles is
400·log10(3) ≈ +191 points. The 95% intervals are percentiles of refits on battles resampled
with replacement.

Rigour (issue #15):

* **Minimum battles.** A version with fewer than ``min_battles`` battles is *preliminary*: it gets no rank
  and no interval (a bootstrap of three battles gives a narrow interval that means nothing; one battle
  gives a zero-width one). The anchor's interval is zero-width by construction (its rating is fixed) and
  is flagged ``anchor``.
* **Length control** (the way LMArena's style control does it): a logistic Bradley–Terry model with the
  answers' length difference as a covariate, ``logit P(a beats b) = β_a − β_b + γ·z``, ``z`` the normalised
  length difference ``(len_a − len_b)/(len_a + len_b)`` divided by its standard deviation over the battles.
  ``β`` on the Elo scale is the *length-controlled* rating: what is left of a model's strength once longer
  answers' pull (``γ``) is accounted for. Fitted by Newton's method; the same ``prior`` virtual ties.
* **Position bias**: the share of decisive votes won by the left pane, with its Wilson interval and the
  exact binomial test against 1/2 (sides are shuffled in blind rounds, so a fair rater sits at 1/2).
* **Views**: :func:`compute_by_category` (one board per prompt category: harmful / risky-but-safe / ordinary)
  and :func:`win_rate_figure` (the win-rate matrix as a picture).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .arena import outcome
from .prompt_pool import CATEGORIES as POOL_CATEGORIES
from .registry import SFT

SCALE = 400.0
BASE = 1000.0


MIN_BATTLES = 10  # below this a version is "preliminary": no rank, no interval


@dataclass(frozen=True)
class Battle:
    a: str
    b: str
    score_a: float  # 1 a won, 0 b won, 0.5 tie / both bad
    len_a: float | None = None  # answer length (characters of the side's assistant messages), when known
    len_b: float | None = None


def answer_length(messages) -> float | None:
    """Characters of a side's assistant messages (the whole conversation the vote covers); None if unknown."""
    if not messages:
        return None
    return float(sum(len(str(m.get("content") or "")) for m in messages if m.get("role") == "assistant"))


def battles_from_votes(votes: list[dict], blind_only: bool = True) -> list[Battle]:
    """One battle per stored vote (left vs right). Named-mode votes and voided votes are left out."""
    out = []
    for v in votes:
        if (blind_only and not v.get("blind", True)) or v.get("voided"):
            continue
        if v["left_policy"] == v["right_policy"]:
            continue  # a model against itself says nothing about ratings
        out.append(Battle(v["left_policy"], v["right_policy"], outcome(v["winner"]),
                          answer_length(v.get("left_messages")), answer_length(v.get("right_messages"))))
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


def length_feature(battles: list[Battle]) -> tuple[np.ndarray, float]:
    """(z, sd): ``d = (len_a − len_b)/(len_a + len_b)`` (0 when a length is unknown or both are 0) divided by
    its population standard deviation ``sd`` over the battles (z = 0 everywhere when sd = 0)."""
    d = np.array([0.0 if bt.len_a is None or bt.len_b is None or bt.len_a + bt.len_b <= 0
                  else (bt.len_a - bt.len_b) / (bt.len_a + bt.len_b) for bt in battles])
    sd = float(d.std()) if len(d) else 0.0
    return (d / sd if sd > 0 else np.zeros_like(d)), sd


@dataclass
class LengthControlled:
    ratings: dict  # model -> length-controlled rating (Elo scale)
    length_coef: float  # γ: logit change per standard deviation of the normalised length difference
    length_sd: float  # that standard deviation (0: no length variation, γ = 0)

    @property
    def length_points(self) -> float:
        """γ on the Elo scale: rating points a one-sd-longer answer is worth."""
        return SCALE / math.log(10) * self.length_coef


def _lc_fit(n: int, ia, ib, s, z, weights, prior: float, max_iter: int = 100,
            tol: float = 1e-10) -> tuple[np.ndarray, float]:
    """Newton's method for logit P = β_a − β_b + γ z (β_0 fixed at 0), with ``prior`` virtual ties per pair."""
    use_len = bool(np.any(z != 0))
    k = n - 1 + use_len  # free parameters: β_1..β_{n-1} (+ γ)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)] if prior > 0 else []
    ia = np.concatenate([ia, np.array([i for i, _ in pairs], dtype=np.int64)])
    ib = np.concatenate([ib, np.array([j for _, j in pairs], dtype=np.int64)])
    y = np.concatenate([s, np.full(len(pairs), 0.5)])
    w = np.concatenate([weights, np.full(len(pairs), prior)])
    zz = np.concatenate([z, np.zeros(len(pairs))])
    X = np.zeros((len(y), n + 1))
    np.add.at(X, (np.arange(len(y)), ia), 1.0)
    np.add.at(X, (np.arange(len(y)), ib), -1.0)
    X[:, n] = zz
    X = X[:, [c for c in range(1, n)] + ([n] if use_len else [])]
    theta = np.zeros(k)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(X @ theta)))
        grad = X.T @ (w * (y - p))
        hess = (X * (w * p * (1 - p))[:, None]).T @ X
        step = np.linalg.lstsq(hess + 1e-12 * np.eye(k), grad, rcond=None)[0]
        theta += step
        if np.max(np.abs(step), initial=0.0) < tol:
            break
    beta = np.concatenate([[0.0], theta[:n - 1]])
    return beta, float(theta[-1]) if use_len else 0.0


def fit_length_controlled(battles: list[Battle], models: list[str] | None = None, anchor: str | None = SFT,
                          prior: float = 0.5) -> LengthControlled:
    """Length-controlled Bradley–Terry ratings (Elo scale, anchored like :func:`fit_ratings`)."""
    names, ia, ib, s = _index(battles, models)
    z, sd = length_feature(battles)
    beta, gamma = _lc_fit(len(names), ia, ib, s, z, np.ones_like(s), prior)
    return LengthControlled(dict(zip(names, to_ratings(np.exp(beta), names, anchor).tolist())), gamma, sd)


def lc_bootstrap_intervals(battles: list[Battle], rounds: int = 200, seed: int = 0, anchor: str | None = SFT,
                           prior: float = 0.5, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of the length-controlled ratings over ``rounds`` resamples of the battles."""
    names, ia, ib, s = _index(battles, None)
    if not battles or rounds <= 0:
        return {m: (math.nan, math.nan) for m in names}
    z, _ = length_feature(battles)  # the scale is fixed by the full data, like the model's features
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(battles), np.full(len(battles), 1.0 / len(battles)), size=rounds)
    samples = np.array([to_ratings(np.exp(_lc_fit(len(names), ia, ib, s, z, counts[k].astype(float), prior,
                                                  max_iter=30, tol=1e-8)[0]), names, anchor)
                        for k in range(rounds)])
    lo, hi = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return {m: (float(lo[i]), float(hi[i])) for i, m in enumerate(names)}


def position_bias(votes: list[dict], confidence: float = 0.95) -> dict:
    """Left-wins rate among decisive votes (left or right won), with its Wilson interval and the exact
    two-sided binomial test of 1/2; ties and "both bad" counted apart. Voided votes are left out."""
    from .stats import binomial_two_sided_p, wilson_interval

    n = {w: 0 for w in ("left", "right", "tie", "both_bad")}
    for v in votes:
        if not v.get("voided"):
            n[v["winner"]] += 1
    decisive = n["left"] + n["right"]
    lo, hi = wilson_interval(n["left"], decisive, confidence)
    return {"left_wins": n["left"], "right_wins": n["right"], "ties": n["tie"], "both_bad": n["both_bad"],
            "decisive": decisive, "left_win_rate": n["left"] / decisive if decisive else math.nan,
            "ci": (lo, hi), "p_value": binomial_two_sided_p(n["left"], decisive), "confidence": confidence}


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
    min_battles: int = 0
    length_points: float = math.nan  # Elo points per sd of length difference (length control's γ)
    position: dict = field(default_factory=dict)  # position_bias() of the votes used


def compute(votes: list[dict], blind_only: bool = True, rounds: int = 200, seed: int = 0,
            anchor: str | None = SFT, min_battles: int = 0, length_control: bool = True) -> Leaderboard:
    """Everything the Leaderboard tab shows, from stored votes.

    Rows: ``rank`` (None when preliminary), ``model``, ``rating``, ``lo``/``hi`` (NaN when preliminary),
    ``battles``, ``win_rate``, ``preliminary`` (fewer than ``min_battles`` battles), ``anchor``, and with
    ``length_control`` ``lc_rating``/``lc_lo``/``lc_hi``. Ranked rows come first, by rating; preliminary
    rows after them.
    """
    used = [v for v in votes if (v.get("blind", True) or not blind_only) and not v.get("voided")]
    battles = battles_from_votes(used, blind_only=blind_only)
    by_winner: dict[str, int] = {}
    for v in used:
        by_winner[v["winner"]] = by_winner.get(v["winner"], 0) + 1
    board = Leaderboard(n_votes=len(used), n_battles=len(battles), by_winner=by_winner, min_battles=min_battles,
                        position=position_bias(used))
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
        preliminary = n < min_battles
        rows.append({"model": m, "rating": ratings[m], "lo": math.nan if preliminary else ci[m][0],
                     "hi": math.nan if preliminary else ci[m][1], "battles": n,
                     "win_rate": wins / n if n else math.nan, "preliminary": preliminary, "anchor": m == anchor})
    if length_control:
        lc = fit_length_controlled(battles, anchor=anchor)
        lc_ci = lc_bootstrap_intervals(battles, rounds=rounds, seed=seed, anchor=anchor)
        board.length_points = lc.length_points
        for r in rows:
            r["lc_rating"] = lc.ratings[r["model"]]
            r["lc_lo"], r["lc_hi"] = (math.nan, math.nan) if r["preliminary"] else lc_ci[r["model"]]
    rows.sort(key=lambda r: (r["preliminary"], -r["rating"]))
    for k, r in enumerate(rows, 1):
        r["rank"] = None if r["preliminary"] else k
    board.rows = rows
    return board


CATEGORIES = POOL_CATEGORIES  # the prompt pools' kinds, spelt as the pools and the stored votes spell them
UNCATEGORISED = "uncategorised"  # a typed prompt: no pool, no category (no classifier labels typed prompts yet)


def vote_category(vote: dict) -> str | None:
    """A vote's prompt category: its own ``category`` field when it has one, else the pool category of its
    conversation's first prompt (the store's ``prompts`` list, ``{"turn", "source", "category", …}`` per turn:
    set for example and suggested prompts); None for a typed first prompt."""
    if vote.get("category"):
        return vote["category"]
    prompts = [p for p in vote.get("prompts") or () if isinstance(p, dict)]
    if not prompts:
        return None
    return min(prompts, key=lambda p: p.get("turn") or 0).get("category") or None


def in_category(votes: list[dict], category: str | None) -> list[dict]:
    """The votes of one prompt category (:func:`vote_category`; ``"uncategorised"``: a typed first prompt); every
    vote for an empty category or ``"all"``. The Leaderboard tab's and the Data review tab's category view."""
    if not category or category == "all":
        return list(votes)
    return [v for v in votes if (vote_category(v) or UNCATEGORISED) == category]


def compute_by_category(votes: list[dict], category_of=None, **kwargs) -> dict[str, Leaderboard]:
    """One :func:`compute` per prompt category. ``category_of(vote)`` names a vote's category (default:
    :func:`vote_category`); votes without one go to ``"uncategorised"``. Known categories come first."""
    category_of = category_of or vote_category
    groups: dict[str, list[dict]] = {}
    for v in votes:
        groups.setdefault(category_of(v) or UNCATEGORISED, []).append(v)
    order = sorted(groups, key=lambda c: (CATEGORIES.index(c) if c in CATEGORIES else len(CATEGORIES), c))
    return {c: compute(groups[c], **kwargs) for c in order}


def win_rate_figure(board: Leaderboard, title: str = "Win rate of row model against column model"):
    """The win-rate matrix as a matplotlib Figure (a heat map, each cell labelled with its rate and battles;
    grey where two models never met). None when the board has no battles."""
    if not board.names:
        return None
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    n = len(board.names)
    fig = Figure(figsize=(1.2 + 0.9 * n, 0.9 + 0.8 * n))
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(board.win_rate)
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="#dddddd")
    im = ax.imshow(masked, cmap=cmap, vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), board.names, rotation=45, ha="right")
    ax.set_yticks(range(n), board.names)
    for i in range(n):
        for j in range(n):
            if i != j and board.counts[i, j] > 0:
                ax.text(j, i, f"{100 * board.win_rate[i, j]:.0f}%\n({board.counts[i, j]})", ha="center",
                        va="center", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig
