"""`train.train_embedder --push_to_hub true` uploads exactly the self-contained TTE folder it saved (merged weights,
remote code, processor, a TTE model card), and nothing else; the upload loads elsewhere to the trained weights. The
hub is a recording stand-in on 127.0.0.1 (`tests.hub_standin`); training, peft and the upload client are real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from tests.hub_standin import HubStandIn
from train.data import write_toy_mmeb

REPO = Path(__file__).resolve().parent.parent

# Trains through the entry point (as `python -m train.train_embedder` does), then embeds a query with the model as it
# is in memory after training (LoRA not merged) and writes that embedding.
TRAIN = textwrap.dedent("""
    import json, sys, torch
    from processing_tte import TTEProcessor
    from train.train_embedder import main
    argv, query, backbone, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    trainer = main(argv)
    processor = TTEProcessor.from_backbone(backbone)
    with torch.no_grad():
        embedding = trainer.model.eval()(**processor.process_queries([query])).embeddings[0]
    json.dump({"embedding": embedding.tolist(), "type": type(trainer.model).__name__}, open(out, "w"))
""")

# A fresh interpreter elsewhere, the project's modules unimportable: only the uploaded files can provide the classes.
LOAD = textwrap.dedent("""
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"configuration_tte", "modeling_tte", "processing_tte", "prompts_tte", "train",
                                      "eval", "tests"}:
                raise ImportError(f"project module {name} must not be importable here")
    sys.meta_path.insert(0, Block())
    import torch
    from transformers import AutoModel, AutoProcessor
    folder, query = sys.argv[1], json.loads(sys.argv[2])
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        print(json.dumps(model(**processor.process_queries([query])).embeddings[0].tolist()))
""")


def _recipe(tiny_backbone: str, tmp_path: Path) -> tuple[Path, Path]:
    toy = write_toy_mmeb(tmp_path / "toy", rows_per_dataset=8)
    recipe = yaml.safe_load((REPO / "train" / "recipes" / "embed_tiny_cpu.yaml").read_text())
    recipe.update(model_name_or_path=tiny_backbone, datasets=str(toy / "datasets.yaml"), image_root=str(toy),
                  ecr_store=str(toy / "ecr"), output_dir=str(tmp_path / "out"), per_device_train_batch_size=8,
                  max_steps=3, learning_rate=0.01, save_strategy="steps", save_steps=2)
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    return config, toy


@pytest.fixture(scope="module")
def pushed(tiny_backbone, tmp_path_factory):
    """One LoRA training run with `--push_to_hub true` against the stand-in: `(tmp_path, query, trained embedding,
    recorded hub traffic)`. It saves a checkpoint at step 2 (the Trainer's checkpoint push must not run either)."""
    tmp_path = tmp_path_factory.mktemp("push")
    backbone = tiny_backbone("qwen2_vl")
    config, toy = _recipe(backbone, tmp_path)
    query = {"text": "What colour is the card?", "image": str(toy / "images" / "ToyCaption_0.png"),
             "ecr": "<think>The card is red.</think> Answer: red"}
    argv = ["--config", str(config), "--push_to_hub", "true", "--hub_model_id", "me/tte-tiny", "--hub_token", "t"]
    with HubStandIn() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
               "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        result = subprocess.run([sys.executable, "-c", TRAIN, json.dumps(argv), json.dumps(query), backbone,
                                 str(tmp_path / "trained.json")], env=env, cwd=tmp_path, capture_output=True,
                                text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    trained = json.loads((tmp_path / "trained.json").read_text())
    assert trained["type"] == "PeftModelForFeatureExtraction"
    return tmp_path, query, torch.tensor(trained["embedding"]), hub.recorded


def test_push_uploads_exactly_the_saved_tte_folder(pushed):
    tmp_path, _, _, recorded = pushed
    out = tmp_path / "out"
    assert len(recorded.commits) == 1, recorded.requests  # one upload: no Trainer push at save or checkpoint time
    commit = recorded.commits[0]
    assert commit["repo_id"] == "me/tte-tiny" and commit["other"] == []
    uploaded = set(commit["files"])
    # exactly the model folder's own files: what a fresh save_pretrained of model + processor writes
    model_files = {p.name for p in out.iterdir() if p.is_file()} - {"training_args.bin"}
    assert uploaded == model_files
    assert {"config.json", "model.safetensors", "configuration_tte.py", "modeling_tte.py", "processing_tte.py",
            "processor_config.json", "tokenizer.json", "chat_template.jinja", "README.md"} <= uploaded
    assert not any(name.startswith(("adapter_", "checkpoint-", "lora_", "training_args")) for name in uploaded)
    for name, data in commit["files"].items():
        assert data == (out / name).read_bytes(), name  # the bytes on disk, nothing rewritten on the way
    # nor does the local folder hold an adapter at its root (AutoModel would apply it on top of the merged weights)
    assert not (out / "adapter_config.json").exists() and not (out / "adapter_model.safetensors").exists()
    assert (out / "checkpoint-2").is_dir()


def test_the_uploaded_model_card_is_the_tte_card_with_training_settings_and_data(pushed):
    card = pushed[3].commits[0]["files"]["README.md"].decode()
    assert "library_name: transformers" in card and "library_name: peft" not in card
    assert "trust_remote_code=True" in card and "feature-extraction" in card
    assert "## Training" in card and "lora_r: 16" in card and "tuning: lora" in card and "max_steps: 3" in card
    training_data = yaml.safe_load(card.split("## Training data")[1].split("```yaml")[1].split("```")[0])
    assert [spec["name"] for spec in training_data["datasets"]] == ["ToyCaption", "ToyColourQA"]
    assert training_data["rows"] > 0


def test_the_uploaded_folder_loads_elsewhere_to_the_trained_weights(pushed):
    tmp_path, query, trained, recorded = pushed
    uploaded = tmp_path / "downloaded"
    for name, data in recorded.commits[0]["files"].items():
        (uploaded / name).parent.mkdir(parents=True, exist_ok=True)
        (uploaded / name).write_bytes(data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-c", LOAD, str(uploaded), json.dumps(query)], env=env, cwd=elsewhere,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    reloaded = torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(reloaded, trained, atol=1e-5, rtol=0)


def test_saved_adapters_name_their_base_and_load_with_auto_peft_model(pushed):
    from peft import AutoPeftModelForFeatureExtraction

    from processing_tte import TTEProcessor

    tmp_path, query, trained, _ = pushed
    out = tmp_path / "out"
    for adapter in (out / "lora_adapter", out / "checkpoint-2"):
        config = json.loads((adapter / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == str((out / "lora_base").resolve())
        assert config["task_type"] == "FEATURE_EXTRACTION" and config.get("auto_mapping") is None
    model = AutoPeftModelForFeatureExtraction.from_pretrained(str(out / "lora_adapter"), trust_remote_code=True)
    assert type(model.base_model.model).__name__ == "TTEForEmbedding"
    processor = TTEProcessor.from_pretrained(str(out))
    with torch.no_grad():
        embedding = model.eval()(**processor.process_queries([query])).embeddings[0]
    torch.testing.assert_close(embedding, trained, atol=1e-5, rtol=0)
