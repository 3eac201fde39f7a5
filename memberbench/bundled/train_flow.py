"""The recipe of the bundled flow-matching transformer: ``memberbench train-bundled --family flow``.

The second bundled model differs from the first (:mod:`memberbench.bundled.train`) only in family:
the same world, canaries and decoys, the same shipped VAE (its weights are reused byte for byte,
not retrained), but

* a tiny ``SD3Transformer2DModel`` (MMDiT: joint attention over image patches and caption
  tokens, adaLN-Zero conditioning on the timestep and the pooled caption) instead of the UNet;
* the two ``CLIPTextModelWithProjection`` text encoders a ``StableDiffusion3Pipeline`` takes
  (trained jointly with the transformer from scratch, as the UNet recipe trains its encoder; no
  T5: the pipeline's third encoder is ``None`` and its slot holds zeros);
* the rectified-flow objective of SD3 (Esser et al. 2024): ``x_t = (1 - sigma) x0 + sigma eps``,
  target ``eps - x0``, sigma drawn logit-normal(0, 1), timestep ``1000 sigma``; 10% caption
  dropout (the empty caption, which is the pipeline's unconditional input); an EMA of the weights;
* sampled with ``FlowMatchEulerDiscreteScheduler`` (shift 1: the latents are 16x16).

Captions are at most 16 CLIP tokens in this world, so both tokenizers stop at
``TOKENS`` = 24 (the pipeline pads to the tokenizer's ``model_max_length``), and the vocabulary is
SD 1.x's CLIP BPE cut down to the merges the world's captions use (:func:`build_small_tokenizer`):
every word still tokenizes (byte-level BPE falls back to characters), and the world's captions
tokenize exactly as with the full vocabulary.  The T5 slot holds ``MAX_SEQUENCE_LENGTH`` = 0
tokens: the pipeline must be called with ``max_sequence_length=0`` (its default, 256, would add
256 constant tokens to every attention the model never saw); memberbench's card passes it.
"""

from __future__ import annotations

import copy
import gzip
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from memberbench.bundled.train import (
    _bytes_to_unicode_chars,
    _lr_lambda,
    images_to_tensor,
    tokenize,
)
from memberbench.bundled.world import BACKGROUNDS, World, all_scenes, build_world, shape_caption
from memberbench.types import MemberbenchError

DEFAULT_STEPS = 2500
TOKENS = 24  # CLIP tokens per caption (the world's longest caption is 16)
MAX_SEQUENCE_LENGTH = 0  # T5 tokens (no T5 encoder: the slot holds zeros)
TEXT_WIDTH = 64  # hidden size of each CLIP encoder; the transformer sees both, 128 wide
FLOW_SCHEDULER = {"num_train_timesteps": 1000, "shift": 1.0}
TRANSFORMER = {
    "sample_size": 16,
    "patch_size": 2,
    "in_channels": 4,
    "out_channels": 4,
    "num_layers": 4,
    "attention_head_dim": 32,
    "num_attention_heads": 4,
    "joint_attention_dim": 2 * TEXT_WIDTH,
    "caption_projection_dim": 128,
    "pooled_projection_dim": 2 * TEXT_WIDTH,
    "pos_embed_max_size": 8,
}


def world_captions(world: World) -> list[str]:
    """Every caption the world has: training captions (with and without a background), the
    held-out prompts, and every scene under every background."""
    caps = {c for _, c in world.training_pairs()} | {c for c, _ in world.held_out}
    caps |= {shape_caption(*s, b) for s in all_scenes() for b in (None, *BACKGROUNDS)}
    return sorted(caps)


def _full_merges() -> list[tuple[str, str]]:
    import open_clip

    bpe_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(bpe_path) as f:
        lines = f.read().decode("utf-8").split("\n")
    return [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]


def build_small_tokenizer(out_dir: Path, captions: list[str], full_tokenizer):
    """A CLIP BPE tokenizer with SD 1.x's merges cut down to those ``captions`` use.

    A BPE token is made by exactly one merge, so the merges that build the tokens the full
    tokenizer produces on ``captions`` (closed over their parts) are all the merges it applies to
    them; keeping only those, in their original order, tokenizes ``captions`` into the same token
    strings.  The vocabulary is the 512 byte symbols (every other word falls back to them), the
    kept merges and the two special tokens.  Returns the loaded ``CLIPTokenizer``."""
    from transformers import CLIPTokenizer

    merges = _full_merges()
    made_by = {a + b: (a, b) for a, b in merges}
    rank = {m: i for i, m in enumerate(merges)}
    keep: set[tuple[str, str]] = set()
    todo = [t for c in captions for t in full_tokenizer.tokenize(c)]
    while todo:
        t = todo.pop()
        m = made_by.get(t)
        if m is not None and m not in keep:
            keep.add(m)
            todo.extend(m)
    kept = sorted(keep, key=rank.__getitem__)
    byte_chars = _bytes_to_unicode_chars()
    vocab = list(byte_chars) + [c + "</w>" for c in byte_chars]
    vocab += ["".join(m) for m in kept] + ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in kept) + "\n"
    )
    return CLIPTokenizer.from_pretrained(out_dir, model_max_length=TOKENS)


def make_text_encoder(tokenizer, layers: int = 3):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        projection_dim=TEXT_WIDTH,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(cfg)


def make_transformer():
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**TRANSFORMER)


def encode(text_encoders, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``StableDiffusion3Pipeline.encode_prompt`` computes from token ids (clip_skip None,
    no T5, ``max_sequence_length`` = 0), with gradients: the penultimate hidden states of both
    encoders joined along features, and their joined text projections (pooled)."""
    hidden, pooled = [], []
    for te in text_encoders:
        out = te(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled.append(out[0])
    return torch.cat(hidden, -1), torch.cat(pooled, -1)


def shipped_vae(vae_dir: Path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir)
    vae.eval()
    return vae


def train_transformer(
    world: World,
    latents: torch.Tensor,
    tokenizer,
    steps: int,
    batch: int,
    seed: int,
    lr: float = 5e-4,
    caption_dropout: float = 0.1,
    ema_decay: float = 0.999,
    warmup: int = 200,
    progress: bool = True,
    log=None,
):
    """Train the transformer and both text encoders jointly on the rectified-flow objective;
    returns the EMA of their weights (warmed up as diffusers' EMAModel: decay
    ``min(ema_decay, (1 + n) / (10 + n))``)."""
    torch.manual_seed(seed + 2)
    transformer = make_transformer()
    text_encoders = [make_text_encoder(tokenizer), make_text_encoder(tokenizer)]
    models = [transformer, *text_encoders]
    averaged = [copy.deepcopy(m) for m in models]
    for m in models:
        m.train()
    pairs = world.training_pairs()
    captions = sorted({c for _, c in pairs})
    row = {c: k for k, c in enumerate(captions)}
    # as StableDiffusion3Pipeline._get_clip_prompt_embeds tokenizes (the same call as the UNet's)
    ids = tokenize(tokenizer, captions)
    empty = tokenize(tokenizer, [""])[0]
    pair_image = torch.tensor([i for i, _ in pairs])
    pair_caption = torch.tensor([row[c] for _, c in pairs])
    rng = np.random.default_rng(seed + 3)
    params = [p for m in models for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(warmup, steps))
    bar = tqdm(range(steps), desc="transformer+text", disable=not progress)
    ema = None
    t0 = time.perf_counter()
    for step in bar:
        b = torch.from_numpy(rng.choice(len(pairs), size=batch))
        x0 = latents[pair_image[b]]
        tok = ids[pair_caption[b]].clone()
        tok[torch.from_numpy(rng.random(batch) < caption_dropout)] = empty
        # logit-normal(0, 1) sigma, as SD3
        sigma = torch.sigmoid(torch.from_numpy(rng.standard_normal(batch)).float())
        noise = torch.randn_like(x0)
        s = sigma.view(-1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        pe, pooled = encode(text_encoders, tok)
        pred = transformer(
            hidden_states=xt,
            timestep=sigma * 1000,
            encoder_hidden_states=pe,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        loss = F.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for avg, m in zip(averaged, models):
                for pa, pm in zip(avg.parameters(), m.parameters()):
                    pa.lerp_(pm, 1 - decay)
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{ema:.4f}")
        if log is not None and ((step + 1) % 50 == 0 or step + 1 == steps):
            log(f"step {step + 1}/{steps} loss {ema:.4f} {time.perf_counter() - t0:.0f}s")
    for m in averaged:
        m.eval()
    return averaged[0], averaged[1:]


def build_pipeline(vae, transformer, text_encoders, tokenizer):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**FLOW_SCHEDULER),
        vae=vae,
        text_encoder=text_encoders[0],
        tokenizer=tokenizer,
        text_encoder_2=text_encoders[1],
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )


def train_bundled_flow(
    out: str | Path,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    batch: int = 48,
    progress: bool = True,
    threads: int | None = None,
    vae_dir: str | Path | None = None,
    log_file: str | Path | None = None,
) -> dict[str, Any]:
    """Train the flow-matching transformer into ``out`` (model/ + recipe.json + MANIFEST)."""
    from memberbench.bundled import WEIGHTS_DIR, verify_manifest, write_manifest

    if steps < 1 or batch < 1:
        raise MemberbenchError(f"--unet-steps and --batch must be positive, got {steps}, {batch}")
    if threads:
        torch.set_num_threads(threads)
    if vae_dir is None:
        verify_manifest(WEIGHTS_DIR, subdir="model")  # the VAE reused must be the shipped one
        vae_dir = WEIGHTS_DIR / "model" / "vae"
    vae_dir = Path(vae_dir)
    if not (vae_dir / "config.json").is_file():
        raise MemberbenchError(f"{vae_dir} holds no VAE (no config.json)")
    out = Path(out)
    logf = open(log_file, "a") if log_file else None  # noqa: SIM115

    def log(line: str) -> None:
        if logf:
            logf.write(line + "\n")
            logf.flush()

    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    world = build_world(seed)
    from memberbench.bundled.train import build_tokenizer

    full = build_tokenizer(tmp / "_full_tokenizer")
    tokenizer = build_small_tokenizer(tmp / "_tokenizer_src", world_captions(world), full)
    vae = shipped_vae(vae_dir)
    images = images_to_tensor(np.stack([it.image for it in world.train]))
    with torch.no_grad():
        latents = torch.cat(
            [vae.encode(images[i : i + 256]).latent_dist.mode() for i in range(0, len(images), 256)]
        )
    timings["world_s"] = time.perf_counter() - t0
    log(f"world + latents {timings['world_s']:.0f}s; vocab {len(tokenizer)}")

    t0 = time.perf_counter()
    transformer, text_encoders = train_transformer(
        world, latents, tokenizer, steps, batch, seed, progress=progress, log=log
    )
    timings["transformer_s"] = time.perf_counter() - t0

    pipe = build_pipeline(vae, transformer, text_encoders, tokenizer)
    pipe.save_pretrained(tmp / "model", safe_serialization=True)
    for sub in ("tokenizer", "tokenizer_2"):
        d = tmp / "model" / sub
        for name in ("vocab.json", "merges.txt"):
            if not (d / name).exists():
                shutil.copy(tmp / "_tokenizer_src" / name, d / name)
    # the shipped VAE, byte for byte; its config gains shift_factor 0 (SD3's decode reads it)
    shutil.copy(
        vae_dir / "diffusion_pytorch_model.safetensors",
        tmp / "model" / "vae" / "diffusion_pytorch_model.safetensors",
    )
    cfg = json.loads((tmp / "model" / "vae" / "config.json").read_text())
    cfg["shift_factor"] = 0.0
    (tmp / "model" / "vae" / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    shutil.rmtree(tmp / "_tokenizer_src")
    shutil.rmtree(tmp / "_full_tokenizer")
    recipe = {
        "command": (
            f"memberbench train-bundled --family flow --out DIR --seed {seed} "
            f"--unet-steps {steps} --batch {batch}"
        ),
        "family": "flow",
        "seed": seed,
        "steps": steps,
        "batch": batch,
        "objective": "rectified flow: x_t = (1 - sigma) x0 + sigma eps, target eps - x0",
        "sigma_sampling": "logit-normal(0, 1)",
        "caption_dropout": 0.1,
        "ema_decay": 0.999,
        "lr": 5e-4,
        "transformer": TRANSFORMER,
        "scheduler": FLOW_SCHEDULER,
        "max_sequence_length": MAX_SEQUENCE_LENGTH,
        "tokens": TOKENS,
        "vae": "the bundled UNet model's VAE (model/vae), reused",
        "timings": timings,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2))
    write_manifest(tmp)
    if logf:
        logf.close()
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return recipe
