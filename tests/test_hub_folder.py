"""A saved TTE folder is self-contained remote code: a fresh process elsewhere loads it with trust_remote_code."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from modeling_tte import TTEForEmbedding
from processing_tte import TTEProcessor
from tests.helpers import BLOCK_PROJECT_MODULES, mixed_rows

# Runs in a fresh interpreter in another directory. Importing the project's own modules is made to fail, so
# only the files in the folder can provide the classes.
FRESH_PROCESS = BLOCK_PROJECT_MODULES + textwrap.dedent("""
    import sys
    import torch
    from PIL import Image
    from transformers import AutoModel, AutoProcessor
    folder, out = sys.argv[1], sys.argv[2]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    assert type(processor).__module__.startswith("transformers_modules."), type(processor).__module__
    rows = [
        {"image": Image.new("RGB", (32, 32), "red"), "instruction": "Find a caption.",
         "ecr": "<think>It is red.</think> Answer: red"},
        {"video": [Image.new("RGB", (32, 32), c) for c in ("red", "blue", "green")], "text": "what happens",
         "ecr": "Answer: colours"},
        {"text": "a red square", "instruction": "Represent the text."},
    ]
    with torch.no_grad():
        torch.save(model(**processor.process_queries(rows)).embeddings, out)
""")


@pytest.mark.parametrize("overrides", [{"mode": "embedder"}, {"mode": "unified", "head_type": "self_init"}],
                         ids=["embedder", "unified-self_init"])
def test_fresh_process_loads_the_folder_and_embeds_identically(tiny_qwen2_vl, tmp_path, overrides):
    model = TTEForEmbedding.from_backbone(tiny_qwen2_vl, **overrides).eval()
    processor = TTEProcessor.from_backbone(tiny_qwen2_vl, ecr_mode="full", max_ecr_tokens=128)
    folder = tmp_path / "tte"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)

    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_tte.py", "modeling_tte.py", "processing_tte.py",
            "processor_config.json", "tokenizer.json", "README.md"} <= files
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_tte.TTEConfig",
                                  "AutoModel": "modeling_tte.TTEForEmbedding"}
    processor_config = json.loads((folder / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_tte.TTEProcessor"}
    assert processor_config["max_ecr_tokens"] == 128
    assert "trust_remote_code=True" in (folder / "README.md").read_text()

    with torch.no_grad():
        expected = model(**processor.process_queries(mixed_rows())).embeddings
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = elsewhere / "load.py"
    script.write_text(FRESH_PROCESS)
    result = subprocess.run([sys.executable, str(script), str(folder), str(tmp_path / "emb.pt")], cwd=elsewhere,
                            capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                                 "HF_HOME": str(tmp_path / "hf_home")})
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "emb.pt"), expected, atol=1e-6, rtol=0)
