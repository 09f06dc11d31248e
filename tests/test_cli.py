"""One CLI style: every command-line entry point parses with `train.cli.TTEParser`, shows `--config` in a short
usage line, and takes the same names for the same things (long, short and dashed spellings, and YAML keys)."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from train.cli import ALIASES, TTEParser

REPO = Path(__file__).resolve().parents[1]
SHARED = ("model_name_or_path", "output_dir", "ecr_store", "datasets")
DATASET = json.dumps({"name": "d", "path": "d.jsonl"})


def _arguments(module: str) -> tuple:
    """The dataclasses each CLI parses (imported here: a CLI that parses otherwise fails the help test)."""
    if module == "train.train_embedder":
        from train.train_embedder import DataArguments, ModelArguments, TTEContrastiveConfig

        return ModelArguments, DataArguments, TTEContrastiveConfig
    if module == "train.distill_reasoner":
        from trl import ModelConfig, SFTConfig

        from train.distill_reasoner import DistillArguments

        return DistillArguments, SFTConfig, ModelConfig
    if module == "train.rl_reasoner":
        from trl import GRPOConfig, ModelConfig

        from train.rl_reasoner import RLArguments

        return RLArguments, GRPOConfig, ModelConfig
    names = {"train.generate_ecr": "GenerateECRArguments", "train.tiny_backbone": "TinyBackboneArguments",
             "train.data": "ToyArguments", "eval.run_mmeb": "RunMMEBArguments", "eval.demo": "DemoArguments",
             "eval.demo_report": "ReportArguments", "eval.bench_thinking": "BenchThinkingArguments",
             "eval.quickstart": "QuickstartArguments", "eval.synthetic.write": "SyntheticArguments",
             "eval.bench_encoder": "BenchEncoderArguments", "eval.bench_speed": "BenchSpeedArguments",
             "eval.bench_scale": "BenchScaleArguments", "eval.bench_gradcache_memory": "BenchGradCacheArguments",
             "eval.bench_gpu": "BenchGPUArguments", "train.train_router": "RouterArguments"}
    module_object = __import__(module, fromlist=[names[module]])
    return (getattr(module_object, names[module]),)


CLIS = {"train.train_embedder": [], "train.distill_reasoner": ["--use_cpu", "true"], "train.generate_ecr": [],
        "train.rl_reasoner": ["--use_cpu", "true", "--embedder", "runs/tte"],
        "train.tiny_backbone": [], "train.data": [], "eval.run_mmeb": ["--tasks", "all"], "eval.demo": [],
        "eval.quickstart": [], "eval.synthetic.write": [], "eval.bench_encoder": [], "eval.bench_speed": [],
        "eval.bench_scale": [], "eval.bench_gradcache_memory": [],
        "eval.bench_gpu": [], "eval.demo_report": ["--results", "runs/demo/results.json"],
        "eval.bench_thinking": ["--run_dir", "runs/demo/seed0"],
        "train.train_router": [],
        }  # module -> the options it needs besides the shared ones


def test_every_entry_point_is_listed():
    """A new `python -m` module must join this test (and so the shared style)."""
    found = {str(path.relative_to(REPO).with_suffix("")).replace("/", ".")
             for folder in ("train", "eval") for path in (REPO / folder).rglob("*.py")
             if 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")}
    assert found == set(CLIS)


@pytest.mark.parametrize("module", sorted(CLIS))
def test_help_shows_a_short_usage_line_with_config(module, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    assert exit_info.value.code == 0
    usage, *rest = capsys.readouterr().out.splitlines()
    assert usage.startswith(f"usage: python -m {module} [--config YAML]") and len(usage) <= 120, usage
    assert any(line.lstrip().startswith("--config YAML") for line in rest)


def _values(outputs: tuple, names) -> dict:
    return {name: getattr(next(o for o in outputs if hasattr(o, name)), name) for name in names}


@pytest.mark.parametrize("module", sorted(CLIS))
def test_shared_names_are_accepted_in_every_spelling(module, tmp_path):
    parser = TTEParser(_arguments(module), module)
    shared = [name for name in SHARED if parser.canonical(name) in parser._dests]
    assert not set(ALIASES) & parser._dests, "a short name must not be a field of its own"
    given = {"model_name_or_path": "some/model", "output_dir": str(tmp_path / "out"),
             "ecr_store": str(tmp_path / "ecr"), "datasets": DATASET}
    short = {target: name for name, target in ALIASES.items()}
    canonical, spelled, = [], []
    for name in shared:
        canonical += [f"--{name}", given[name]]
        spelled += [f"--{short.get(name, name).replace('_', '-')}={given[name]}"]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({short.get(name, name): given[name] for name in shared}))
    runs = [parser.parse(CLIS[module] + canonical), TTEParser(_arguments(module), module).parse(CLIS[module] + spelled),
            TTEParser(_arguments(module), module).parse(["--config", str(config), *CLIS[module]])]
    values = [_values(outputs, shared) for outputs in runs]
    assert values[0] == values[1] == values[2]
    for name in set(shared) - {"datasets"}:
        assert values[0][name] == given[name]


def test_config_sets_options_and_the_command_line_overrides(tmp_path):
    from eval.run_mmeb import parse_args

    config = tmp_path / "eval.yaml"
    config.write_text("model: m\nout: o\ntasks: image\nbatch_size: 4\necr_mode: none\n")
    args = parse_args([f"--config={config}", "--batch-size", "16", "--tasks", "MSR-VTT"])
    assert (args.model_name_or_path, args.output_dir, args.tasks, args.batch_size, args.ecr_mode) == \
        ("m", "o", "MSR-VTT", 16, "none")
    config.write_text("model: m\ntask: image\n")
    with pytest.raises(ValueError, match=r"--config .*eval\.yaml: unknown options \['task'\]"):
        parse_args(["--config", str(config)])


def test_datasets_take_json_objects_and_recipe_files_in_every_training_script(tmp_path):
    """`--datasets` means the same in the four training scripts: JSON objects and recipe files, mixed."""
    from train.data import read_datasets
    from train.distill_reasoner import DistillArguments
    from train.generate_ecr import GenerateECRArguments
    from train.rl_reasoner import RLArguments
    from train.train_embedder import DataArguments, ModelArguments, TTEContrastiveConfig

    recipe = tmp_path / "mix.yaml"
    recipe.write_text(yaml.safe_dump({"datasets": [{"name": "a", "path": "a.jsonl"}, {"name": "b", "path": "b"}]}))
    argv = ["--model", "m", "--store", "s", "--datasets", str(recipe), DATASET]
    (ecr,) = TTEParser((GenerateECRArguments,), "train.generate_ecr").parse(argv)
    distill = TTEParser((DistillArguments,), "train.distill_reasoner").parse(argv[2:])[0]
    embed = TTEParser((ModelArguments, DataArguments, TTEContrastiveConfig), "train.train_embedder").parse(argv)[1]
    rl = TTEParser((RLArguments,), "train.rl_reasoner").parse(["--embedder", "e", *argv[2:]])[0]
    names = [[d.name for d in ecr.datasets], [d.name for d in distill.datasets],
             [d.name for d in read_datasets(embed.datasets)], [d.name for d in rl.datasets]]
    assert names == [["a", "b", "d"]] * 4
    with pytest.raises(ValueError, match=r"--datasets item 0: 'nowhere.yaml' is neither a JSON object nor a recipe"):
        read_datasets(["nowhere.yaml"])
    with pytest.raises(ValueError, match=r"--datasets item 1: not a JSON object"):
        read_datasets([DATASET, '{"name": '])


def test_a_cli_runs_as_a_module_in_a_fresh_process():
    done = subprocess.run([sys.executable, "-m", "eval.run_mmeb", "--ecr-store", "x", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "--ecr_store ECR_STORE, --ecr-store ECR_STORE" in done.stdout
