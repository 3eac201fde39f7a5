"""The bundled memorizing model: where it lives, and its integrity manifest.

The shipped files live in ``memberbench/bundled/weights/``:

* ``model/``  a plain ``StableDiffusionPipeline`` directory (loads with
  ``StableDiffusionPipeline.from_pretrained(path)``);
* ``clip/``   the tiny open_clip utility scorer (config + weights);
* ``recipe.json`` the training recipe and its wall times;
* ``MANIFEST.sha256`` sha256 of every file above, checked on every load;
* ``flow/``   the second bundled model (a flow-matching transformer, ``--model bundled-flow``):
  its own ``model/`` (a ``StableDiffusion3Pipeline`` directory), ``recipe.json`` and
  ``MANIFEST.sha256``, a bundle of its own (see :func:`verify_manifest`).
"""

from __future__ import annotations

from pathlib import Path

from memberbench.io import atomic_write_text
from memberbench.io import file_sha256 as _file_sha256
from memberbench.types import MemberbenchError

WEIGHTS_DIR = Path(__file__).parent / "weights"
FLOW_SUBDIR = "flow"  # the flow-matching transformer's bundle, under WEIGHTS_DIR
MANIFEST = "MANIFEST.sha256"


def file_sha256(path: Path) -> str:
    return _file_sha256(path)


def _files(root: Path) -> list[Path]:
    """The files of the bundle at ``root``: a folder below it that holds a manifest of its own is
    another bundle (the flow model's ``flow/`` under the UNet model's weights) and is left out."""
    nested = [p.parent for p in root.rglob(MANIFEST) if p.parent != root]
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.name != MANIFEST
        and "__pycache__" not in p.parts
        and not any(n in p.parents for n in nested)
    )


def write_manifest(root: str | Path) -> Path:
    root = Path(root)
    lines = [f"{file_sha256(p)}  {p.relative_to(root).as_posix()}" for p in _files(root)]
    out = root / MANIFEST
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out


def verify_manifest(root: str | Path = WEIGHTS_DIR, subdir: str | None = None) -> str:
    """Check every file listed in the manifest (optionally only those under ``subdir``).

    Returns the manifest's own sha256 (a fingerprint of the whole bundle).  Raises
    MemberbenchError naming the first missing, extra or altered file.
    """
    root = Path(root)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise MemberbenchError(
            f"bundled model manifest {manifest} is missing: the package installation is "
            "incomplete. Reinstall memberbench (pip install --force-reinstall .) or rebuild the "
            "weights with `memberbench train-bundled --out <dir>`."
        )
    expected: dict[str, str] = {}
    for line in manifest.read_text().splitlines():
        if line.strip():
            digest, _, rel = line.partition("  ")
            expected[rel] = digest
    for rel, digest in expected.items():
        if subdir and not rel.startswith(subdir.rstrip("/") + "/"):
            continue
        path = root / rel
        if not path.is_file():
            raise MemberbenchError(f"bundled model file {path} is missing (listed in {manifest})")
        if file_sha256(path) != digest:
            raise MemberbenchError(
                f"bundled model file {path} is corrupted or was modified: its sha256 does not "
                f"match {manifest}. Reinstall memberbench or rebuild with `memberbench train-bundled`."
            )
    for p in _files(root):
        rel = p.relative_to(root).as_posix()
        if (not subdir or rel.startswith(subdir.rstrip("/") + "/")) and rel not in expected:
            raise MemberbenchError(
                f"unexpected file {p} in the bundled model (not in {manifest}); remove it"
            )
    return file_sha256(manifest)
