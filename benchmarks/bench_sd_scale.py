"""The traced sampler against StableDiffusionPipeline.__call__ at Stable Diffusion's real size.

    python benchmarks/bench_sd_scale.py --device cuda --dtype fp16      # on a GPU machine
    python benchmarks/bench_sd_scale.py --device cpu --steps 2 --batch 1 --resolution 64  # smoke

Builds an SD 1.5-architecture pipeline with random weights from the published configs (UNet
860 M parameters, VAE f=8, CLIP ViT-L/14 text encoder; the bundled model's copy of SD 1.x's
tokenizer), so no download is needed: random weights cost exactly what trained ones do.  Prints
wall time per mode (median and min of ``--repeats`` interleaved runs, CUDA-synchronised), the
ratio to the pipeline (target <= 1.05), peak device memory of each mode above the loaded model
(``torch.cuda.max_memory_allocated``; on the CPU, peak RSS growth is measured by
bench_sampler.py instead), and the generation cache cold vs warm.  A script, not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPTS = [
    "an astronaut riding a horse on the moon",
    "a photograph of a red fox in the snow",
    "the starry night, oil painting",
    "a bowl of fruit on a wooden table",
]


def build_random_sd(resolution: int):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from memberbench.bundled.train import build_pipeline, build_tokenizer
    from memberbench.testing import _tokenizer_dir

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=resolution // 8, cross_attention_dim=768)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=resolution,
        scaling_factor=0.18215,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    tok = CLIPTokenizer.from_pretrained(_tokenizer_dir(build_tokenizer), model_max_length=77)
    # random weights can overflow fp16 activations in the deep UNet; shrink them so the numbers
    # stay finite (the cost of each kernel does not depend on the values)
    with torch.no_grad():
        for m in (unet, vae, text):
            for p in m.parameters():
                if p.dim() > 1:
                    p.mul_(0.5)
    pipe = build_pipeline(vae, unet, text, tok)
    n = sum(p.numel() for p in unet.parameters())
    return pipe, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="fp16")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args()

    import torch

    from memberbench.adapters.base import ModelCard
    from memberbench.adapters.stable_diffusion import StableDiffusionAdapter
    from memberbench.cache import GenerationCache
    from memberbench.runner import run_generation
    from memberbench.sampling.sampler import TracedSampler, initial_noise
    from memberbench.types import GenerationRequest

    cuda = args.device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    pipe, n_unet = build_random_sd(args.resolution)
    card = ModelCard(
        name="sd-1.5-random",
        repo_id="random",
        revision=None,
        resolution=args.resolution,
        prediction_type="epsilon",
    )
    ad = StableDiffusionAdapter(pipe, card, device=args.device, dtype=args.dtype)
    build_s = time.perf_counter() - t0
    B, steps = args.batch, args.steps
    reqs = [GenerationRequest(PROMPTS[i % len(PROMPTS)], seed=i, steps=steps) for i in range(B)]
    z = torch.stack([initial_noise(r.seed, ad.latent_shape)[0] for r in reqs])
    refs = [torch.randn(ad.latent_shape, generator=torch.Generator().manual_seed(99))] * B
    pipe = ad.pipe
    pipe.scheduler = ad.make_scheduler("ddim")
    sampler = TracedSampler(ad, batch_size=B)

    def run(mode: str, n: int = B):
        if mode == "pipeline":
            return pipe(
                [r.prompt for r in reqs[:n]],
                num_inference_steps=steps,
                guidance_scale=7.5,
                latents=z[:n].to(ad.device, ad.dtype),
                output_type="np",
            )
        if mode == "traced":
            return sampler.sample(reqs[:n])
        if mode == "traced+ref":
            return sampler.sample(reqs[:n], refs[:n])
        raise ValueError(mode)

    modes = ("pipeline", "traced", "traced+ref")
    for m in modes:  # warm-up (kernels, allocator)
        run(m, min(2, B))
    sync()
    times: dict[str, list[float]] = {m: [] for m in modes}
    peak: dict[str, float] = {}
    for r in range(args.repeats):
        for m in modes:
            if cuda and r == 0:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            sync()
            t = time.perf_counter()
            run(m)
            sync()
            times[m].append(time.perf_counter() - t)
            if cuda and r == 0:
                peak[m] = (torch.cuda.max_memory_allocated() - base) / 2**20

    # equivalence at this scale: the pipeline's images (float in [0, 1]) vs the traced sampler's
    import numpy as np

    ref_imgs = np.asarray(run("pipeline").images, dtype=np.float64) * 255.0
    ours = np.stack([s.image for s in run("traced")]).astype(np.float64)
    diff = np.abs(np.round(ref_imgs) - ours)

    tmp = Path(tempfile.mkdtemp(prefix="mb-sd-bench-"))
    t = time.perf_counter()
    fp = ad.fingerprint()
    fp_s = time.perf_counter() - t
    cache = GenerationCache(tmp / "cache")
    t = time.perf_counter()
    run_generation(ad, reqs, references=refs, cache=cache, batch_size=B, progress=False)
    sync()
    cold = time.perf_counter() - t
    t = time.perf_counter()
    run_generation(ad, reqs, references=refs, cache=cache, batch_size=B, progress=False)
    warm = time.perf_counter() - t

    dev = torch.cuda.get_device_name() if cuda else "cpu"
    print(
        f"SD 1.5 architecture, random weights (UNet {n_unet / 1e6:.0f} M params), "
        f"{args.resolution} px, {steps} DDIM steps, guidance 7.5, batch {B}, {args.dtype}, {dev}; "
        f"built in {build_s:.1f} s"
    )
    med = {m: statistics.median(v) for m, v in times.items()}
    best = {m: min(v) for m, v in times.items()}
    print(f"{'mode':<14}{'median s':>10}{'ratio':>8}{'min s':>10}{'ratio':>8}{'peak +MiB':>12}")
    for m in modes:
        pk = f"{peak[m]:.0f}" if m in peak else "-"
        print(
            f"{m:<14}{med[m]:>10.3f}{med[m] / med['pipeline']:>8.3f}"
            f"{best[m]:>10.3f}{best[m] / best['pipeline']:>8.3f}{pk:>12}"
        )
    print(
        f"images, traced vs pipeline (uint8 levels): max |diff| {diff.max():.0f}, "
        f"mean {diff.mean():.4f}, fraction of pixels differing {(diff > 0).mean():.5f}"
    )
    ips = B / med["traced+ref"]
    print(
        f"images/s (traced+ref, what the tasks run; for memberbench cost --images-per-s): {ips:.3f}"
    )
    print(f"fingerprint (hash of all weights, once per model): {fp_s:.2f} s ({fp[:12]})")
    print(f"cache cold (generate + store) {cold:.3f} s, warm (read only) {warm:.3f} s, ")
    print(f"warm/cold ratio {warm / cold:.4f}")
    print("all runs (s):", json.dumps({k: [round(x, 3) for x in v] for k, v in times.items()}))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "device": dev,
                    "dtype": args.dtype,
                    "steps": steps,
                    "batch": B,
                    "resolution": args.resolution,
                    "times": times,
                    "images_per_s": ips,
                    "peak_mib": peak,
                    "image_max_abs_diff": float(diff.max()),
                    "image_mean_abs_diff": float(diff.mean()),
                    "fingerprint_s": fp_s,
                    "cache_cold_s": cold,
                    "cache_warm_s": warm,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
