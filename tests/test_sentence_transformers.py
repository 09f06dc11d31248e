"""A saved TTE folder loads with `SentenceTransformer(folder, trust_remote_code=True)` in a fresh process (the
project's modules off `sys.path`) and embeds exactly as `TTEForEmbedding` + `TTEProcessor` do: strings, PIL images,
dicts with ECR, and (unified model) thinking inside `encode_query`; `model.save(other)` then reload keeps it."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image
from sentence_transformers import SentenceTransformer

from modeling_tte import TTEForEmbedding
from processing_tte import TTEProcessor
from sentence_tte import TTESentenceModule, row_key, to_row
from tests.helpers import BLOCK_PROJECT_MODULES

MAX_NEW = 5
TOLERANCE = 1e-5
# Inputs built identically here and in the fresh process: name -> (inputs, encode side, think).
INPUTS_CODE = textwrap.dedent("""
    from PIL import Image

    def solid(colour):
        return Image.new("RGB", (32, 32), colour)

    def make_inputs(unified):
        inputs = {
            "strings": (["a red square", "blue", "a green circle above a star"], "query", False),
            "strings_documents": (["a red square", "yellow"], "document", False),
            "images": ([solid("red"), solid("blue")], "query", False),
            "dicts_with_ecr": ([
                {"image": solid("red"), "instruction": "Find a caption.",
                 "ecr": "<think>It is red.</think> Answer: red"},
                {"video": [solid(c) for c in ("red", "blue", "green")], "text": "what happens",
                 "ecr": "Answer: colours"},
                {"text": "a red square", "instruction": "Represent the text."},
            ], "query", False),
            "dicts_documents": ([{"text": "a blue card", "ecr": "Answer: blue"}, {"image": solid("green")}],
                                "document", False),
        }
        if unified:
            inputs["think"] = (["what is red?", {"image": solid("red"), "instruction": "Find a caption."},
                                {"text": "two blue stars", "instruction": "Represent."}], "query", True)
            inputs["think_documents"] = (["a yellow circle", solid("blue")], "document", True)
        return inputs
""")
namespace = {}
exec(INPUTS_CODE, namespace)
make_inputs = namespace["make_inputs"]

FRESH_PROCESS = BLOCK_PROJECT_MODULES + INPUTS_CODE + textwrap.dedent("""
    import sys
    import torch
    from sentence_transformers import SentenceTransformer
    folder, other, out, unified = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"

    def run(model):
        assert type(model[0]).__module__.startswith("transformers_modules."), type(model[0]).__module__
        result = {"similarity_fn_name": model.similarity_fn_name, "dim": model.get_embedding_dimension()}
        for name, (inputs, side, think) in make_inputs(unified).items():
            encode = model.encode_document if side == "document" else model.encode_query
            kwargs = {"think": True, "max_new_tokens": MAX_NEW} if think else {}
            result[name] = encode(inputs, convert_to_tensor=True, **kwargs)
            if think:
                result[name + ":ecr"] = [model[0].ecr_for(item) for item in inputs]
        return result

    model = SentenceTransformer(folder, trust_remote_code=True, device="cpu")
    first = run(model)
    model.save(other)
    second = run(SentenceTransformer(other, trust_remote_code=True, device="cpu"))
    torch.save({"first": first, "second": second}, out)
""").replace("MAX_NEW", str(MAX_NEW))


def reference(model: TTEForEmbedding, processor: TTEProcessor, unified: bool) -> dict:
    """What `TTEForEmbedding` + `TTEProcessor` give for each input set (and the ECR thinking writes)."""
    result = {}
    for name, (inputs, side, think) in make_inputs(unified).items():
        rows = [to_row(item, "row") for item in inputs]
        with torch.no_grad():
            if think:
                batch = processor.process_reasoner_inputs(rows, "retrieval", "target" if side == "document" else side)
                output = model.generate_and_embed(**batch, max_new_tokens=MAX_NEW)
                result[name] = output.embeddings
                module = TTESentenceModule(model, processor)
                mask = output.attention_mask[:, -output.ecr_ids.shape[1]:]
                result[name + ":ecr"] = module.decode_ecr(output.ecr_ids, mask)
            else:
                process = processor.process_targets if side == "document" else processor.process_queries
                result[name] = model(**process(rows)).embeddings
    return result


@pytest.fixture(scope="module", params=[{"mode": "embedder"}, {"mode": "unified", "head_type": "self_init"}],
                ids=["embedder", "unified-self_init"])
def saved(request, tiny_qwen2_vl, tmp_path_factory):
    """(folder, model, processor, unified) of a TTE model saved with `save_pretrained`."""
    model = TTEForEmbedding.from_backbone(tiny_qwen2_vl, **request.param).eval()
    processor = TTEProcessor.from_backbone(tiny_qwen2_vl, max_ecr_tokens=128)
    folder = tmp_path_factory.mktemp("tte-st")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor, request.param["mode"] == "unified"


def test_save_pretrained_writes_the_sentence_transformers_files_beside_tte_config(saved):
    folder, *_ = saved
    files = {p.name for p in folder.iterdir()}
    assert {"sentence_tte.py", "modules.json", "config_sentence_transformers.json", "sentence_tte_config.json",
            "config.json", "modeling_tte.py", "processing_tte.py", "configuration_tte.py"} <= files
    assert json.loads((folder / "modules.json").read_text())[0]["type"] == "sentence_tte.TTESentenceModule"
    st_config = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert st_config["similarity_fn_name"] == "cosine" and st_config["prompts"] == {"query": "", "document": ""}
    assert json.loads((folder / "config.json").read_text())["model_type"] == "tte"


def test_fresh_process_sentence_transformers_matches_tte_and_survives_save(saved, tmp_path):
    folder, model, processor, unified = saved
    expected = reference(model, processor, unified)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = elsewhere / "load.py"
    script.write_text(FRESH_PROCESS)
    out, other = tmp_path / "out.pt", tmp_path / "resaved"
    result = subprocess.run([sys.executable, str(script), str(folder), str(other), str(out), "1" if unified else "0"],
                            cwd=elsewhere, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                            env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                                 "HF_HOME": str(tmp_path / "hf_home")})
    assert result.returncode == 0, result.stderr[-3000:]
    runs = torch.load(out)
    for run in ("first", "second"):
        got = runs[run]
        assert got["similarity_fn_name"] == "cosine" and got["dim"] == model.config.hidden_size
        for name, value in expected.items():
            if name.endswith(":ecr"):
                assert got[name] == value, (run, name)
            else:
                diff = (got[name].float() - value.float()).abs().max().item()
                assert diff <= TOLERANCE, (run, name, diff)
    assert json.loads((other / "config.json").read_text())["model_type"] == "tte"  # not the module's config
    assert "think_task_type" in json.loads((other / "sentence_tte_config.json").read_text())


def test_think_returns_ecr_ids_per_row_and_refuses_what_it_cannot_do(saved):
    folder, model, processor, unified = saved
    st = SentenceTransformer(modules=[TTESentenceModule(model, processor)], device="cpu")
    if not unified:
        with pytest.raises(ValueError, match="unified"):
            st.encode_query(["red"], think=True)
        return
    outputs = st.encode_query(["red", "a blue star"], think="vqa", max_new_tokens=MAX_NEW, output_value=None)
    assert [tuple(o["sentence_embedding"].shape) for o in outputs] == [(model.config.hidden_size,)] * 2
    assert all(o["ecr_ids"].dim() == 1 for o in outputs)
    with pytest.raises(ValueError, match="already have an `ecr`"):
        st.encode_query([{"text": "red", "ecr": "Answer: red"}], think=True)
    with pytest.raises(ValueError, match="task type"):
        st.encode_query(["red"], think="poetry")
    with pytest.raises(KeyError):
        st[0].ecr_for("never seen")


def test_rows_from_sentence_transformers_inputs(tmp_path):
    image = Image.new("RGB", (8, 8), "red")
    image.save(tmp_path / "photo.png")
    assert to_row("a cat", "r") == {"text": "a cat"}
    assert to_row("missing.png", "r") == {"text": "missing.png"}  # a path that is no file is text
    assert to_row(str(tmp_path / "photo.png"), "r") == {"image": str(tmp_path / "photo.png")}
    assert to_row("https://example.com/cat.png", "r") == {"image": "https://example.com/cat.png"}
    assert to_row("https://example.com/clip.mp4", "r") == {"video": "https://example.com/clip.mp4"}
    assert to_row(image, "r") == {"image": image}
    assert to_row([image, image], "r") == {"video": [image, image]}
    assert to_row(torch.zeros(3, 8, 8), "r")["image"].shape == (3, 8, 8)
    messages = [{"role": "system", "content": "Find a caption."},
                {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "a cat"}]},
                {"role": "assistant", "content": "Answer: cat"}]
    assert to_row(messages, "r") == {"instruction": "Find a caption.", "image": image, "text": "a cat",
                                     "ecr": "Answer: cat"}
    with pytest.raises(TypeError, match="query row 3"):
        to_row(42, "query row 3")
    other = image.copy()
    other.putpixel((0, 0), (0, 0, 255))
    assert row_key({"image": image}) == row_key({"image": image.copy()}) != row_key({"image": other})
