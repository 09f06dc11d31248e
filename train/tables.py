"""Reading dataset tables in the layouts users download them in, shared by training (`train.mixture`) and the MMEB
evaluation (`eval.mmeb.source`): a single `.jsonl`/`.json`/`.parquet` file, a `save_to_disk` folder (`Dataset` or
`DatasetDict`, optionally one sub-folder per config), a hub snapshot folder (README `configs:`, sharded files; what
`git clone` or `snapshot_download(local_dir=...)` leaves), or a hub repo id, fetched (only the files of the wanted
config) through `huggingface_hub.snapshot_download`, i.e. read from the hub cache when offline.

    from train.tables import read_table
    table = read_table("TIGER-Lab/MMEB-train", "MSCOCO_i2t", "original", data_root="data/vlm2vec_train")
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


class DataSourceError(FileNotFoundError):
    """Annotations or media are not where the data source looks, or cannot be read; the message names the task
    (or training dataset) and the paths."""


def hub_cache_snapshot(data_root: Path, repo: str) -> Path | None:
    """The snapshot of `repo` when `data_root` is a hub cache folder (`datasets--org--name/snapshots/<rev>`): the
    revision `refs/main` names, else the only one."""
    base = data_root / ("datasets--" + repo.replace("/", "--"))
    ref = base / "refs" / "main"
    if ref.is_file():
        return base / "snapshots" / ref.read_text(encoding="utf-8").strip()
    snapshots = sorted((base / "snapshots").glob("*")) if (base / "snapshots").is_dir() else []
    return snapshots[0] if len(snapshots) == 1 else None


def local_candidates(data_root: Path, task: str, repo: str | None) -> list[Path]:
    """Where a local copy of `repo` (or of `task`'s table) may be under `data_root`, in the order looked at."""
    names = [data_root / repo, data_root / repo.split("/")[-1]] if repo else []
    snapshot = hub_cache_snapshot(data_root, repo) if repo else None
    names += [snapshot] if snapshot is not None else []
    names.append(data_root / task)
    names += [data_root / f"{task}{suffix}" for suffix in DATA_SUFFIXES]
    return list(dict.fromkeys(names))


def check_jsonl(path: Path, task: str) -> None:
    """Raise naming the file and line of the first line that is not one JSON object (blank lines allowed)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                ok = isinstance(json.loads(line), dict)
            except ValueError as error:
                raise DataSourceError(f"task {task}: {path} line {number} is not valid JSON ({error})") from None
            if not ok:
                raise DataSourceError(f"task {task}: {path} line {number} is not a JSON object")


def keyed_cache(cache: str | None, files: Path) -> str | None:
    """A `datasets` cache folder under `cache` named by the paths, sizes and modification times of `files` (a file
    or folder), so tables edited in place are read again (`datasets` alone reuses its Arrow table of the old
    files); `None` keeps the default cache."""
    if cache is None:
        return None
    paths = [files] if files.is_file() else sorted(p for p in files.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return str(Path(cache) / digest.hexdigest()[:20])


def file_table(path: Path, task: str, cache: str | None = None):
    """A table from one `.jsonl`/`.json`/`.parquet` file (`cache`: see `keyed_cache`)."""
    from datasets import load_dataset

    kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}[path.suffix.lower()]
    if path.stat().st_size == 0:
        raise DataSourceError(f"task {task}: {path} is empty (no rows)")
    if path.suffix.lower() == ".jsonl":
        check_jsonl(path, task)
    try:
        return load_dataset(kind, data_files=str(path), split="train", cache_dir=keyed_cache(cache, path))
    except Exception as error:
        raise DataSourceError(f"task {task}: cannot read {path} ({type(error).__name__}: {error})") from error


def folder_table(folder: Path, task: str, config: str | None, split: str, cache: str | None = None):
    """A `save_to_disk` folder (or its `<config>` sub-folder) or a hub snapshot folder (`cache`: see
    `keyed_cache`); a config the README does not list is read from its sub-folder, split by file name."""
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    for candidate in ([folder / config] if config else []) + [folder]:
        if (candidate / "dataset_dict.json").is_file() or (candidate / "state.json").is_file():
            data = load_from_disk(str(candidate))
            if isinstance(data, DatasetDict):
                if split not in data:
                    raise DataSourceError(f"task {task}: {candidate} (save_to_disk) has splits {list(data)}, not "
                                          f"{split!r}")
                data = data[split]
            assert isinstance(data, Dataset)
            return data
    try:
        return load_dataset(str(folder), config, split=split, cache_dir=keyed_cache(cache, folder))
    except ValueError as error:
        if not (config and (folder / config).is_dir() and "config" in str(error).lower()):
            raise DataSourceError(f"task {task}: cannot read config {config!r} split {split!r} of {folder} "
                                  f"({type(error).__name__}: {error})") from error
        return folder_table(folder / config, task, None, split, cache)
    except Exception as error:
        raise DataSourceError(f"task {task}: cannot read config {config!r} split {split!r} of {folder} "
                              f"({type(error).__name__}: {error})") from error


def config_patterns(folder: Path, config: str | None) -> list[str]:
    """The files `snapshot_download` needs for `config`: its `data_files` from the README's `configs:` section,
    or every data file when the README has none."""
    import yaml

    everything = ["README.md", "*.parquet", "**/*.parquet", "*.jsonl", "**/*.jsonl", "*.json", "**/*.json",
                  "*.arrow", "**/*.arrow"]
    readme = folder / "README.md"
    if not readme.is_file():
        return everything
    text = readme.read_text(encoding="utf-8")
    header = text.split("---")[1] if text.startswith("---") else ""
    configs = (yaml.safe_load(header) or {}).get("configs") or []
    wanted = [c for c in configs if c.get("config_name", "default") == (config or "default")] or configs[:1]
    patterns = ["README.md"]
    for entry in wanted:
        files = entry.get("data_files") or []
        files = [files] if isinstance(files, (str, dict)) else files
        for item in files:
            paths = item.get("path") if isinstance(item, dict) else item
            patterns += [paths] if isinstance(paths, str) else list(paths or [])
    return patterns if len(patterns) > 1 else everything


def hub_table(repo: str, task: str, config: str | None, split: str, hub_cache: Path | None = None,
              cache: str | None = None):
    """Every row of hub dataset `repo` / `config` / `split`: its README, then only the files of `config`, through
    `snapshot_download` (the hub cache, so offline once downloaded), read with `folder_table`."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo, repo_type="dataset", allow_patterns=["README.md"], cache_dir=hub_cache))
        folder = Path(snapshot_download(repo, repo_type="dataset", allow_patterns=config_patterns(folder, config),
                                        cache_dir=hub_cache))
    except Exception as error:  # offline without a cached snapshot, unknown repo, no network
        raise DataSourceError(f"task {task}: cannot get annotations {repo} (config {config}, split {split}) "
                              f"from the hub or its cache ({type(error).__name__}: {error}); download them "
                              f"or pass --data_root with local copies") from error
    return folder_table(folder, task, config, split, cache)


def read_table(repo_or_path: str, config: str | None, split: str, name: str | None = None,
               data_root: str | Path | None = None, hub_cache: Path | None = None, cache: str | None = None):
    r"""
    A table wherever it is: `repo_or_path` as a file or folder (relative to `data_root` when given and found
    there), else `<data_root>/<org>/<name>` or `<data_root>/<name>` of a repo id, else the hub (or its cache).

    Args:
        repo_or_path (`str`): a hub dataset id (`"TIGER-Lab/MMEB-train"`), a folder or a data file.
        config (`str`, *optional*): the dataset config (ignored for single files).
        split (`str`): the split (ignored for single files).
        name (`str`, *optional*): the dataset's name in error messages (defaults to `repo_or_path`).
        data_root (`str` or `Path`, *optional*): where local copies live (the reference's `data/vlm2vec_train`).
        hub_cache (`Path`, *optional*): the hub cache (defaults to huggingface_hub's `HF_HUB_CACHE`).
        cache (`str`, *optional*): the `datasets` cache for the Arrow files `load_dataset` writes.

    Raises:
        `DataSourceError`: the table is not there or cannot be read (the message names the dataset and paths).
    """
    name = name or repo_or_path
    local = locate(repo_or_path, name, data_root)
    if local is not None:
        return file_table(local, name, cache) if local.is_file() else folder_table(local, name, config, split, cache)
    if repo_or_path.count("/") == 1 and not Path(repo_or_path).is_absolute():
        return hub_table(repo_or_path, name, config, split, hub_cache, cache)
    raise DataSourceError(f"task {name}: no table at {repo_or_path}" + (f" (nor under {data_root})" if data_root
                                                                        else ""))


def locate(repo_or_path: str, name: str, data_root: str | Path | None = None) -> Path | None:
    """The local file or folder `read_table` reads for `repo_or_path` (see there), or `None` (the hub)."""
    candidates = [Path(repo_or_path).expanduser()]
    if data_root is not None:
        root = Path(data_root).expanduser()
        candidates = [root / repo_or_path, *local_candidates(root, name, repo_or_path), *candidates]
    return next((path for path in candidates if path.is_file() or path.is_dir()), None)


FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def read_data_file(path: str | Path):
    """A table from one local `.jsonl`/`.json`/`.parquet`/`.csv`/`.arrow` file; a malformed JSON line raises a
    `ValueError` naming the file and line."""
    import datasets

    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in FILE_BUILDERS:
        raise ValueError(f"unsupported data file type {suffix!r} ({path}); use one of {sorted(FILE_BUILDERS)}")
    try:
        return datasets.load_dataset(FILE_BUILDERS[suffix], data_files=str(file), split="train")
    except Exception as error:
        if FILE_BUILDERS[suffix] == "json":
            _raise_bad_json_line(file, error)
        raise


def read_training_table(repo_or_path: str, config: str | None, split: str, name: str | None = None,
                        data_root: str | Path | None = None, hub_cache: Path | None = None):
    """`read_table` for training data: a single file through `read_data_file` (more file types, errors naming the
    line), a folder or hub repo as `read_table` reads it."""
    local = locate(repo_or_path, name or repo_or_path, data_root)
    if local is not None and local.is_file():
        return read_data_file(local)
    return read_table(repo_or_path, config, split, name=name, data_root=data_root, hub_cache=hub_cache)


def _raise_bad_json_line(file: Path, error: Exception) -> None:
    """Raise a `ValueError` naming the file and line of the first malformed JSON line of `file` (the `datasets`
    error only gives a position); returns when every line parses (the error was something else)."""
    with open(file, "rb") as handle:
        text = handle.read()
    if file.suffix.lower() == ".json" and text.lstrip()[:1] in (b"[", b"{"):
        try:
            json.loads(text)
            return
        except ValueError as bad:
            line = getattr(bad, "lineno", None)
            raise ValueError(f"{file}: line {line}: not valid JSON ({bad})") from error
    for number, line in enumerate(text.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as bad:
            raise ValueError(f"{file}: line {number}: not a valid JSON object ({bad})") from error
        if not isinstance(row, dict):
            raise ValueError(f"{file}: line {number}: expected a JSON object, got {type(row).__name__}") from error
