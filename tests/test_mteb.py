"""`mteb.evaluate` runs a saved TTE model offline on mteb's built-in mock image tasks and writes results, with ECR
from nobody, from the unified model's own thinking, or from a separate reasoner (`LocalBackend`)."""

import json

import mteb
import pytest
import torch
from mteb.mocks.mock_tasks import MockAny2AnyRetrievalI2TTask, MockImageClassificationTask

from eval.mteb_tte import TTEMtebEncoder, batch_rows, tte_model_meta
from modeling_tte import TTEForEmbedding
from processing_tte import TTEProcessor
from tests.helpers import solid
from train.reasoner_backends import LocalBackend

MAX_NEW = 4


@pytest.fixture(scope="module")
def folder(tiny_qwen2_vl, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tte-mteb")
    TTEForEmbedding.from_backbone(tiny_qwen2_vl, mode="unified", head_type="self_init").save_pretrained(folder)
    TTEProcessor.from_backbone(tiny_qwen2_vl).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("source", ["none", "self", "local"])
def test_mteb_evaluate_on_mock_image_tasks_writes_results(folder, tiny_qwen2_vl, tmp_path, source):
    reasoner = {"none": None, "self": "self",
                "local": LocalBackend(tiny_qwen2_vl, TTEProcessor.from_backbone(tiny_qwen2_vl), name="tiny",
                                      max_new_tokens=MAX_NEW, device="cpu", dtype="float32")}[source]
    meta = tte_model_meta(str(folder), reasoner=reasoner, max_new_tokens=MAX_NEW, batch_size=4,
                          trust_remote_code=True)
    encoder = meta.load_model(device="cpu")
    assert isinstance(encoder, TTEMtebEncoder) and encoder.mteb_model_meta.name == f"think-then-embed/{folder.name}"
    tasks = [MockImageClassificationTask(), MockAny2AnyRetrievalI2TTask()]
    result = mteb.evaluate(encoder, tasks, cache=mteb.ResultCache(tmp_path / "mteb"), show_progress_bar=False)

    assert not result.exceptions
    assert {r.task_name for r in result.task_results} == {"MockImageClassification", "MockAny2AnyRetrievalI2T"}
    written = {path.stem: json.loads(path.read_text()) for path in (tmp_path / "mteb").rglob("Mock*.json")}
    assert set(written) == {"MockImageClassification", "MockAny2AnyRetrievalI2T"}
    for task_result in result.task_results:
        assert 0.0 <= task_result.get_score() <= 1.0
    if source == "self":
        assert encoder.written_ecr and not encoder.ecr
    elif source == "local":
        # each distinct row reasoned about once (classification repeats its 2 images across train and test)
        assert encoder.ecr and encoder.reasoner.generated_rows == len(encoder.ecr) and not encoder.written_ecr
    else:
        assert not encoder.ecr and not encoder.written_ecr


def test_encoder_embeds_as_tte_does(folder):
    model = TTEForEmbedding.from_pretrained(folder).eval()
    processor = TTEProcessor.from_pretrained(folder, trust_remote_code=True)
    encoder = TTEMtebEncoder(model=model, processor=processor, device="cpu", use_instructions=False)
    batches = [{"image": [solid("red"), solid("blue")], "text": ["a", ""]}, {"image": [solid("green")], "text": ["c"]}]
    got = encoder.encode(batches, task_metadata=MockImageClassificationTask().metadata, hf_split="test",
                         hf_subset="default", show_progress_bar=False)
    rows = [row for batch in batches for row in batch_rows(batch)]
    assert rows[1] == {"image": batches[0]["image"][1]}  # empty text is left out
    with torch.no_grad():
        expected = model(**processor.process_queries(rows)).embeddings
    assert (torch.as_tensor(got) - expected).abs().max().item() <= 1e-5


def test_encoder_refuses_what_it_cannot_do(folder, tiny_qwen2_vl):
    embedder = TTEForEmbedding.from_backbone(tiny_qwen2_vl).eval()
    processor = TTEProcessor.from_backbone(tiny_qwen2_vl)
    with pytest.raises(ValueError, match="unified"):
        TTEMtebEncoder(model=embedder, processor=processor, reasoner="self", device="cpu")
    with pytest.raises(ValueError, match="reasoner must be"):
        TTEMtebEncoder(model=embedder, processor=processor, reasoner="teacher", device="cpu")
    with pytest.raises(ValueError, match="audio"):
        batch_rows({"audio": [object()]})
