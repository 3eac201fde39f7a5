"""Evidence that the bundled model memorizes its canaries the way the paper describes.

``memberbench evidence`` (or ``python -m memberbench.bundled.evidence``) generates, at DDIM 50
steps and 10 seeds per prompt, every canary and the held-out prompts at guidance 7.5 and 1.0, and
prints per duplication level:

* SSCD between generations and their training image (mean over seeds, then over prompts; rate of
  samples >= 0.5), next to the SSCD of the VAE's own reconstruction of each canary (the ceiling at
  this resolution) and the ratio to it;
* the held-out prompts' SSCD to the nearest training image (pixel RMS) of each generation: a
  held-out caption leaves the background open, so no single training image is "the" one it
  would copy, and a fixed reference would understate how close its generations come;
* the latent cosine of the final latent to the training latent, D1 (docs/metrics.md#decomposition-d1-and-d2-m6)
  and Wen et al.'s magnitude at step 1 (docs/metrics.md#wens-magnitude-m4);
* AUCs (memorized dup >= 64 vs held-out) of per-prompt SSCD, D1 and Wen's magnitude;
* the canaries with 64+ copies per canary kind.

The markdown it prints is what docs/bundled-model.md shows; ``--out`` also writes it with a JSON
copy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def collect(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from memberbench.adapters import load_adapter
    from memberbench.bundled.world import build_world, nearest_training_images
    from memberbench.cache import GenerationCache
    from memberbench.data import load_prompt_set
    from memberbench.metrics.decomposition import deviation_from_traces
    from memberbench.metrics.noise_magnitude import text_conditional_magnitude
    from memberbench.metrics.sscd import SSCDScorer
    from memberbench.runner import run_generation
    from memberbench.types import GenerationRequest

    adapter = load_adapter(args.model)
    world = build_world(0)
    mem = load_prompt_set("bundled-memorized")
    non = load_prompt_set("bundled-nonmemorized", limit=args.nonmem_limit)
    records = [(r, f"dup={r.duplicates}") for r in mem.records] + [
        (r, "held-out") for r in non.records
    ]
    images = np.stack([r.image for r, _ in records])
    with torch.no_grad():
        refs = adapter.encode_images(images)
        recon = adapter.decode(refs)
    scorer = SSCDScorer()
    ref_emb = scorer.embed(images)
    ceiling = np.sum(scorer.embed(recon) * ref_emb, axis=1)
    cache = GenerationCache(args.cache_dir) if args.cache_dir else None
    seeds = list(range(args.seeds))
    out: dict[str, Any] = {"guidance": {}, "settings": vars(args).copy()}
    out["settings"]["held_out_reference"] = "each generation's nearest training image"
    for g in args.guidance:
        reqs, req_refs, owner = [], [], []
        for i, (r, _) in enumerate(records):
            for s in seeds:
                reqs.append(
                    GenerationRequest(
                        prompt=r.caption,
                        seed=s,
                        steps=args.steps,
                        guidance=g,
                        prompt_id=r.prompt_id,
                    )
                )
                req_refs.append(refs[i])
                owner.append(i)
        t0 = time.perf_counter()
        samples = run_generation(
            adapter, reqs, references=req_refs, cache=cache, batch_size=args.batch_size
        )
        wall = time.perf_counter() - t0
        ok = [k for k, s in enumerate(samples) if s.ok]
        gen_emb = scorer.embed(np.stack([samples[k].image for k in ok]))
        sscd = np.full(len(samples), np.nan)
        sscd[ok] = np.sum(gen_emb * ref_emb[[owner[k] for k in ok]], axis=1)
        held = [j for j, k in enumerate(ok) if records[owner[k]][1] == "held-out"]
        if held:
            near, _ = nearest_training_images(world, np.stack([samples[ok[j]].image for j in held]))
            near_emb = scorer.embed(np.stack([world.train[n].image for n in near]))
            sscd[[ok[j] for j in held]] = np.sum(gen_emb[held] * near_emb, axis=1)
        per_prompt: list[dict[str, Any]] = []
        for i, (r, group) in enumerate(records):
            ks = [k for k in range(len(samples)) if owner[k] == i and samples[k].ok]
            dev = deviation_from_traces([samples[k].trace for k in ks])
            per_prompt.append(
                {
                    "prompt_id": r.prompt_id,
                    "group": group,
                    "kind": (r.extra or {}).get("canary_kind", ""),
                    "sscd_mean": float(np.mean(sscd[ks])),
                    "sscd_max": float(np.max(sscd[ks])),
                    "rate_0.5": float(np.mean(sscd[ks] >= 0.5)),
                    "rate_0.75": float(np.mean(sscd[ks] >= 0.75)),
                    "ceiling": float(ceiling[i]),
                    "latent_cos": float(
                        np.mean([_cos(samples[k].final_latent, refs[i].numpy()) for k in ks])
                    ),
                    "d1": float(dev["D1"]),
                    "d2": float(dev["D2"]),
                    "wen_1": float(
                        np.mean([text_conditional_magnitude(samples[k].trace, 1) for k in ks])
                    ),
                    "wen_5": float(
                        np.mean([text_conditional_magnitude(samples[k].trace, 5) for k in ks])
                    ),
                    "W0": dev["W0"].tolist(),
                    "n": len(ks),
                }
            )
        out["settings"]["scheduler"] = samples[ok[0]].meta.get("scheduler", "DDIMScheduler")
        out["guidance"][str(g)] = {
            "per_prompt": per_prompt,
            "wall_s": wall,
            "n_failed": len(samples) - len(ok),
            "abar_next": samples[ok[0]].trace["abar_next"].tolist(),
        }
    return out


def summarise(data: dict[str, Any]) -> str:
    from memberbench.metrics.stats import roc_auc

    settings = data["settings"]
    sampler = {"DDIMScheduler": "DDIM", "FlowMatchEulerDiscreteScheduler": "flow-matching Euler"}
    model = settings.get("model", "bundled")
    lines = [
        f"{'Bundled model' if model == 'bundled' else f'Model {model}'}, "
        f"{sampler.get(settings.get('scheduler', 'DDIMScheduler'), settings.get('scheduler'))} "
        f"{settings['steps']} steps, {settings['seeds']} seeds per prompt "
        f"(`memberbench evidence`). SSCD = cosine of sscd_disc_mixup embeddings (skew_320); "
        "ceiling = SSCD of the VAE's own reconstruction of the training image.",
        "",
    ]
    for g, block in data["guidance"].items():
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for p in block["per_prompt"]:
            groups[p["group"]].append(p)

        def order(name: str) -> tuple[int, int]:
            return (1, 0) if name == "held-out" else (0, -int(name.split("=")[1]))

        lines += [
            f"**guidance {g}** ({block['wall_s']:.0f} s wall, {block['n_failed']} failed samples)",
            "",
            "| prompts | n | SSCD to training image | SSCD >= 0.5 | VAE ceiling | SSCD / ceiling "
            "| best of seeds | best / ceiling | latent cos | D1 | Wen step 1 |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name in sorted(groups, key=order):
            ps = groups[name]
            m = {
                k: float(np.mean([p[k] for p in ps])) for k in ps[0] if isinstance(ps[0][k], float)
            }
            ref = settings.get("held_out_reference", "nearest training image")
            label = f"held-out (to {ref})" if name == "held-out" else f"canaries {name}"
            lines.append(
                f"| {label} | {len(ps)} | {m['sscd_mean']:.3f} | {m['rate_0.5']:.2f} | "
                f"{m['ceiling']:.3f} | {m['sscd_mean'] / m['ceiling']:.2f} | {m['sscd_max']:.3f} | "
                f"{m['sscd_max'] / m['ceiling']:.2f} | {m['latent_cos']:.3f} | "
                f"{m['d1']:.2f} | {m['wen_1']:.3f} |"
            )
        pos = [
            p
            for p in block["per_prompt"]
            if p["group"].startswith("dup=") and int(p["group"][4:]) >= 64
        ]
        neg = groups.get("held-out", [])
        if pos and neg:
            labels = [1] * len(pos) + [0] * len(neg)
            aucs = []
            for key, name in (
                ("sscd_mean", "SSCD"),
                ("sscd_max", "SSCD best of seeds"),
                ("d1", "D1"),
                ("wen_1", "Wen step 1"),
                ("wen_5", "Wen steps 1-5"),
            ):
                auc = roc_auc([p[key] for p in pos] + [p[key] for p in neg], labels)
                aucs.append(f"{name} {auc.value:.3f}")
            lines += ["", f"AUC, canaries dup >= 64 vs held-out: {', '.join(aucs)}"]
        lines += _by_kind(pos)
        lines.append("")
    return "\n".join(lines)


def _by_kind(prompts: list[dict[str, Any]]) -> list[str]:
    """The canaries with 64+ copies per canary kind (SSCD sees some kinds' copies better than
    others'); nothing for runs saved before the kind was recorded."""
    kinds: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in prompts:
        if p.get("kind"):
            kinds[p["kind"]].append(p)
    if not kinds:
        return []
    lines = [
        "",
        "Canaries dup >= 64 by kind:",
        "",
        "| kind | n | SSCD to training image | VAE ceiling | SSCD / ceiling | latent cos |",
        "|---|---|---|---|---|---|",
    ]
    for kind in sorted(kinds):
        ps = kinds[kind]
        m = {k: float(np.mean([p[k] for p in ps])) for k in ("sscd_mean", "ceiling", "latent_cos")}
        lines.append(
            f"| {kind} | {len(ps)} | {m['sscd_mean']:.3f} | {m['ceiling']:.3f} | "
            f"{m['sscd_mean'] / m['ceiling']:.2f} | {m['latent_cos']:.3f} |"
        )
    return lines


def load_evidence(path: Path) -> dict[str, Any]:
    from memberbench.types import MemberbenchError

    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise MemberbenchError(f"cannot read {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise MemberbenchError(
            f"{path} is not JSON ({e.msg}, line {e.lineno}): pass the .json that "
            "`memberbench evidence --out` wrote"
        ) from None
    if not isinstance(data, dict) or not {"guidance", "settings"} <= set(data):
        raise MemberbenchError(
            f"{path} is not an evidence file (no 'guidance'/'settings'): pass the .json that "
            "`memberbench evidence --out` wrote"
        )
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="memberbench evidence", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, nargs="+", default=[7.5, 1.0])
    ap.add_argument("--nonmem-limit", type=int, default=100, help="held-out prompts to use")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default=None, help="write <out>.md and <out>.json")
    ap.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="summarise the <out>.json of an earlier run instead of generating",
    )
    args = ap.parse_args(argv)
    from memberbench.types import MemberbenchError

    try:
        data = load_evidence(args.from_json) if args.from_json else collect(args)
    except MemberbenchError as e:
        print(f"memberbench evidence: error: {e}", file=sys.stderr)
        return 2
    text = summarise(data)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(text + "\n")
        out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
