"""Page images kept out of memory: an undecoded `datasets.Image` cell (`{"bytes", "path"}`) written once to a
content-addressed file `<folder>/<sha256 of the bytes>.<format>`, so that no page stays decoded in memory, a page
shared by many rows is stored once, and a changed page never reuses a stale file. Used by the visual-document
training sources (`train.mixture.visdoc`) and the MMEB-V2 visual-document tasks (`eval.mmeb.visdoc`)."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "TIFF": ".tiff", "BMP": ".bmp", "GIF": ".gif"}


def page_file(image: dict, folder: Path, where: str) -> Path:
    """The content-addressed file of an undecoded `datasets.Image` cell, written (atomically) if absent.

    Raises:
        `ValueError`: the cell has no bytes (nor a readable `path`) or is not a readable image; names `where`.
    """
    data = image.get("bytes") if isinstance(image, dict) else None
    if data is None and isinstance(image, dict) and image.get("path") and Path(image["path"]).is_file():
        data = Path(image["path"]).read_bytes()
    if not data:
        raise ValueError(f"{where}: column 'image' has no image bytes ({str(image)[:80]})")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:  # reads the header only
            suffix = SUFFIXES.get(opened.format or "", ".img")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{where}: column 'image' is not a readable image ({error})") from error
    path = Path(folder) / f"{hashlib.sha256(data).hexdigest()}{suffix}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.part")
        partial.write_bytes(data)
        os.replace(partial, path)
    return path
