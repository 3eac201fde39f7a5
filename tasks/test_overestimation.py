"""Overestimation (M2, M3), the schedule decomposition and its deviation scores (M6), and their
correlation with memorization severity (M7); the labels are docs/metrics.md's sections.

* M2: at the training pair, forward-noised to the first (highest-noise) timesteps of the
  sampling grid: the overestimation coefficient k_b = <x0_hat_b, x> / ||x||^2 per branch and
  the guided / conditional training-loss ratio.  A property of the model: measured without the
  mitigation.
* M3: k_i(g) along the sampled trajectories, mean over the first 10 steps.
* M6: D1 (training-image share above the schedule) and D2 (initial noise suppressed below it),
  against sqrt(abar) (bare names) and the DDIM-ideal schedule (``.ddim_ideal``), over all
  states and the first 10 (``.early``); the mean W0 / WT curves go to the results' series for
  the leaderboard's decomposition figure.
* M7: Pearson and Spearman correlation of D1, D2 and Wen's magnitude with per-prompt SSCD over
  the memorized set's prompts (as the paper computes it), and with both sets pooled
  (``.pooled``), with bootstrap confidence intervals.
"""

from __future__ import annotations

import numpy as np
import pytest

from memberbench.benchrun import SIDES, SUFFIX
from memberbench.metrics.decomposition import deviations, paper_deviations, schedule_reference
from memberbench.metrics.noise_magnitude import wen_magnitudes
from memberbench.metrics.overestimation import (
    k_pair,
    m2_loss_ratio_gc,
    training_pair,
    trajectory_k,
    trajectory_k_per_prompt,
)
from memberbench.metrics.sscd import sscd_summary
from memberbench.metrics.stats import correlation, mean_stat

pytestmark = pytest.mark.memberbench


@pytest.mark.parametrize("side", SIDES)
def test_training_pair_m2(mb, record_metric, record_series, side):
    mb.require_unconditional("M2 (guided vs conditional at the training pair)")
    if getattr(mb.adapter, "prediction", "epsilon") == "flow":
        pytest.skip(
            "M2 (the training-pair loss) forward-noises with alphas_cumprod, which a "
            f"flow-matching model ({mb.adapter.name!r}) does not have: not defined for it yet "
            "(M3 and D1/D2 are)"
        )
    mb.require_images(side)
    res = training_pair(mb, side)
    if not res:
        pytest.skip(f"no {side} prompt with a training image for M2")
    sfx = SUFFIX[side]
    for b in ("g", "c", "u"):
        vals = k_pair(mb, side, b)
        record_metric(
            f"k_pair_{b}{sfx}",
            mean_stat(list(vals.values()), f"k_pair_{b}"),
            per_prompt=vals,
            prompt_set=side,
            description=f"M2: k_{b} = <x0_hat_{b}, x>/||x||^2 at the training pair, first "
            f"{len(next(iter(res.values())).timesteps)} timesteps, mean over noises",
        )
    ratio = m2_loss_ratio_gc(mb, side)
    record_metric(
        f"m2_loss_ratio_gc{sfx}",
        mean_stat(list(ratio.values()), "m2_loss_ratio_gc"),
        per_prompt=ratio,
        prompt_set=side,
    )
    first = next(iter(res.values()))
    record_series(
        f"m2.{side}",
        {
            "timesteps": first.timesteps,
            **{f"k_{b}": np.mean([r.mean("k", b) for r in res.values()], 0) for b in "ucg"},
            **{f"loss_{b}": np.mean([r.mean("loss", b) for r in res.values()], 0) for b in "ucg"},
            "n_prompts": len(res),
        },
    )


@pytest.mark.parametrize("side", SIDES)
def test_trajectory_k_m3(mb, record_metric, record_series, side):
    mb.require_unconditional("M3 (the guided estimate's overestimation k_i(g))")
    mb.require_images(side)
    vals = trajectory_k_per_prompt(mb, side)
    if not vals:
        pytest.skip(f"no {side} trajectory was traced against a training latent")
    record_metric(
        f"k_traj_g{SUFFIX[side]}",
        mean_stat(list(vals.values()), "k_traj_g"),
        per_prompt=vals,
        prompt_set=side,
    )
    curves = [
        np.mean([trajectory_k(g.trace, "g") for g in gens], 0)
        for pid, gens in mb.ok_gens(side).items()
        if pid in vals
    ]
    record_series(
        f"k_traj.{side}",
        {"k_g": np.mean(curves, 0), "n_prompts": len(curves)},
    )


@pytest.mark.parametrize("side", SIDES)
def test_deviation_d1_d2(mb, record_metric, record_series, side):
    mb.require_unconditional("the guidance decomposition D1/D2 (M6)")
    mb.require_images(side)
    dev = deviations(mb, side)
    if not dev:
        pytest.skip(f"no {side} trajectory has the decomposition fields")
    sfx = SUFFIX[side]
    for schedule, sq in (("sqrt_abar", ""), ("ddim_ideal", ".ddim_ideal")):
        for window, wq in (("all", ""), ("early", ".early")):
            d = (
                dev
                if (schedule, window) == ("sqrt_abar", "all")
                else deviations(mb, side, schedule=schedule, window=window)
            )
            for key, name in (("D1", "d1"), ("D2", "d2")):
                vals = {p: v[key] for p, v in d.items()}
                record_metric(
                    f"{name}{sq}{wq}{sfx}",
                    mean_stat(list(vals.values()), name),
                    per_prompt=vals if (sq, wq) == ("", "") else None,
                    prompt_set=side,
                    description=f"M6: {key} against {schedule}, {window} states",
                )
    # mean decomposition curves for the leaderboard figure
    some_trace = next(iter(mb.ok_gens(side).values()))[0].trace
    abar_next = np.asarray(some_trace.series["abar_next"], dtype=np.float64)
    abar_t1 = float(some_trace.series["abar_t"][0])
    W0 = np.array([v["W0"] for v in dev.values()])
    WT = np.array([v["WT"] for v in dev.values()])
    r0, rT = schedule_reference(abar_next, abar_t1, "sqrt_abar")
    i0, iT = schedule_reference(abar_next, abar_t1, "ddim_ideal")
    record_series(
        f"decomposition.{side}",
        {
            "steps": list(range(1, len(abar_next) + 1)),
            "W0": W0.mean(0),
            "WT": WT.mean(0),
            "W0_se": W0.std(0, ddof=1) / np.sqrt(len(W0)) if len(W0) > 1 else None,
            "WT_se": WT.std(0, ddof=1) / np.sqrt(len(WT)) if len(WT) > 1 else None,
            "ref0_sqrt_abar": r0,
            "refT_sqrt_abar": rT,
            "ref0_ddim_ideal": i0,
            "refT_ddim_ideal": iT,
            "n_prompts": len(W0),
        },
    )


@pytest.mark.parametrize("side", SIDES)
def test_deviation_paper_code(mb, record_metric, side):
    mb.require_unconditional("the guidance decomposition D1/D2 (M6, paper code)")
    """D1/D2 with the paper code's conventions: each state fitted on the trajectory's own final
    latent and x_T (no training image: every prompt of every set), compared with sqrt(abar) at
    the timestep that produced the state (docs/metrics-conventions.md)."""
    dev = paper_deviations(mb, side)
    if not dev:
        pytest.skip(f"no {side} trajectory has the final-latent fields")
    for key, name in (("D1", "d1.paper"), ("D2", "d2.paper")):
        vals = {p: v[key] for p, v in dev.items()}
        record_metric(
            f"{name}{SUFFIX[side]}",
            mean_stat(list(vals.values()), name),
            per_prompt=vals,
            prompt_set=side,
            description=f"M6, the paper code's convention: {key} on the [x_final, x_T] basis, "
            "sqrt(abar_t) alignment",
        )


def _pairs(per_side: dict[str, dict[str, float]], sscd_side: dict[str, dict[str, float]], sides):
    xs, ys = [], []
    for side in sides:
        a, b = per_side.get(side, {}), sscd_side.get(side, {})
        for pid in a:
            if pid in b:
                xs.append(a[pid])
                ys.append(b[pid])
    return np.array(xs), np.array(ys)


def test_correlation_with_sscd_m7(mb, record_metric):
    mb.require_unconditional("M7 (D1, D2 and Wen's magnitude against SSCD)")
    """``corr_<method>.<score>_sscd``: over the memorized set's prompts, as the reference paper
    computes it (its r about 0.92 is over Webster's memorized prompts); ``....pooled``: both
    sets pooled, which mixes in how far apart the two sets lie."""
    sscd = {}
    for side in SIDES:
        if mb.prompt_set(side).n_with_image:
            sscd[side] = sscd_summary(mb, side).prompt_means()
    if "memorized" not in sscd:
        pytest.skip(
            "the memorized prompt set has no training images: SSCD (and so M7) is undefined"
        )
    scores = {
        "d1": {s: {p: v["D1"] for p, v in deviations(mb, s).items()} for s in sscd},
        "d2": {s: {p: v["D2"] for p, v in deviations(mb, s).items()} for s in sscd},
        "wen": {s: wen_magnitudes(mb, s, 1) for s in sscd},
        "d1_paper": {s: {p: v["D1"] for p, v in paper_deviations(mb, s).items()} for s in sscd},
    }
    nb = mb.config.n_boot
    for score, per_side in scores.items():
        for sides, sfx, over in (
            (("memorized",), "", "the memorized set's prompts"),
            (SIDES, ".pooled", "both sets' prompts pooled"),
        ):
            x, y = _pairs(per_side, sscd, sides)
            for method in ("pearson", "spearman"):
                record_metric(
                    f"corr_{method}.{score}_sscd{sfx}",
                    correlation(x, y, method, n_boot=nb, seed=0),
                    prompt_set="memorized" if sfx == "" else "both",
                    description=f"M7: {method} correlation over {over} of {score} with "
                    "per-prompt mean SSCD; CI: bootstrap over prompts",
                )
