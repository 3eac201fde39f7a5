"""``prss``: prompt re-anchoring and semantic prompt search inside CFG (Chen et al., CVPR 2025).

Chen, Liu, Shah & Xu, "Enhancing Privacy-Utility Trade-offs to Mitigate Memorization in
Diffusion Models", CVPR 2025 (arXiv 2504.18032; code: github.com/chenchen-usyd/BE-PRSS).  Two
changes to CFG, both switched on only for samples whose text-conditional magnitude
``m = ||eps_c(x_T) - eps_u(x_T)||`` at the first step exceeds ``target_ss`` (Wen's detector):

Semantic prompt search (SS)  try alternative phrasings of the prompt, in order, and sample with the
        first whose first-step magnitude is at most ``target_ss``, or with the lowest-magnitude one
        (the original included) when none is.  The paper asks GPT-4 for up to 25 alternatives per
        prompt; memberbench ships no language model, so the alternatives come from a file
        (``alternatives=PATH``, JSON lines): the authors' own format (``caption`` plus
        ``caption1`` ... ``caption25``) or ``{"prompt": ..., "alternatives": [...]}``.  Prompts
        without alternatives keep their own text (SS does nothing for them; ``Sample.meta``
        says so).  ``search=embedding`` replaces SS by Wen et al.'s prompt-embedding optimisation
        (the paper's "PR with PE" configuration), ``search=none`` keeps the prompt.
Prompt re-anchoring (PR)  at every step where the magnitude of the chosen prompt
        ``m_i = ||eps_c - eps_u||`` exceeds ``target_pr``, the anchor of CFG moves from the
        unconditional prediction to the original (memorized) prompt's prediction ``eps_o``::

            eps = eps_o + s (eps_c - eps_o) + (g - s) (eps_c - eps_u),
            s = min(g (m_i - c) / (thres_pr - c), g),   c = (g target_pr - thres_pr) / (g - 1)

        so ``s`` runs from 1 at ``m_i = target_pr`` (where the formula is plain CFG, continuous
        with the steps below it) to g at ``m_i = thres_pr`` and beyond (pure re-anchoring,
        ``eps_o + g (eps_c - eps_o)``: guidance *away from* the memorized prompt).
        ``target_pr=0`` switches PR off (SS alone).

Defaults are the reference script's values for SD 1.4 (``l_target_ss`` 1, ``l_target_pr`` 3,
``mag_thres_pr`` 5, in the trace's ``eps_diff_norm`` units, which grow with the latent size):
other models need their own (the bundled model's held-out prompts sit near 1).  One deliberate
difference: the reference computes ``eps_o`` at every step of a triggered sample; here only at
the steps where PR acts (the other steps do not use it).

Cost per sample: 1 unconditional + 1 conditional evaluation per prompt tried at the first step
(the original first), the text encoder once per alternative tried, and 1 evaluation per step at
which PR acts.  ``Sample.meta`` gets ``prss_magnitude`` (the original prompt's), ``prss_triggered``,
``prss_choice`` (0: the original prompt, j: alternative j), ``prss_prompt``, ``prss_pr_steps``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from memberbench.errors import MemberbenchError
from memberbench.mitigations._grad import model_input
from memberbench.mitigations.base import (
    Mitigation,
    Param,
    count_unet_evals,
    per_batch,
    record_meta,
)
from memberbench.mitigations.prompt_embedding import _OptimizeEmbedding
from memberbench.sampling.hooks import SamplerState, StepHook


def read_alternatives(path: str | Path) -> dict[str, list[str]]:
    """``{prompt: [alternative, ...]}`` from a JSON-lines file (see the module docstring)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise MemberbenchError(
            f"prss: alternatives file {str(p)!r} not found; pass alternatives=PATH to a JSON-lines "
            "file with 'caption' and 'caption1'..'captionN' (or 'prompt' and 'alternatives') per "
            "row, or search=embedding / search=none"
        )
    out: dict[str, list[str]] = {}
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise MemberbenchError(
                f"prss: {p}:{n} is not JSON ({e.msg}); fix or remove it"
            ) from None
        if not isinstance(row, dict):
            raise MemberbenchError(f"prss: {p}:{n} is not a JSON object")
        prompt = row.get("prompt", row.get("caption"))
        if not isinstance(prompt, str):
            raise MemberbenchError(f"prss: {p}:{n} has no 'prompt' or 'caption' string")
        if "alternatives" in row:
            alts = row["alternatives"]
        else:
            keys = sorted(
                (k for k in row if k.startswith("caption") and k[7:].isdigit()),
                key=lambda k: int(k[7:]),
            )
            alts = [row[k] for k in keys]
        if not isinstance(alts, list) or not all(isinstance(a, str) for a in alts):
            raise MemberbenchError(f"prss: {p}:{n}: the alternatives must be a list of strings")
        out.setdefault(prompt, []).extend(alts)
    return out


def reanchor_scale(m: torch.Tensor, g: torch.Tensor, target_pr: float, thres_pr: float):
    """The re-anchoring weight ``s`` of each row (see the module docstring)."""
    c = (g * target_pr - thres_pr) / (g - 1.0)
    return torch.minimum((m - c) / (thres_pr - c) * g, g)


class _Prss(StepHook):
    def __init__(self, mit: PRSS, alternatives: dict[str, list[str]]) -> None:
        c = mit.config
        self.target_ss = c["target_ss"]
        self.target_pr = c["target_pr"]
        self.thres_pr = c["thres_pr"]
        self.search = mit.search
        self.alternatives = alternatives
        self.pe = _OptimizeEmbedding(c["target_ss"], c["pe_iters"], c["pe_lr"], True)

    def on_start(self, state: SamplerState) -> None:
        B = len(state.requests)
        ad = state.adapter
        t0 = state.timesteps[0]
        inp = model_input(state, state.latents, t0)
        original = state.cond_embeds.clone()
        with torch.no_grad():
            eps_u = ad.predict_noise(inp, t0, state.uncond_embeds)
            eps_c = ad.predict_noise(inp, t0, original)
        count_unet_evals(state, 2)
        m0 = (eps_c - eps_u).flatten(1).float().norm(dim=1).cpu().double()
        trig = m0 > self.target_ss
        choice = [0] * B
        chosen = [r.prompt for r in state.requests]
        cond = original.clone()
        if self.search == "alternatives":
            for b in torch.nonzero(trig).flatten().tolist():
                best_m, best_j, best_e = float(m0[b]), 0, None
                for j, text in enumerate(self.alternatives.get(state.requests[b].prompt, []), 1):
                    e = ad.encode_prompts([text]).to(cond.dtype)
                    with torch.no_grad():
                        ec = ad.predict_noise(inp[b : b + 1], t0, e)
                    count_unet_evals(state, 1, rows=torch.arange(B) == b)
                    m = float((ec - eps_u[b : b + 1]).flatten().float().norm())
                    if m < best_m:
                        best_m, best_j, best_e = m, j, e
                    if m <= self.target_ss:
                        break
                if best_e is not None:
                    cond[b] = best_e[0]
                    choice[b] = best_j
                    chosen[b] = self.alternatives[state.requests[b].prompt][best_j - 1]
            state.cond_embeds = cond
        elif self.search == "embedding" and bool(trig.any()):
            # Wen's optimisation on the triggered rows only (the others are below its target)
            self.pe.on_start(state)
            keep = (~trig).to(cond.device).view(-1, *([1] * (cond.ndim - 1)))
            state.cond_embeds = torch.where(keep, original, state.cond_embeds)
        scratch = per_batch(state, self)
        scratch["original"] = original
        scratch["trig"] = trig
        scratch["pr_steps"] = torch.zeros(B, dtype=torch.long)
        record_meta(state, "prss_magnitude", m0)
        record_meta(state, "prss_triggered", trig)
        record_meta(state, "prss_choice", choice)
        record_meta(state, "prss_prompt", chosen)
        record_meta(state, "prss_pr_steps", scratch["pr_steps"])

    def combine(self, state, i, t, eps_u, eps_c, g):
        scratch = per_batch(state, self)
        trig = scratch["trig"]
        if self.target_pr <= 0 or not bool(trig.any()):
            return None
        m = (eps_c - eps_u).flatten(1).float().norm(dim=1).cpu()
        gc = g.detach().float().cpu()
        act = trig & (m > self.target_pr) & (gc > 1.0)
        if not bool(act.any()):
            return None
        rows = torch.nonzero(act).flatten().to(eps_c.device)
        inp = model_input(state, state.latents[rows], t)
        with torch.no_grad():
            eps_o = state.adapter.predict_noise(inp, t, scratch["original"][rows])
        count_unet_evals(state, 1, rows=act)
        scratch["pr_steps"] += act.long()
        record_meta(state, "prss_pr_steps", scratch["pr_steps"])
        shape = (-1, *([1] * (eps_c.ndim - 1)))
        gv = g.to(eps_c.dtype).view(shape)
        out = eps_u + gv * (eps_c - eps_u)
        s = reanchor_scale(m[act.cpu()], gc[act.cpu()], self.target_pr, self.thres_pr)
        s = s.to(eps_c.device, eps_c.dtype).view(shape)
        ga = gv[rows]
        ec = eps_c[rows]
        out[rows] = (
            eps_o.to(ec.dtype) + s * (ec - eps_o.to(ec.dtype)) + (ga - s) * (ec - eps_u[rows])
        )
        return out


class PRSS(Mitigation):
    """Re-anchor CFG on the memorized prompt (PR) and sample with a lower-magnitude alternative
    phrasing (SS), only for prompts whose first-step magnitude flags them."""

    name = "prss"
    families = frozenset(
        {"sd"}
    )  # its embedding-optimisation search edits SD's CLIP token embeddings
    citation = (
        "Chen, Liu, Shah & Xu, 'Enhancing Privacy-Utility Trade-offs to Mitigate Memorization in "
        "Diffusion Models', CVPR 2025 (arXiv 2504.18032)"
    )
    params = {
        "target_ss": Param(
            float,
            1.0,
            "trigger (and SS acceptance): first-step ||eps_c - eps_u|| above this (reference: 1)",
            0.0,
            1e6,
        ),
        "target_pr": Param(
            float,
            3.0,
            "re-anchor at the steps whose magnitude exceeds this (reference: 3); 0 turns PR off",
            0.0,
            1e6,
        ),
        "thres_pr": Param(
            float, 5.0, "magnitude at which re-anchoring is complete (reference: 5)", 0.0, 1e6
        ),
        "search": Param(
            str,
            "auto",
            "how the prompt is replaced: alternatives (SS, from the file), embedding (Wen's PE), "
            "none, or auto (alternatives when a file is given, else none)",
            choices=("auto", "alternatives", "embedding", "none"),
        ),
        "alternatives": Param(
            str, "", "JSON-lines file of alternative phrasings (search=alternatives)"
        ),
        "pe_iters": Param(int, 10, "search=embedding: AdamW steps", 0, 1000),
        "pe_lr": Param(float, 0.05, "search=embedding: AdamW learning rate", 1e-5, 10.0),
    }

    def validate(self) -> None:
        c = self.config
        if c["target_pr"] > 0 and c["thres_pr"] <= c["target_pr"]:
            raise MemberbenchError(
                f"mitigation 'prss': thres_pr={c['thres_pr']} must be above target_pr="
                f"{c['target_pr']} (re-anchoring ramps up between them)"
            )
        self._alts: dict[str, list[str]] = {}
        self.search = c["search"]
        if self.search == "auto":
            self.search = "alternatives" if c["alternatives"] else "none"
        if self.search == "alternatives":
            if not c["alternatives"]:
                raise MemberbenchError(
                    "mitigation 'prss': search=alternatives needs alternatives=PATH (memberbench "
                    "ships no language model to write them); or pass search=embedding (Wen's "
                    "prompt-embedding optimisation) or search=none"
                )
            self._alts = read_alternatives(c["alternatives"])

    def version(self) -> str:
        # the alternatives' text changes the generations: it enters the fingerprint
        if not self._alts:
            return "1"
        from memberbench.types import stable_hash

        return "1-" + stable_hash(sorted(self._alts.items()))[:16]

    def hooks(self) -> list[StepHook]:
        return [_Prss(self, self._alts)]
