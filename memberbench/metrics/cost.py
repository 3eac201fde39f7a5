"""Cost of sampling with a mitigation: the declarations of what ``tasks/test_cost.py`` times
(one fresh, uncached batch of generations; see that task)."""

from __future__ import annotations

from memberbench.metrics.declare import Headline, declare

declare(
    "unet_evals_per_image",
    keys=("unet_evals_per_image",),
    family="cost",
    higher_is_better=False,
    unit="evaluations",
    description="UNet forward evaluations per image (2 per step for plain CFG)",
    headline=(Headline("unet_evals_per_image", "UNet evals/img", 100),),
)
declare(
    "wall_s_per_image",
    keys=("wall_s_per_image",),
    family="cost",
    higher_is_better=False,
    unit="s",
    description="wall time per image (generation only, this machine)",
    headline=(Headline("wall_s_per_image", "s/img", 110),),
)
declare(
    "images_per_s",
    keys=("images_per_s",),
    family="cost",
    higher_is_better=True,
    unit="images/s",
    description="throughput of the cost batch",
)
