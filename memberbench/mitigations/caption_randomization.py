"""``caption-randomization``: random token / number addition to the caption (Somepalli et al. 2023).

Somepalli, Singla, Goldblum, Geiping & Goldstein, "Understanding and Mitigating Copying in
Diffusion Models", NeurIPS 2023 (arXiv 2305.20086).  Copying is tied to the exact caption
(duplicated image-caption pairs); perturbing the caption at inference time breaks the trigger.
Their inference-time variants include *random token addition* and *random number addition*; the
modes follow the implementation in Wen et al.'s code (``prompt_augmentation``: ``rand_word_add``
inserts ``tokenizer.decode([randint(49400)])``, ``rand_numb_add`` inserts ``randint(100000)``,
``rand_word_repeat`` repeats a word of the caption, each at a random word boundary).

Random tokens are drawn from CLIP's BPE vocabulary (the tokenizer of SD 1.x / 2.x and of the
bundled model), read from open_clip's shipped vocabulary file, so the perturbed captions do not
depend on the model being tested.

Reproducible and paired: the perturbation of a request is a pure function of (``seed`` parameter,
request seed, caption), so the same request gets the same perturbed caption in every run, model
and process.  The transformed request keeps its ``prompt_id`` (set to the original caption when it
had none) so metrics pair it back to the original caption and its training image; CLIP score
should be taken against the original caption.  No extra UNet evaluations.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np

from memberbench.mitigations.base import Mitigation, Param
from memberbench.types import GenerationRequest, MemberbenchError, stable_hash

VOCAB_DRAW = 49400  # ids drawn in the reference code: np.random.randint(49400)
NUMBER_MAX = 100000  # numbers drawn in the reference code: np.random.choice(100000)


def _bytes_to_unicode() -> dict[int, str]:
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
    return dict(zip(bs, (chr(c) for c in cs)))


@functools.lru_cache(maxsize=1)
def clip_vocabulary() -> tuple[str, ...]:
    """CLIP's 49408 BPE tokens as text (``</w>`` -> a trailing space), in id order."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise MemberbenchError(
            "caption-randomization mode=token needs open_clip's BPE vocabulary "
            "(pip install open_clip_torch); use mode=number otherwise"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(path) as f:
        merges = f.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    decoder = {c: b for b, c in _bytes_to_unicode().items()}
    out = []
    for tok in vocab:
        raw = bytearray(decoder[c] for c in tok.replace("</w>", "") if c in decoder)
        text = raw.decode("utf-8", errors="replace")
        out.append(text + (" " if tok.endswith("</w>") else ""))
    return tuple(out)


def _insert(words: list[str], word: str, rng: np.random.Generator) -> list[str]:
    k = int(rng.integers(0, len(words) + 1))
    return words[:k] + [word] + words[k:]


def randomize_caption(caption: str, mode: str, count: int, rng: np.random.Generator) -> str:
    """Insert ``count`` random tokens / numbers / repeated words at random word boundaries."""
    words = caption.split(" ")
    for _ in range(count):
        if mode == "number":
            word = str(int(rng.integers(0, NUMBER_MAX)))
        elif mode == "token":
            word = clip_vocabulary()[int(rng.integers(0, VOCAB_DRAW))].strip()
        elif mode == "repeat":
            cands = [w for w in caption.split(" ") if w] or [""]
            word = cands[int(rng.integers(0, len(cands)))]
        else:  # pragma: no cover - Param choices guard this
            raise MemberbenchError(f"unknown caption-randomization mode {mode!r}")
        words = _insert(words, word, rng)
    return " ".join(words)


class CaptionRandomization(Mitigation):
    """Insert random vocabulary tokens (``mode=token``), random numbers (``mode=number``) or
    repeated caption words (``mode=repeat``) into each caption, seeded per request."""

    name = "caption-randomization"
    families = frozenset({"sd", "sdxl", "pixart", "sd3"})  # changes only the caption text
    citation = (
        "Somepalli, Singla, Goldblum, Geiping & Goldstein, 'Understanding and Mitigating Copying "
        "in Diffusion Models', NeurIPS 2023 (arXiv 2305.20086)"
    )
    params = {
        "mode": Param(str, "token", "what to insert", choices=("token", "number", "repeat")),
        "count": Param(int, 4, "how many insertions per caption", 1, 32),
        "seed": Param(int, 0, "salt of the per-request random draws", 0, 2**31 - 1),
    }

    def perturb(self, request: GenerationRequest) -> str:
        c = self.config
        key = stable_hash([c["seed"], request.seed, request.prompt, c["mode"]], n=16)
        rng = np.random.default_rng(int(key, 16))
        return randomize_caption(request.prompt, c["mode"], c["count"], rng)

    def transform_requests(self, requests: list[GenerationRequest]) -> list[GenerationRequest]:
        out = []
        for r in requests:
            pid = r.prompt_id if r.prompt_id is not None else r.prompt
            out.append(replace(r, prompt=self.perturb(r), prompt_id=pid))
        return out
