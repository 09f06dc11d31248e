"""Where MMEB annotations and media come from: the hub, a local MMEB-V2 clone, or local dataset folders.

Annotations (`table`) are read the way the reference evaluator reads them, every shard of a config and split:
* with `data_root`: a local folder per annotation repo, found as `<data_root>/<org>/<name>`, `<data_root>/<name>`
  or `<data_root>/<task name>`: a hub snapshot (README `configs:`, sharded parquet/json files), read with
  `datasets.load_dataset(folder, config, split=...)`, or a `save_to_disk` folder (`Dataset` or `DatasetDict`,
  optionally one sub-folder per config), read with `datasets.load_from_disk`; or a single file
  `<data_root>/<task name>.jsonl|.json|.parquet` (the synthetic benchmark writes these);
* without: the hub repo's files for that config through `huggingface_hub.snapshot_download` (the hub cache, so
  offline once downloaded), then the same `load_dataset(folder, config, split=...)`.

Media (`media_dir`) live under the reference's data base directory, the clone of the `TIGER-Lab/MMEB-V2`
dataset repo as `download_data.sh` leaves it (`mmeb_root`), e.g. `image-tasks/` or
`video-tasks/frames/video_ret/MSR-VTT/`. Without `mmeb_root`, only the archives a task needs are fetched from
that repo and unpacked once into `cache_dir`, exactly as the download script unpacks them. MMEB-V1 images
(`mmeb_v1_images`) are the same tree: the clone's `image-tasks/`, or `TIGER-Lab/MMEB-eval`'s `images.zip`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from train.tables import DataSourceError, file_table, folder_table, hub_table, local_candidates

logger = logging.getLogger(__name__)

MEDIA_REPO = "TIGER-Lab/MMEB-V2"
V1_REPO, V1_IMAGES = "TIGER-Lab/MMEB-eval", "images.zip"  # MMEB-V1's images (`unzip images.zip -d <image_dir>`)
DEFAULT_CACHE = Path(os.environ.get("TTE_CACHE", "~/.cache/think-then-embed")).expanduser() / "mmeb"
# media folder prefix -> (archive files in MEDIA_REPO, folder they are unpacked into, folders moved up after)
ARCHIVES = {
    "image-tasks": (["image-tasks/mmeb_v1.tar.gz"], "image-tasks", "MMEB"),
    "video-tasks/frames/video_cls": (["video-tasks/frames/video_cls.tar.gz"], "video-tasks/frames/video_cls", None),
    "video-tasks/frames/video_ret": (["video-tasks/frames/video_ret.tar.gz"], "video-tasks/frames/video_ret", None),
    "video-tasks/frames/video_mret": (["video-tasks/frames/video_mret.tar.gz"], "video-tasks/frames", None),
    "video-tasks/frames/video_qa": ([f"video-tasks/frames/video_qa.tar.gz-0{i}" for i in range(5)],
                                    "video-tasks/frames", None),
}


@dataclass
class DataSource:
    r"""Where a run reads MMEB tasks from.

    Args:
        data_root (`str` or `os.PathLike`, *optional*): local annotation folders (see the module docstring);
            `None` reads annotations from the hub (or its cache).
        mmeb_root (`str` or `os.PathLike`, *optional*): the MMEB-V2 clone (`data_basedir` of the reference);
            `None` fetches the needed media archives from the hub into `cache_dir`.
        cache_dir (`str` or `os.PathLike`, *optional*): where hub media archives are unpacked and visual-document
            pages are written; defaults to `$TTE_CACHE/mmeb` (`~/.cache/think-then-embed/mmeb`).
        hub_cache (`str` or `os.PathLike`, *optional*): the Hugging Face hub cache to download into and read from;
            defaults to huggingface_hub's (`HF_HUB_CACHE`).
    """

    data_root: Path | None = None
    mmeb_root: Path | None = None
    cache_dir: Path | None = None
    hub_cache: Path | None = None

    def __post_init__(self):
        self.data_root = Path(self.data_root).expanduser() if self.data_root is not None else None
        self.mmeb_root = Path(self.mmeb_root).expanduser() if self.mmeb_root is not None else None
        self.cache_dir = Path(self.cache_dir).expanduser() if self.cache_dir is not None else DEFAULT_CACHE
        self.hub_cache = Path(self.hub_cache).expanduser() if self.hub_cache is not None else None

    @property
    def datasets_cache(self) -> str:
        """The `datasets` cache of the tables read (Arrow files `load_dataset` writes), under `cache_dir`."""
        return str(self.cache_dir / "datasets")

    @property
    def mode(self) -> str:
        """`"local"` (annotations from `data_root`) or `"hub"`."""
        return "local" if self.data_root is not None else "hub"

    # ------------------------------------------------------------------ annotations
    def table(self, task: str, repo: str | None, config: str | None, split: str):
        """Every row of `repo`/`config`/`split` for `task`, as a `datasets.Dataset`."""
        if self.data_root is None:
            return self._hub_table(task, repo, config, split)
        tried = []
        for path in local_candidates(self.data_root, task, repo):
            tried.append(path)
            if path.is_file():
                return file_table(path, task, self.datasets_cache)
            if path.is_dir():
                return folder_table(path, task, config, split, self.datasets_cache)
        raise DataSourceError(f"task {task}: no annotations for {repo} (config {config}, split {split}) under "
                              f"{self.data_root}; looked for {', '.join(str(p) for p in tried)}")

    def _hub_table(self, task: str, repo: str, config: str | None, split: str):
        return hub_table(repo, task, config, split, self.hub_cache, self.datasets_cache)

    # ------------------------------------------------------------------ media
    def media_dir(self, task: str, relative: str) -> Path:
        """The folder `relative` (e.g. `"image-tasks"`, `"video-tasks/frames/video_ret/MSR-VTT"`) of the MMEB-V2
        data tree: under `mmeb_root`, or fetched from the hub and unpacked into `cache_dir`."""
        relative = relative.strip("/")
        if self.mmeb_root is not None:
            return self.mmeb_root / relative if relative else self.mmeb_root
        prefix = next((p for p in ARCHIVES if relative == p or relative.startswith(p + "/")), None)
        if prefix is None:
            raise DataSourceError(f"task {task}: media folder {relative!r} is not in an MMEB-V2 archive; pass "
                                  f"--mmeb_root")
        root = self.cache_dir / "MMEB-V2"
        _fetch_archives(task, prefix, root, self.hub_cache)
        return root / relative

    def mmeb_v1_images(self, task: str) -> Path:
        """The MMEB-V1 image folder (the V1 evaluator's `--image_dir`): the MMEB-V2 clone's `image-tasks/` (the same
        tree) with `mmeb_root`, else `images.zip` of `TIGER-Lab/MMEB-eval` fetched and unzipped once into
        `cache_dir/MMEB-eval`."""
        if self.mmeb_root is not None:
            return self.media_dir(task, "image-tasks")
        root = self.cache_dir / "MMEB-eval"
        if not (root / ".unpacked").is_file():
            _fetch_zip(task, V1_REPO, V1_IMAGES, root, self.hub_cache)
        return root


def _fetch_archives(task: str, prefix: str, root: Path, hub_cache: Path | None) -> None:
    """Download (allow_patterns) and unpack the archives holding `prefix` once, as download_data.sh does."""
    archives, target, move_up = ARCHIVES[prefix]
    marker = root / ".unpacked" / prefix.replace("/", "__")
    if marker.is_file():
        return
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(MEDIA_REPO, repo_type="dataset", allow_patterns=archives,
                                          cache_dir=hub_cache))
    except Exception as error:
        raise DataSourceError(f"task {task}: cannot get media archives {archives} of {MEDIA_REPO} from the hub or "
                              f"its cache ({type(error).__name__}: {error}); clone it and pass --mmeb_root") from error
    missing = [name for name in archives if not (snapshot / name).is_file()]
    if missing:
        raise DataSourceError(f"task {task}: {MEDIA_REPO} snapshot {snapshot} lacks {missing}")
    destination = root / target
    destination.mkdir(parents=True, exist_ok=True)
    logger.info("unpacking %s into %s", ", ".join(archives), destination)
    _unpack(task, [snapshot / name for name in archives], destination)
    if move_up and (destination / move_up).is_dir():
        for item in (destination / move_up).iterdir():
            shutil.move(str(item), destination / item.name)
        (destination / move_up).rmdir()
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("\n".join(archives) + "\n", encoding="utf-8")


def _fetch_zip(task: str, repo: str, name: str, destination: Path, hub_cache: Path | None) -> None:
    """Download `name` of dataset `repo` (or find it in the hub cache) and unzip it into `destination` once."""
    import zipfile

    from huggingface_hub import snapshot_download

    try:
        archive = Path(snapshot_download(repo, repo_type="dataset", allow_patterns=[name], cache_dir=hub_cache)) / name
    except Exception as error:
        raise DataSourceError(f"task {task}: cannot get {name} of {repo} from the hub or its cache "
                              f"({type(error).__name__}: {error}); pass --mmeb_root with an MMEB-V2 clone") from error
    if not archive.is_file():
        raise DataSourceError(f"task {task}: {repo} snapshot {archive.parent} lacks {name}")
    logger.info("unzipping %s into %s", archive, destination)
    try:
        with zipfile.ZipFile(archive) as handle:
            handle.extractall(destination)  # member names with '..' or a root are sanitised by zipfile
    except (zipfile.BadZipFile, OSError) as error:
        raise DataSourceError(f"task {task}: cannot unzip {archive} ({error})") from error
    (destination / ".unpacked").write_text(name + "\n", encoding="utf-8")


class _Concatenated:
    """A read-only file object over split archive parts (`video_qa.tar.gz-00` ... `-04`)."""

    def __init__(self, paths: list[Path]):
        self._files = [open(path, "rb") for path in paths]  # noqa: SIM115 (closed in close())

    def read(self, size: int = -1) -> bytes:
        out = b""
        while self._files and (size < 0 or len(out) < size):
            chunk = self._files[0].read(-1 if size < 0 else size - len(out))
            if not chunk:
                self._files.pop(0).close()
                continue
            out += chunk
        return out

    def close(self) -> None:
        for handle in self._files:
            handle.close()


def _unpack(task: str, parts: list[Path], destination: Path) -> None:
    stream = _Concatenated(parts)
    try:
        with tarfile.open(fileobj=stream, mode="r|gz") as archive:
            archive.extractall(destination, filter="data")
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataSourceError(f"task {task}: cannot unpack {[str(p) for p in parts]} ({error})") from error
    finally:
        stream.close()
