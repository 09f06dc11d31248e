"""Video frames as the reference reads them: a folder of .jpg/.jpeg/.png files in natural order, `k` of them
picked at indices floor(i * (n - 1) / (k - 1)) (`np.linspace(0, n - 1, k, dtype=int)`), all of them when the
folder has fewer than `k` (no padding)."""

from __future__ import annotations

import re
from pathlib import Path

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> list:
    """Sort key comparing digit runs as integers and the rest lower-cased (`frame_2` before `frame_10`)."""
    return [int(part) if part.isdigit() else part.lower() for part in _DIGITS.split(name)]


def list_frames(folder: Path, where: str) -> list[Path]:
    """Every frame file of `folder`, in natural order; `FileNotFoundError` naming `where` when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{where}: video frame folder not found: {folder}")
    frames = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES),
                    key=lambda p: natural_key(p.name))
    if not frames:
        raise FileNotFoundError(f"{where}: video frame folder has no .jpg/.jpeg/.png frames: {folder}")
    return frames


def sample_indices(num_available: int, num_frames: int) -> list[int]:
    """The reference's frame indices: floor(i * (n - 1) / (k - 1)) for i < k; all n when n <= k."""
    if num_available <= num_frames:
        return list(range(num_available))
    if num_frames == 1:
        return [0]
    return [i * (num_available - 1) // (num_frames - 1) for i in range(num_frames)]


def sample_frames(folder: Path, num_frames: int | None, where: str) -> list[Path]:
    """`num_frames` frames of `folder` picked as the reference picks them; every frame when `num_frames` is
    `None` (MomentSeeker) or the folder has fewer."""
    frames = list_frames(folder, where)
    if num_frames is None:
        return frames
    return [frames[i] for i in sample_indices(len(frames), num_frames)]
