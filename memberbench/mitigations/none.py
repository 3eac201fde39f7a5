"""``none``: plain classifier-free guidance, the baseline every mitigation is compared with."""

from __future__ import annotations

from memberbench.mitigations.base import Mitigation


class NoMitigation(Mitigation):
    """No mitigation: the sampler's own DDIM + CFG loop, unchanged (no parameters, no cost)."""

    name = "none"
    families = frozenset({"*"})  # plain CFG: any model, whatever its family
    citation = ""
    params = {}
