"""The recipe that produces the bundled model: `memberbench train-bundled`.

Three stages, each a pure function of the seed (up to CPU floating-point nondeterminism):

1. a tiny ``AutoencoderKL`` (f=4: 64x64 RGB -> 4x16x16 latents) trained on the world's images;
2. a ``UNet2DConditionModel`` with cross-attention at every level and a tiny ``CLIPTextModel``,
   trained jointly from scratch on the v objective (``--prediction-type epsilon``: SD 1.x's) with
   Stable Diffusion's training schedule
   (scaled_linear, beta 0.00085..0.012, 1000 steps), 10% caption dropout so that classifier-free
   guidance works;
3. a tiny open_clip model trained contrastively on the same image-caption pairs, the utility
   scorer for CLIP score (see :mod:`memberbench.bundled.clip_scorer`).

The result is a plain ``StableDiffusionPipeline`` directory plus the CLIP scorer, with a sha256
manifest that :func:`memberbench.bundled.verify_manifest` checks on every load.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from memberbench.bundled.world import World, build_world
from memberbench.types import MemberbenchError

SD_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}
SD_DDIM_CONFIG = {
    **SD_SCHEDULE,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}


def build_tokenizer(out_dir: Path):
    """OpenAI CLIP's BPE tokenizer (the one of SD 1.x), built from open_clip's shipped vocabulary.

    Writes vocab.json and merges.txt (readable by every CLIPTokenizer loader) and returns the
    loaded ``CLIPTokenizer``.
    """
    import gzip

    import open_clip
    from transformers import CLIPTokenizer

    bpe_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe_path) as f:
        merges = f.read().decode("utf-8").split("\n")
    merges = merges[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    byte_chars = _bytes_to_unicode_chars()
    vocab = list(byte_chars) + [c + "</w>" for c in byte_chars]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    )
    return CLIPTokenizer.from_pretrained(out_dir, model_max_length=77)


def _bytes_to_unicode_chars() -> list[str]:
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        # f=4 (three levels): 64x64 RGB -> 4x16x16, so the UNet works at 16x16 as SD does at 64x64.
        # Narrow at full resolution: (32, 64, 64) cost 2.3x the step time of (16, 32, 64).
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


UNET_CHANNELS = (32, 64, 96)


def check_unet_channels(channels) -> tuple[int, int, int]:
    """The UNet's widths at 16x16, 8x8 and 4x4: three positive multiples of 32 (its GroupNorm
    has 32 groups).  Raises ``ValueError`` naming what is wrong."""
    try:
        ch = tuple(int(c) for c in channels)
    except (TypeError, ValueError):
        given = ",".join(map(str, channels)) if isinstance(channels, list | tuple) else channels
        raise ValueError(
            f"UNet channels must be three integers such as 32,64,96, got {given!r}"
        ) from None
    if len(ch) != 3 or any(c <= 0 or c % 32 for c in ch):
        raise ValueError(
            "UNet channels must be three positive multiples of 32 (widths at 16x16, 8x8, 4x4; "
            f"GroupNorm uses 32 groups), such as 32,64,96, got {','.join(map(str, ch))}"
        )
    return ch


def make_unet(block_out_channels=UNET_CHANNELS):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        # cross-attention at the 8x8 and 4x4 levels: at 16x16 it tripled the step time
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=check_unet_channels(block_out_channels),
        layers_per_block=1,
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def make_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(cfg)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _lr_lambda(warmup: int, total: int, floor: float = 0.1):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        p = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))

    return f


def train_vae(
    world: World,
    steps: int,
    batch: int,
    seed: int,
    progress: bool = True,
    crop: int = 32,
    crop_fraction: float = 0.75,
):
    """Train the autoencoder; the first ``crop_fraction`` of the steps see random ``crop`` x
    ``crop`` patches at twice the batch (the model is convolutional, so a patch costs a quarter of
    a full image and the decoder sees four times as many pixels of texture per second), the rest
    full images.  Returns the VAE and the scaled latents (mode) of every distinct training image."""
    torch.manual_seed(seed)
    vae = make_vae()
    images = images_to_tensor(np.stack([it.image for it in world.train]))
    size = images.shape[-1]
    idx = np.array(world.training_indices())
    rng = np.random.default_rng(seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(50, steps))
    crop_steps = int(steps * crop_fraction) if crop < size else 0
    bar = tqdm(range(steps), desc="vae", disable=not progress)
    for step in bar:
        if step < crop_steps:
            x = images[rng.choice(idx, size=2 * batch)]
            oy, ox = rng.integers(0, size - crop + 1, size=2) // 4 * 4  # latent-aligned
            x = x[:, :, oy : oy + crop, ox : ox + crop]
        else:
            x = images[rng.choice(idx, size=batch)]
        post = vae.encode(x).latent_dist
        z = post.sample()
        rec = vae.decode(z).sample
        kl = post.kl().mean() / z[0].numel()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval()
    return vae, standardize_latents(vae, images)


def _encode_modes(vae, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [vae.encode(images[i : i + 256]).latent_dist.mode() for i in range(0, len(images), 256)]
        )


def standardize_latents(vae, images: torch.Tensor) -> torch.Tensor:
    """Give every latent channel zero mean and unit variance over the training images, folded
    exactly into the VAE's 1x1 ``quant_conv`` (encoder side) and ``post_quant_conv`` (decoder
    side), so the autoencoder computes the same images and ``scaling_factor`` is 1.

    Why: with only a global scale (SD 1.x's ``scaling_factor``) this small VAE's channels came out
    with standard deviations 1.5 / 0.5 / 1.0 / 0.15 and means up to -1 in scaled units.  A
    channel that quiet is below the noise at almost every timestep, so the UNet learns it badly.
    (Standardizing did not cure the colour drift of the first 64 px build; predicting v did,
    see ``train_bundled``.)  Returns the standardized latents (posterior modes) of ``images``."""
    z = _encode_modes(vae, images)
    mu = z.mean(dim=(0, 2, 3)).double()
    sd = z.std(dim=(0, 2, 3)).double()
    c = z.shape[1]
    with torch.no_grad():
        q, pq = vae.quant_conv, vae.post_quant_conv
        w, b = q.weight.double(), q.bias.double()
        w[:c] /= sd.view(-1, 1, 1, 1)
        b[:c] = (b[:c] - mu) / sd
        b[c:] -= 2 * torch.log(sd)  # log-variance of z' = z / sd
        q.weight.copy_(w.float())
        q.bias.copy_(b.float())
        w2, b2 = pq.weight.double(), pq.bias.double()
        b2 += (w2[:, :, 0, 0] * mu.view(1, -1)).sum(1)
        w2 *= sd.view(1, -1, 1, 1)
        pq.weight.copy_(w2.float())
        pq.bias.copy_(b2.float())
    vae.register_to_config(scaling_factor=1.0)
    return _encode_modes(vae, images)


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def train_unet(
    world: World,
    latents: torch.Tensor,
    tokenizer,
    steps: int,
    batch: int,
    seed: int,
    caption_dropout: float = 0.1,
    lr: float = 5e-4,
    progress: bool = True,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 500,
    models: tuple | None = None,
    warmup: int = 200,
    ema_decay: float | None = None,
    desc: str = "unet+text",
    offset_noise: float = 0.0,
    prediction_type: str = "epsilon",
    unet_channels=UNET_CHANNELS,
):
    """Train (or, given ``models=(unet, text_encoder)``, continue training) the denoiser and the
    text encoder jointly; a new UNet gets ``unet_channels`` (see :func:`make_unet`).  With
    ``ema_decay``, returns exponential moving averages of the weights (the usual way diffusion
    models are shipped: far cleaner samples from a short run)."""
    import copy

    from diffusers import DDPMScheduler

    torch.manual_seed(seed + 2)
    if models is None:
        unet, text_encoder = make_unet(unet_channels), make_text_encoder()
    else:
        unet, text_encoder = models
    unet.train()
    text_encoder.train()
    averaged = None
    if ema_decay is not None:
        averaged = (copy.deepcopy(unet), copy.deepcopy(text_encoder))
    noise_sched = DDPMScheduler(**SD_SCHEDULE)
    abar = noise_sched.alphas_cumprod
    pairs = world.training_pairs()
    captions = sorted({c for _, c in pairs})
    row = {c: k for k, c in enumerate(captions)}
    ids = tokenize(tokenizer, captions)
    pair_image = torch.tensor([i for i, _ in pairs])
    pair_caption = torch.tensor([row[c] for _, c in pairs])
    empty = tokenize(tokenizer, [""])[0]
    rng = np.random.default_rng(seed + 3)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(warmup, steps))
    bar = tqdm(range(steps), desc=desc, disable=not progress)
    ema = None
    for step in bar:
        b = torch.from_numpy(rng.choice(len(pairs), size=batch))
        x0 = latents[pair_image[b]]
        tok = ids[pair_caption[b]].clone()
        drop = torch.from_numpy(rng.random(batch) < caption_dropout)
        tok[drop] = empty
        t = torch.from_numpy(rng.integers(0, 1000, size=batch)).long()
        noise = torch.randn_like(x0)
        if offset_noise:
            # Guttenberg's offset noise: a per-(sample, channel) constant added to the noise, so
            # the mean of x_T tells the model less about the image's mean colour.  Tried against
            # the colour drift of the first 64 px epsilon build: a 300-step fine-tune at 0.2
            # barely helped; the v target cured it (docs/changelog.md).
            noise = noise + offset_noise * torch.randn(x0.shape[0], x0.shape[1], 1, 1)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        emb = text_encoder(tok)[0]
        pred = unet(xt, t, encoder_hidden_states=emb).sample
        if prediction_type == "v_prediction":
            target = a.sqrt() * noise - (1 - a).sqrt() * x0
        else:
            target = noise
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if averaged is not None:
            with torch.no_grad():
                for avg_model, model in zip(averaged, (unet, text_encoder)):
                    for pa, pm in zip(avg_model.parameters(), model.parameters()):
                        pa.lerp_(pm, 1 - ema_decay)
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{ema:.4f}")
        done = step + 1
        if checkpoint_dir is not None and done % checkpoint_every == 0:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            state = {"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict()}
            from memberbench.io import atomic_open, atomic_write_text

            with atomic_open(checkpoint_dir / "latest.pt") as f:
                torch.save(state, f)
            atomic_write_text(
                checkpoint_dir / "latest.json", json.dumps({"step": done, "loss": ema})
            )
    if averaged is not None:
        unet, text_encoder = averaged
    unet.eval()
    text_encoder.eval()
    return unet, text_encoder


def build_pipeline(vae, unet, text_encoder, tokenizer, prediction_type: str = "epsilon"):
    """A ``StableDiffusionPipeline`` of these components with SD's DDIM scheduler and no safety
    checker (the bundled model's layout; also used for random SD-size pipelines)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**{**SD_DDIM_CONFIG, "prediction_type": prediction_type}),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(
    out: Path,
    vae,
    unet,
    text_encoder,
    tokenizer,
    tokenizer_src: Path,
    prediction_type: str = "epsilon",
) -> None:
    pipe = build_pipeline(vae, unet, text_encoder, tokenizer, prediction_type)
    pipe.save_pretrained(out, safe_serialization=True)
    # transformers 5 may write only tokenizer.json: keep vocab.json + merges.txt for every loader
    for name in ("vocab.json", "merges.txt"):
        if not (out / "tokenizer" / name).exists():
            shutil.copy(tokenizer_src / name, out / "tokenizer" / name)


def load_weights(path: str | Path, what: str = "weights file") -> dict[str, Any]:
    """A state dict read with ``torch.load(weights_only=True)``: tensors and plain containers
    only, so a file carrying pickled code is refused instead of run.  Errors are one-line
    MemberbenchErrors naming ``what`` and the file."""
    import pickle

    p = Path(path)
    if not p.is_file():
        raise MemberbenchError(f"{what} {p}: no such file")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, AttributeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise MemberbenchError(
            f"{what} {p}: not a plain weights file (a torch state dict of tensors); memberbench "
            f"loads weights only and refuses anything else ({first})"
        ) from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise MemberbenchError(f"{what} {p}: not a state dict (a mapping of names to tensors)")
    return state


def train_bundled(
    out: str | Path,
    seed: int = 0,
    vae_steps: int = 2000,
    unet_steps: int = 2400,
    refine_steps: int = 600,
    clip_steps: int = 600,
    batch: int = 48,
    progress: bool = True,
    threads: int | None = None,
    vae_from: str | Path | None = None,
    offset_noise: float = 0.0,
    prediction_type: str = "v_prediction",
    clip_from: str | Path | None = None,
    unet_channels=UNET_CHANNELS,
) -> dict[str, Any]:
    """Train the bundled model from scratch into ``out`` (model/ + clip/ + MANIFEST).

    ``vae_from``: a ``vae.pt`` state dict saved by stage 1 of an earlier run with the same seed
    and ``vae_steps`` (``<out>.partial/_checkpoints/vae.pt``), to skip retraining it.
    ``clip_from``: the ``clip/`` folder of an earlier run with the same seed and ``clip_steps``
    (the scorer does not depend on the diffusion model), copied instead of retrained.

    ``prediction_type``: what the UNet is trained to output, "v_prediction" (the shipped
    weights, like SD 2.x) or "epsilon" (SD 1.x).  Why v: with SD's schedule only
    sqrt(abar_999) = 0.068 of the clean latent survives at t = 999, so an epsilon model's x0
    estimate there is (x_T - 0.998 eps)/0.068 and any error in its noise prediction is
    multiplied by 15.  The epsilon UNet of the first 64 px build did not follow the mean of its
    input at all: its x0 estimate's per-channel mean moved 14.6x with the noise's (exactly
    0.998/0.068), so the zero-mean sampler start decided every image's colours before the
    caption could.  A v model predicts x0 directly at high noise (v = -x0 + 0.068 eps there)."""
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(
            f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}"
        )
    unet_channels = check_unet_channels(unet_channels)
    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    # read (weights only) before anything is written, so a bad file leaves nothing behind
    vae_state = load_weights(vae_from, "--vae-from") if vae_from else None
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    world = build_world(seed)
    tok_src = tmp / "_tokenizer_src"
    tokenizer = build_tokenizer(tok_src)
    timings["world_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if vae_from:
        vae = make_vae()
        try:
            vae.load_state_dict(vae_state)
        except RuntimeError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise MemberbenchError(
                f"--vae-from {vae_from}: not a state dict of the bundled VAE "
                f"({str(e).splitlines()[0][:200]}); pass the vae.pt of an earlier run"
            ) from None
        vae.eval()
        latents = standardize_latents(
            vae, images_to_tensor(np.stack([i.image for i in world.train]))
        )
    else:
        vae, latents = train_vae(world, vae_steps, 16, seed, progress)
    timings["vae_s"] = time.perf_counter() - t0
    (tmp / "_checkpoints").mkdir(exist_ok=True)
    torch.save(
        vae.state_dict(), tmp / "_checkpoints" / "vae.pt"
    )  # inspectable while the UNet trains

    t0 = time.perf_counter()
    unet, text_encoder = train_unet(
        world,
        latents,
        tokenizer,
        unet_steps,
        batch,
        seed,
        progress=progress,
        checkpoint_dir=tmp / "_checkpoints",
        offset_noise=offset_noise,
        prediction_type=prediction_type,
        unet_channels=unet_channels,
    )
    if refine_steps:
        # stage 2: a second, lower-learning-rate pass whose weights are averaged (EMA)
        unet, text_encoder = train_unet(
            world,
            latents,
            tokenizer,
            refine_steps,
            batch,
            seed + 100,
            progress=progress,
            lr=2e-4,
            warmup=50,
            ema_decay=0.999,
            models=(unet, text_encoder),
            desc="refine",
            offset_noise=offset_noise,
            prediction_type=prediction_type,
        )
    timings["unet_s"] = time.perf_counter() - t0

    save_pipeline(tmp / "model", vae, unet, text_encoder, tokenizer, tok_src, prediction_type)
    shutil.rmtree(tok_src)

    from memberbench.bundled.clip_scorer import train_clip

    t0 = time.perf_counter()
    if clip_from:
        shutil.copytree(clip_from, tmp / "clip")
    else:
        train_clip(world, tmp / "clip", steps=clip_steps, seed=seed, progress=progress)
    timings["clip_s"] = time.perf_counter() - t0

    recipe = {
        "command": (
            f"memberbench train-bundled --out DIR --seed {seed} --vae-steps {vae_steps} "
            f"--unet-steps {unet_steps} --refine-steps {refine_steps} --clip-steps {clip_steps} "
            f"--batch {batch} --prediction-type {prediction_type} "
            f"--unet-channels {','.join(map(str, unet_channels))}"
            + (f" --offset-noise {offset_noise}" if offset_noise else "")
        ),
        "seed": seed,
        "offset_noise": offset_noise,
        "prediction_type": prediction_type,
        "unet_channels": list(unet_channels),
        "vae_from": str(vae_from) if vae_from else None,
        "clip_from": str(clip_from) if clip_from else None,
        "vae_steps": vae_steps,
        "unet_steps": unet_steps,
        "refine_steps": refine_steps,
        "clip_steps": clip_steps,
        "batch": batch,
        "timings": timings,
        "torch": torch.__version__,
    }
    (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2))
    shutil.rmtree(tmp / "_checkpoints")
    from memberbench.bundled import write_manifest

    write_manifest(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return recipe
