"""Metrics: one file per quantity of docs/metrics.md, plus detection / correlation statistics.

Importing this package declares every metric and detector (:mod:`memberbench.metrics.declare`).
Out-of-tree packages add theirs through the entry-point groups ``memberbench.metrics`` and
``memberbench.detectors`` (each entry names a module that declares them).
Module-level imports are light (numpy only); torch, onnxruntime, open_clip, scipy and sklearn are
imported when a metric is used.

=====================  ====================================  ========================================
file                   quantity                              classes and functions
=====================  ====================================  ========================================
sscd.py                M1 SSCD severity                      SSCDScorer, recipes
overestimation.py      M2 training-pair loss / k, M3 k_i     TrainingPairOverestimation, TrajectoryK
noise_magnitude.py     M4 Wen et al.'s ||eps_c - eps_u||     NoiseMagnitude, RawOutputMagnitude
diversity.py           M5 collapse / diversity               LatentDiversity, SeedSimilarity
decomposition.py       M6 W0/WT, D1, D2                      D1, D2
clip_score.py          utility                               ClipScorer
stats.py               AUC, TPR@FPR, Pearson/Spearman, CIs   (functions)
detection.py           detection statistics                  (declarations)
detectors.py           the field's detectors                 (detectors)
cost.py                UNet evaluations, wall time           (declarations)
declare.py             the declaration registry              (declare, metric, detector)
=====================  ====================================  ========================================

Every recorded metric is declared once (:mod:`memberbench.metrics.declare`): its module declares
its names, direction, description, leaderboard placement and, where the formula is its own, its
compute function; ``docs/adding-a-metric.md`` shows how to add one.  Every module of this
package is imported with it (a new metric file needs no line here).
"""

import importlib as _importlib
import pkgutil as _pkgutil

from memberbench.metrics import (  # noqa: F401  (import registers the metrics)
    clip_score,
    cost,
    decomposition,
    detection,
    diversity,
    noise_magnitude,
    overestimation,
    sscd,
)
from memberbench.metrics.base import Metric, TraceMetric
from memberbench.metrics.stats import Stat

for _m in _pkgutil.iter_modules(__path__):  # the rest: a new metric module declares itself
    _importlib.import_module(f"{__name__}.{_m.name}")

__all__ = [
    "Metric",
    "Stat",
    "TraceMetric",
    "clip_score",
    "decomposition",
    "diversity",
    "noise_magnitude",
    "overestimation",
    "sscd",
]
