"""Where `DataSource` finds annotations besides the three fixture layouts: a repo folder with one sub-folder per
config and no README, and a hub cache folder passed as `--data-root`."""

from __future__ import annotations

from datasets import Dataset

from eval.mmeb import DataSource
from tests.published import write_annotations


def test_a_folder_per_config_without_readme_configs(tmp_path):
    folder = tmp_path / "TIGER-Lab" / "MMEB-eval" / "ImageNet-1K"
    folder.mkdir(parents=True)
    Dataset.from_list([{"a": 1}, {"a": 2}]).to_parquet(str(folder / "test-00000-of-00002.parquet"))
    Dataset.from_list([{"a": 3}]).to_parquet(str(folder / "test-00001-of-00002.parquet"))
    table = DataSource(data_root=tmp_path, cache_dir=tmp_path / "c").table("ImageNet-1K", "TIGER-Lab/MMEB-eval",
                                                                           "ImageNet-1K", "test")
    assert sorted(table["a"]) == [1, 2, 3]


def test_a_hub_cache_folder_as_data_root(tmp_path):
    write_annotations("hub", tmp_path / "hub", "VLM2Vec/MSVD", {None: {"test": [{"x": i} for i in range(3)]}})
    table = DataSource(data_root=tmp_path / "hub", cache_dir=tmp_path / "c").table("MSVD", "VLM2Vec/MSVD", None,
                                                                                   "test")
    assert table["x"] == [0, 1, 2]
