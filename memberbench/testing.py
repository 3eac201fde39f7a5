"""Helpers for tests: tiny, seeded, randomly initialised Stable Diffusion pipelines on disk.

They have the bundled model's architecture and schedule (so every code path is the real one) but
random weights, and build in about a second, with no network.
"""

from __future__ import annotations

from pathlib import Path

import torch


def make_tiny_pipeline_dir(path: str | Path, seed: int = 0) -> Path:
    """Write a randomly initialised StableDiffusionPipeline directory to ``path``; return it."""
    from memberbench.bundled.train import (
        build_tokenizer,
        make_text_encoder,
        make_unet,
        make_vae,
        save_pipeline,
    )

    path = Path(path)
    tok_src = _tokenizer_dir(build_tokenizer)
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tok_src)
    torch.manual_seed(seed)
    vae, unet, text_encoder = make_vae(), make_unet(), make_text_encoder()
    for m in (vae, unet, text_encoder):
        m.eval()
    save_pipeline(path, vae, unet, text_encoder, tokenizer, tok_src)
    return path


def _tokenizer_dir(build) -> Path:
    """A folder holding SD 1.x's CLIP tokenizer files: the bundled model's own when shipped,
    else built once from open_clip's vocabulary into the user cache (building takes ~1 min)."""
    import os

    from memberbench.bundled import WEIGHTS_DIR

    shipped = WEIGHTS_DIR / "model" / "tokenizer"
    if (shipped / "vocab.json").is_file():
        return shipped
    cache = Path(os.environ.get("MEMBERBENCH_CACHE", Path.home() / ".cache" / "memberbench"))
    out = cache / "clip-tokenizer"
    if not (out / "tokenizer.json").is_file():
        tmp = cache / f"clip-tokenizer.tmp{os.getpid()}"
        tok = build(tmp)
        tok.save_pretrained(tmp)
        tmp.replace(out) if not out.exists() else None
    return out


def clip_tokenizer() -> object:
    """SD 1.x's CLIP tokenizer (the bundled model's files; no network)."""
    from transformers import CLIPTokenizer

    from memberbench.bundled.train import build_tokenizer

    return CLIPTokenizer.from_pretrained(_tokenizer_dir(build_tokenizer))


def make_tiny_sdxl_pipeline(seed: int = 0, sample_size: int = 16) -> object:
    """A randomly initialised StableDiffusionXLPipeline built from config the way diffusers'
    own SDXL pipeline tests build theirs (two CLIP text encoders of width 32, the second with a
    projection, a 2-level text_time UNet), with the bundled CLIP tokenizer for both tokenizers
    (vocabulary 49408, so the encoders take its ids).  Images are ``8 * sample_size`` px."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + the 32 pooled features
        cross_attention_dim=64,
        norm_num_groups=1,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 32, 32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        sample_size=8 * sample_size,
        norm_num_groups=32,
    )
    tok = clip_tokenizer()
    cfg = CLIPTextConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=len(tok),
        hidden_act="gelu",
        projection_dim=32,
        max_position_embeddings=tok.model_max_length,
    )
    torch.manual_seed(seed)
    te1 = CLIPTextModel(cfg)
    torch.manual_seed(seed + 1)
    te2 = CLIPTextModelWithProjection(cfg)
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tok,
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    for m in (unet, vae, te1, te2):
        m.eval()
    return pipe


T5_TRAINING_TEXT = (
    "a red circle",
    "a blue square on green",
    "zorblat quennix",
    "the quick brown fox jumps over the lazy dog",
    "a photo of a cat sitting on a wooden table",
)


def make_t5_tokenizer(vocab_size: int = 120) -> object:
    """A tiny T5 tokenizer built locally (no network): a unigram sentencepiece-style model
    trained with the ``tokenizers`` library on :data:`T5_TRAINING_TEXT`, with T5's special tokens
    (``<pad>`` = 0, ``</s>`` = 1 appended to every sequence, ``<unk>`` = 2) and Metaspace
    pre-tokenization, wrapped in transformers' ``T5TokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tok.train_from_iterator(list(T5_TRAINING_TEXT) * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0
    )


def make_tiny_pixart_pipeline(kind: str = "alpha", seed: int = 0, sample_size: int = 8) -> object:
    """A randomly initialised PixArtAlphaPipeline (``kind="alpha"``) or PixArtSigmaPipeline
    (``"sigma"``) built from config the way diffusers' PixArt pipeline tests build theirs
    (a 2-layer PixArtTransformer2DModel with learned sigma, i.e. 2x output channels, and a
    tiny T5 encoder), with the locally built T5 tokenizer.  Latents 4 x sample_size^2, images
    2 x sample_size px (sample_size 128 switches PixArt-alpha's micro-conditions on)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        PixArtAlphaPipeline,
        PixArtSigmaPipeline,
        PixArtTransformer2DModel,
    )
    from transformers import T5Config, T5EncoderModel

    tok = make_t5_tokenizer()
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=sample_size,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 32],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        sample_size=2 * sample_size,
    )
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tok),
            d_model=32,
            d_ff=37,
            d_kv=8,
            num_heads=4,
            num_layers=2,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            decoder_start_token_id=tok.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=False
    )
    cls = {"alpha": PixArtAlphaPipeline, "sigma": PixArtSigmaPipeline}[kind]
    pipe = cls(
        tokenizer=tok,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )
    for m in (transformer, vae, text_encoder):
        m.eval()
    return pipe
