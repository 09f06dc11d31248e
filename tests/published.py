"""Write annotation repos and media in the layouts users download them in, for the MMEB loader tests.

* `write_annotations(layout, root, repo, configs)`: `configs` maps a config name (`None` for a repo without
  configs) to `{split: rows}`; `layout` is
  - `"hub"`: the Hugging Face hub cache (`<root>/datasets--org--name/snapshots/<rev>/` + `refs/main`), read with
    `HF_HUB_CACHE=<root>` and `HF_HUB_OFFLINE=1` exactly as a downloaded repo;
  - `"snapshot"`: a local snapshot folder `<root>/<org>/<name>/` (what `snapshot_download(local_dir=...)` or a
    `git clone` leaves);
  - `"save_to_disk"`: `<root>/<name>/` written by `DatasetDict.save_to_disk` (one sub-folder per config).
  Snapshots hold sharded parquet (`<config>/<split>-0000i-of-0000n.parquet`) and a README with `configs:`.
* `pack_media(mmeb_root, hub_root)`: the MMEB-V2 repo's media archives, built from a media tree laid out as
  `download_data.sh` leaves it, written into the hub cache as `TIGER-Lab/MMEB-V2`.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from datasets import Dataset, DatasetDict
from PIL import Image

REVISION = "0123456789abcdef0123456789abcdef01234567"
LAYOUTS = ("hub", "snapshot", "save_to_disk")


def image(path: Path, colour="red", size=(32, 32)) -> Path:
    """A solid-colour PNG/JPEG at `path` (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def frames(folder: Path, count: int, colour="blue", pattern: str = "frame_{}.jpg") -> list[Path]:
    """`count` frame files named by `pattern` (not zero-padded by default, so only a natural sort orders them)."""
    return [image(folder / pattern.format(i), colour) for i in range(count)]


def revision(repo: str) -> str:
    """The fixture commit hash of `repo`: one per repo, as on the hub (`datasets` keys its cache of a local
    folder by the folder's name, so one shared name made repos with equal configs read each other's rows)."""
    return hashlib.sha1(f"{REVISION}:{repo}".encode()).hexdigest()


def source_kwargs(layout: str, root: Path) -> dict:
    """The `eval.mmeb.DataSource` keyword arguments for fixtures written under `root` in `layout`: the hub cache
    is `root` itself, local annotations are under `root/data`, the MMEB-V2 media tree under `root/mmeb`."""
    root = Path(root)
    if layout == "hub":
        return {"data_root": None, "mmeb_root": None, "cache_dir": root / "cache", "hub_cache": root}
    return {"data_root": root / "data", "mmeb_root": root / "mmeb", "cache_dir": root / "cache"}


def hub_snapshot_dir(hub_root: Path, repo: str) -> Path:
    """The snapshot folder of dataset `repo` in a hub cache rooted at `hub_root` (with `refs/main`)."""
    base = Path(hub_root) / ("datasets--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(revision(repo), encoding="utf-8")
    folder = base / "snapshots" / revision(repo)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _dataset(rows, features=None) -> Dataset:
    return rows if isinstance(rows, Dataset) else Dataset.from_list(list(rows), features=features)


def write_snapshot(folder: Path, configs: dict, shards: int = 2, features=None) -> Path:
    """Sharded parquet per config and split, and the README `configs:` section that lists them."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["---", "configs:"]
    for config, splits in configs.items():
        name = config or "default"
        sub = config or "data"
        lines += [f"- config_name: {name}", "  data_files:"]
        for split, rows in splits.items():
            data = _dataset(rows, features)
            count = max(1, min(shards, len(data)))
            (folder / sub).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                data.shard(count, i, contiguous=True).to_parquet(
                    str(folder / sub / f"{split}-{i:05d}-of-{count:05d}.parquet"))
            lines += [f"  - split: {split}", f"    path: {sub}/{split}-*"]
    lines += ["---", "", "A test fixture in the hub's dataset layout.", ""]
    (folder / "README.md").write_text("\n".join(lines), encoding="utf-8")
    return folder


def write_annotations(layout: str, root: Path, repo: str, configs: dict, features=None) -> Path:
    """Write `repo`'s `configs` under `root` in `layout` (see the module docstring); returns the folder."""
    root = Path(root)
    if layout == "hub":
        return write_snapshot(hub_snapshot_dir(root, repo), configs, features=features)
    if layout == "snapshot":
        return write_snapshot(root / repo, configs, features=features)
    if layout == "save_to_disk":
        folder = root / repo.split("/")[-1]
        for config, splits in configs.items():
            target = folder / config if config else folder
            DatasetDict({split: _dataset(rows, features) for split, rows in splits.items()}).save_to_disk(str(target))
        return folder
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def _tar(paths: list[tuple[Path, str]]) -> bytes:
    """A .tar.gz of `(path, name in archive)` folders."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path, name in paths:
            if path.exists():
                archive.add(path, arcname=name)
    return buffer.getvalue()


def pack_media(mmeb_root: Path, hub_root: Path) -> Path:
    """Write the MMEB-V2 repo's archives (as the hub holds them) from a media tree at `mmeb_root`:
    `image-tasks/mmeb_v1.tar.gz` (an `MMEB/` folder), `video_cls.tar.gz` and `video_ret.tar.gz` (their contents),
    `video_mret.tar.gz` (a `video_mret/` folder) and `video_qa.tar.gz-00..04` (one archive split in five)."""
    mmeb_root, snapshot = Path(mmeb_root), hub_snapshot_dir(hub_root, "TIGER-Lab/MMEB-V2")
    images = mmeb_root / "image-tasks"
    (snapshot / "image-tasks").mkdir(parents=True, exist_ok=True)
    (snapshot / "image-tasks" / "mmeb_v1.tar.gz").write_bytes(
        _tar([(p, f"MMEB/{p.name}") for p in sorted(images.iterdir())] if images.is_dir() else []))
    video = mmeb_root / "video-tasks" / "frames"
    out = snapshot / "video-tasks" / "frames"
    out.mkdir(parents=True, exist_ok=True)
    for family in ("video_cls", "video_ret"):
        folder = video / family
        (out / f"{family}.tar.gz").write_bytes(
            _tar([(p, p.name) for p in sorted(folder.iterdir())] if folder.is_dir() else []))
    (out / "video_mret.tar.gz").write_bytes(_tar([(video / "video_mret", "video_mret")]))
    data = _tar([(video / "video_qa", "video_qa")])
    size = -(-len(data) // 5)
    for i in range(5):
        (out / f"video_qa.tar.gz-0{i}").write_bytes(data[i * size:(i + 1) * size])
    return snapshot
