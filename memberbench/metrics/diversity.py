"""M5: trajectory collapse and diversity across the seeds of one prompt.

* mean pairwise L2 distance between the latents of different seeds (s != s') at each state;
* across-seed variance at each state (unbiased per-coordinate variance, averaged over
  coordinates; note ``mean_{s != s'} ||a_s - a_s'||^2 = 2 d var``);
* mean pairwise SSCD similarity of the final images (from their embeddings).

Memorized prompts collapse early: their pairwise distances fall to ~0 in the first steps.
These need full latents (S, T, ...) -- the per-step scalars of a Trace are not enough.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from memberbench.metrics.base import Metric
from memberbench.metrics.declare import metric
from memberbench.metrics.stats import Stat
from memberbench.types import MemberbenchError


def _latents(latents: Any) -> np.ndarray:
    a = latents.detach().cpu().double().numpy() if hasattr(latents, "detach") else latents
    a = np.asarray(a, dtype=np.float64)
    if a.ndim < 3:
        raise MemberbenchError(
            f"expected latents of shape (S seeds, T states, d) or (S, T, C, H, W), got {a.shape}"
        )
    return a.reshape(a.shape[0], a.shape[1], -1)


def pairwise_l2_by_state(latents: Any) -> np.ndarray:
    """Mean over seed pairs s != s' of ``||x_i^s - x_i^s'||_2``, per state i: shape (T,).

    NaN (all states) for fewer than 2 seeds.  Differences are taken directly (not through a Gram
    matrix), so tiny distances of collapsed trajectories keep their precision.
    """
    a = _latents(latents)
    S, T = a.shape[:2]
    if S < 2:
        return np.full(T, np.nan)
    tot = np.zeros(T)
    for i in range(S):
        for j in range(i + 1, S):
            tot += np.sqrt(((a[i] - a[j]) ** 2).sum(-1))
    return tot / (S * (S - 1) / 2)


def across_seed_variance(latents: Any) -> np.ndarray:
    """Unbiased variance across seeds of each coordinate, averaged over coordinates: (T,)."""
    a = _latents(latents)
    if a.shape[0] < 2:
        return np.full(a.shape[1], np.nan)
    return a.var(axis=0, ddof=1).mean(-1)


def mean_pairwise_similarity(embeddings: Any) -> float:
    """Mean cosine over pairs s != s' of (S, D) embeddings (e.g. SSCD of the final images)."""
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2:
        raise MemberbenchError(f"expected embeddings (S, D), got shape {e.shape}")
    S = e.shape[0]
    if S < 2:
        return float("nan")
    n = np.linalg.norm(e, axis=1, keepdims=True)
    if (n == 0).any():
        return float("nan")
    e = e / n
    G = e @ e.T
    return float((G.sum() - np.trace(G)) / (S * (S - 1)))


def diversity_profile(latents: Any, embeddings: Any = None) -> dict[str, Any]:
    """All of M5 for one prompt: per-state pairwise L2 and variance, and (given the final
    images' SSCD embeddings) their mean pairwise similarity."""
    a = _latents(latents)
    out: dict[str, Any] = {
        "pairwise_l2": pairwise_l2_by_state(a),
        "variance": across_seed_variance(a),
        "n_seeds": a.shape[0],
    }
    if embeddings is not None:
        out["sscd_pairwise"] = mean_pairwise_similarity(embeddings)
    return out


class LatentDiversity(Metric):
    """Mean pairwise L2 between seeds' latents at one state (default: the final state).

    ``state``: an index into the T states given (``-1`` = last), or "mean" for the average over
    all states.  Higher = more diverse = less memorization.
    """

    name = "latent_diversity"
    higher_is_better = True

    def __init__(self, state: int | str = -1) -> None:
        if not (state == "mean" or isinstance(state, int | np.integer)):
            raise MemberbenchError(f"state must be an int index or 'mean', got {state!r}")
        super().__init__(state=state if state == "mean" else int(state))

    def __call__(self, latents: Any) -> Stat:
        a = _latents(latents)
        if a.shape[0] < 2:
            return Stat.nan(f"{self.name}: needs at least 2 seeds, got {a.shape[0]}", n=a.shape[0])
        d = pairwise_l2_by_state(a)
        st = self.params["state"]
        val = float(d.mean()) if st == "mean" else float(d[st])
        return Stat(val, n=a.shape[0])


class SeedSimilarity(Metric):
    """Mean pairwise SSCD cosine between the final images of different seeds of one prompt.

    Higher = the seeds collapsed onto one image = more memorization.
    """

    name = "seed_similarity"
    higher_is_better = False

    def __call__(self, embeddings: Any) -> Stat:
        e = np.asarray(embeddings)
        v = mean_pairwise_similarity(e)
        if not np.isfinite(v):
            why = "needs at least 2 seeds" if len(e) < 2 else "an embedding is zero"
            return Stat.nan(f"{self.name}: {why}", n=len(e))
        return Stat(v, n=len(e))


# --------------------------------------------------------------------------------------------
# declarations with their compute functions: the generic task (tasks/test_declared.py) records
# seed_sscd and latent_l2 (record=), tasks/test_diversity.py collapse_early


def needs_two_seeds(mb: Any) -> str | None:
    """Why a diversity metric cannot run (None: it can)."""
    if len(mb.config.seeds) < 2:
        return "diversity needs at least 2 seeds (--seeds)"
    return None


@metric(
    "seed_sscd",
    family="diversity",
    higher_is_better=False,
    description="M5: mean pairwise SSCD between the final images of different seeds",
    record="seed_sscd",
    check=needs_two_seeds,
)
def seed_sscd(mb: Any, side: str) -> dict[str, float]:
    """{prompt_id: mean pairwise SSCD of its seeds' final images} (prompts with >= 2)."""
    out = {}
    for pid, gens in mb.ok_gens(side).items():
        emb = [g.sscd_emb for g in gens if g.sscd_emb is not None]
        if len(emb) >= 2:
            out[pid] = mean_pairwise_similarity(np.stack(emb))
    return out


@metric(
    "latent_l2",
    family="diversity",
    higher_is_better=True,
    description="M5: mean pairwise L2 between the final latents of different seeds",
    record="latent_l2",
    check=needs_two_seeds,
)
def latent_l2(mb: Any, side: str) -> dict[str, float]:
    """{prompt_id: mean pairwise L2 of its seeds' final latents} (prompts with >= 2)."""
    out = {}
    for pid, gens in mb.ok_gens(side).items():
        lat = [g.final_latent for g in gens if g.final_latent is not None]
        if len(lat) >= 2:
            out[pid] = float(pairwise_l2_by_state(np.stack(lat)[:, None])[0])
    return out


@metric(
    "collapse_early",
    family="diversity",
    higher_is_better=True,
    description="M5: pairwise L2 of the seeds' latents at 20% of the steps / pairwise L2 of "
    "their initial noises (needs full latents, --mb-latents)",
)
def collapse_profiles(mb: Any, side: str) -> tuple[dict[str, np.ndarray], int]:
    """({prompt_id: pairwise L2 per state 0..T}, prompts without full latents)."""
    curves, missing = {}, 0
    for pid, gens in mb.ok_gens(side).items():
        lats = [mb.latents_of(g) for g in gens]
        if any(x is None for x in lats):
            missing += 1
            continue
        if len(lats) >= 2:
            curves[pid] = pairwise_l2_by_state(np.stack(lats))
    return curves, missing
