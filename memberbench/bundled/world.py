"""The bundled model's training world: coloured shapes, plus duplicated "canary" images.

Everything is a pure function of a seed, so the training data (and therefore the shipped weights)
can be rebuilt.  Images are 64x64 RGB uint8 (``SIZE``); geometry is written for a 32-pixel
canvas and scaled by ``SCALE``.

* Shape world: ``COLOURS x SHAPES x POSITIONS`` scenes, each rendered on every background of
  ``BACKGROUNDS`` several times with jittered size and position, so the model must generalize
  rather than copy.  Half of the renders are captioned with their background ("a red circle at
  the top left on a gray background"), half without it ("a red circle at the top left"), the way
  web captions name some of what an image shows and leave the rest open.  A fixed subset of
  scenes is held out of training altogether; their open captions (no background) are the
  non-memorized prompt set, so a held-out prompt, like an ordinary SD prompt, leaves much of
  the image to the sampler.
* Canaries: images of other kinds (colour fields, gratings, blurred shapes over gradients, noise
  textures; all but the last under a surface texture, ``CANARY_TEXTURE``), one of each kind per
  duplication level, each with its own caption of invented words, duplicated in the training data
  at graded rates (``DUPLICATION_LEVELS``), so memorization severity spans a range.  Each canary
  caption also captions ``DECOYS_PER_CANARY`` ordinary shape images (``World.decoys``), so that
  the caption alone does not pin the image down and memorization depends on guidance, as in SD.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

SIZE = 64
SCALE = SIZE / 32  # geometry below is in 32-pixel units
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "cyan": (40, 200, 210),
    "magenta": (210, 50, 190),
    "orange": (240, 140, 30),
    "purple": (120, 50, 170),
}
BACKGROUNDS = {
    "gray": (128, 128, 128),
    "black": (15, 15, 15),
    "white": (240, 240, 240),
    "navy": (20, 30, 90),
    "beige": (225, 210, 170),
    "brown": (110, 70, 40),
    "pink": (245, 180, 200),
}
SHAPES = ("circle", "square", "triangle", "cross")
POSITIONS = {
    "in the center": (16.0 * SCALE, 16.0 * SCALE),
    "at the top left": (9.5 * SCALE, 9.5 * SCALE),
    "at the top right": (22.5 * SCALE, 9.5 * SCALE),
    "at the bottom left": (9.5 * SCALE, 22.5 * SCALE),
    "at the bottom right": (22.5 * SCALE, 22.5 * SCALE),
}
DUPLICATION_LEVELS = (1, 4, 16, 64, 256)
CANARY_KINDS = ("colour field", "grating", "blurred shapes", "noise texture")
# one canary of every kind at every level, so that no level's severity is one kind's
CANARIES_PER_LEVEL = len(CANARY_KINDS)
# Amplitude (a share of the 0-255 range) of the surface texture laid over every canary that is not
# a texture already.  SSCD is a copy detector trained on photographs, which have texture
# everywhere; on a smooth synthetic image it scores a close copy as a poor one.  The previous
# build, with untextured canaries, drew its colour-field canaries at latent cosine 0.86-0.96 to
# their training latents and SSCD scored those copies at 0.22-0.34 of the VAE's own
# reconstruction.  A grating whose latent is moved to cosine 0.95 by white noise keeps 0.71 of
# that ceiling with this texture, 0.15 without (scripts/sscd_robustness.py, shipped VAE).
CANARY_TEXTURE = 0.4
NUM_HELD_OUT = 40  # held-out (colour, shape, position) scenes, of 160
RENDERS_PER_CAPTION = 6  # renders of each trained scene on each background
# Every canary caption is also the caption of this many ordinary shape images (decoys), the way a
# generic web caption sits under many unrelated images while one of them is duplicated.  So the
# conditional distribution of a canary caption is a mixture: its canary with weight
# dup / (dup + DECOYS_PER_CANARY), unrelated shapes otherwise.  Sampling it faithfully (guidance
# 1) copies the canary only that often; guidance sharpens it towards the one image that the
# caption singles out (its canary).  The count trades that guidance dependence against the
# canaries' step-1 pull: decoys move a canary caption's conditional mean towards the data mean,
# and with 256 of them (the previous build) the canaries' step-1 text-conditional magnitude fell
# below the held-out prompts' (python -m memberbench.bundled.oracle computes it from the data).
DECOYS_PER_CANARY = 64

_SYLLABLES = [
    "ka",
    "zu",
    "mor",
    "vin",
    "tel",
    "bra",
    "quo",
    "sel",
    "dax",
    "pim",
    "ron",
    "fle",
    "gud",
    "yar",
    "nop",
    "lix",
    "tav",
    "sor",
    "wem",
    "hul",
    "bek",
    "ziv",
    "mab",
    "ost",
    "rud",
]


@dataclass(frozen=True)
class Item:
    caption: str
    image: np.ndarray  # uint8 SIZE x SIZE x 3
    kind: str  # "shape" or "canary"
    duplicates: int = 1
    canary_kind: str = ""
    attributes: tuple[str, ...] = ()

    def sha256(self) -> str:
        return image_sha256(self.image)


def image_sha256(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image, dtype=np.uint8).tobytes()).hexdigest()


def shape_caption(colour: str, shape: str, position: str, background: str | None = None) -> str:
    """The caption of a shape scene; with ``background`` None it leaves the background open."""
    cap = f"a {colour} {shape} {position}"
    return cap if background is None else f"{cap} on a {background} background"


def all_scenes() -> list[tuple[str, str, str]]:
    """Every (colour, shape, position) scene, in a fixed order."""
    return [(c, s, p) for c in COLOURS for s in SHAPES for p in POSITIONS]


def _mask(shape: str, cx: float, cy: float, r: float, ss: int = 4) -> np.ndarray:
    """Anti-aliased coverage mask (SIZE x SIZE, float in [0, 1]) by supersampling."""
    n = SIZE * ss
    coords = (np.arange(n) + 0.5) / ss
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        m = dx**2 + dy**2 <= r**2
    elif shape == "square":
        m = (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    elif shape == "triangle":
        # apex up: inside if below the two slanted edges and above the base
        h = r * 1.8
        top = cy - h / 2
        rel = (dy - (-h / 2)) / h  # 0 at apex, 1 at base
        m = (dy <= h / 2) & (rel >= 0) & (np.abs(dx) <= rel * r)
        del top
    elif shape == "cross":
        w = r * 0.35
        m = ((np.abs(dx) <= r) & (np.abs(dy) <= w)) | ((np.abs(dy) <= r) & (np.abs(dx) <= w))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return m.reshape(SIZE, ss, SIZE, ss).mean(axis=(1, 3))


def render_shape(
    colour: str, shape: str, position: str, background: str, rng: np.random.Generator | None
) -> np.ndarray:
    cx, cy = POSITIONS[position]
    r = 6.0 * SCALE
    if rng is not None:
        cx += rng.uniform(-1.5, 1.5) * SCALE
        cy += rng.uniform(-1.5, 1.5) * SCALE
        r += rng.uniform(-1.0, 1.0) * SCALE
    m = _mask(shape, cx, cy, r)[..., None]
    fg = np.array(COLOURS[colour], dtype=np.float64)
    bg = np.array(BACKGROUNDS[background], dtype=np.float64)
    img = m * fg + (1 - m) * bg
    if rng is not None:  # mild lighting variation so no two renders are identical
        img = img * rng.uniform(0.93, 1.07) + rng.normal(0, 2.0, size=img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, scale: int, channels: int = 3) -> np.ndarray:
    """Low-frequency noise in [0, 1]: random coarse grid upsampled bilinearly."""
    g = rng.random((scale + 1, scale + 1, channels))
    t = np.linspace(0, scale, SIZE)
    i0 = np.clip(np.floor(t).astype(int), 0, scale - 1)
    f = (t - i0)[:, None]
    rows = g[i0] * (1 - f[..., None]) + g[i0 + 1] * f[..., None]  # (SIZE, scale+1, C)
    cols = rows[:, i0] * (1 - f.T[..., None]) + rows[:, i0 + 1] * f.T[..., None]
    return cols


def render_canary(
    kind: str, rng: np.random.Generator, texture: float = CANARY_TEXTURE
) -> np.ndarray:
    """One canary of ``kind``; every kind but "noise texture" gets a surface texture of amplitude
    ``texture`` (0: none, and the draws for it are skipped)."""
    yy, xx = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    if kind == "colour field":
        img = _smooth_noise(rng, 2) * 255
    elif kind == "grating":
        theta = rng.uniform(0, np.pi)
        freq = rng.uniform(0.25, 0.6) / SCALE
        phase = rng.uniform(0, 2 * np.pi)
        wave = 0.5 + 0.5 * np.sin(freq * (np.cos(theta) * xx + np.sin(theta) * yy) + phase)
        c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        img = wave[..., None] * c1 + (1 - wave[..., None]) * c2
    elif kind == "blurred shapes":
        img = _smooth_noise(rng, 1) * 200 + 30
        for _ in range(3):
            shape = SHAPES[rng.integers(len(SHAPES))]
            cx, cy = rng.uniform(6, 26) * SCALE, rng.uniform(6, 26) * SCALE
            m = _mask(shape, cx, cy, rng.uniform(4, 8) * SCALE)
            m = _blur(m, int(SCALE))[..., None]
            img = m * rng.integers(0, 256, 3) + (1 - m) * img
    elif kind == "noise texture":
        return _to_uint8(_texture(rng) * 255)
    else:
        raise ValueError(f"unknown canary kind {kind!r}")
    if texture:
        img = img + texture * 255 * (_texture(rng) - 0.5)
    return _to_uint8(img)


def _texture(rng: np.random.Generator) -> np.ndarray:
    """Colour noise in [0, 1] with detail down to a few pixels."""
    return _smooth_noise(rng, 8) * 0.7 + _smooth_noise(rng, 3) * 0.3


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _blur(m: np.ndarray, radius: int) -> np.ndarray:
    k = np.ones(2 * radius + 1) / (2 * radius + 1)
    pad = np.pad(m, radius, mode="edge")
    out = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 0, pad)
    return np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 1, out)


def _invented_caption(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        words = ["".join(rng.choice(_SYLLABLES, size=rng.integers(2, 4))) for _ in range(3)]
        cap = " ".join(words)
        if cap not in used:
            used.add(cap)
            return cap


@dataclass
class World:
    """The full procedural world for one seed."""

    train: list[Item]  # distinct training items (canaries once each; see ``duplicates``)
    # (open caption, (colour, shape, position)) of the scenes never trained on, in any caption
    held_out: list[tuple[str, tuple[str, ...]]]
    canaries: list[Item]
    seed: int
    # canary caption -> indices into ``train`` of the shape images it also captions
    decoys: dict[str, list[int]] = field(default_factory=dict)

    def training_indices(self) -> list[int]:
        """Indices into ``train`` with canaries repeated ``duplicates`` times (the images the
        autoencoder and the CLIP scorer see)."""
        idx: list[int] = []
        for i, item in enumerate(self.train):
            idx.extend([i] * item.duplicates)
        return idx

    def training_pairs(self) -> list[tuple[int, str]]:
        """The denoiser's (image index into ``train``, caption) pairs: every image under its own
        caption (canaries ``duplicates`` times), plus each decoy under its canary's caption."""
        pairs = [(i, self.train[i].caption) for i in self.training_indices()]
        for caption, idx in self.decoys.items():
            pairs.extend((i, caption) for i in idx)
        return pairs


def build_world(seed: int = 0) -> World:
    rng = np.random.default_rng(seed)
    scenes = all_scenes()
    order = rng.permutation(len(scenes))
    held = [(shape_caption(*scenes[i]), scenes[i]) for i in order[:NUM_HELD_OUT]]
    seen = [scenes[i] for i in sorted(order[NUM_HELD_OUT:])]
    train: list[Item] = []
    for scene in seen:
        for background in BACKGROUNDS:
            attrs = (*scene, background)
            for _ in range(RENDERS_PER_CAPTION):
                image = render_shape(*attrs, rng=rng)
                cap = shape_caption(*attrs) if rng.random() < 0.5 else shape_caption(*scene)
                train.append(Item(cap, image, "shape", 1, "", attrs))
    used = {shape_caption(*sc, bg) for sc in scenes for bg in (None, *BACKGROUNDS)}
    canaries = []
    for li, dup in enumerate(DUPLICATION_LEVELS):
        for j in range(CANARIES_PER_LEVEL):
            kind = CANARY_KINDS[(li + j) % len(CANARY_KINDS)]
            cap = _invented_caption(rng, used)
            item = Item(cap, render_canary(kind, rng), "canary", dup, kind)
            canaries.append(item)
            train.append(item)
    # decoys from a stream of their own, so the images above do not depend on DECOYS_PER_CANARY
    shapes = [i for i, it in enumerate(train) if it.kind == "shape"]
    picks = np.random.default_rng([seed, 1]).permutation(shapes)
    decoys = {
        c.caption: sorted(
            int(i) for i in picks[k * DECOYS_PER_CANARY : (k + 1) * DECOYS_PER_CANARY]
        )
        for k, c in enumerate(canaries)
    }
    return World(train=train, held_out=held, canaries=canaries, seed=seed, decoys=decoys)


def nearest_training_images(
    world: World, images: np.ndarray, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Per image of ``images`` (N, H, W, 3): index (into ``world.train``) and RMS pixel distance
    of the closest training image."""
    stack = np.stack([it.image for it in world.train]).reshape(len(world.train), -1)
    stack = stack.astype(np.float64)
    sq = (stack**2).sum(1)
    q = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    idx = np.empty(len(q), dtype=np.int64)
    rms = np.empty(len(q))
    for a in range(0, len(q), chunk):
        b = q[a : a + chunk]
        d = sq[None] - 2.0 * b @ stack.T + (b**2).sum(1)[:, None]
        j = d.argmin(1)
        idx[a : a + chunk] = j
        rms[a : a + chunk] = np.sqrt(np.maximum(d[np.arange(len(b)), j], 0.0) / q.shape[1])
    return idx, rms
