"""The think router (`think="auto"`): decided from the prefill states inside `generate_and_embed` (no extra forward),
stored in the checkpoint (config fields + weights), routing identically after a reload in a fresh process (AutoModel
and sentence-transformers), and trained from logged outcomes by `train.train_router`."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from sentence_transformers import SentenceTransformer

from configuration_tte import TTEConfig
from modeling_tte import TTEForEmbedding, two_pass_inputs
from processing_tte import TTEProcessor
from sentence_tte import TTESentenceModule, to_row
from tests.helpers import BLOCK_PROJECT_MODULES, mixed_rows

MAX_NEW = 5
TOLERANCE = 1e-5
ROWS = [*mixed_rows(), {"text": "blue", "instruction": "Represent."}]


def unified(path):
    model = TTEForEmbedding.from_backbone(path, mode="unified", head_type="self_init", num_head_layers=1).eval()
    model.add_router(-1)
    return model


def route(model, batch, thinks: list[bool]) -> None:
    """Set the router so that exactly the rows marked in `thinks` get a probability above 0.5 (least squares on
    their prompt states: logits +-5)."""
    states = model.router_states(**batch).double()
    targets = torch.tensor([5.0 if t else -5.0 for t in thinks], dtype=torch.double)[:, None]
    weight = torch.linalg.lstsq(states, targets).solution
    with torch.no_grad():
        model.router.weight.copy_(weight.T.float())
        model.router.bias.zero_()
    assert (model.think_probability(**batch) >= 0.5).tolist() == thinks


def decoder_calls(model) -> tuple[list[int], object]:
    """The sequence length of every call of the backbone's first decoder layer, and the hook's handle."""
    lengths = []
    handle = model.vlm.get_decoder().layers[0].register_forward_pre_hook(lambda m, a: lengths.append(a[0].shape[1]))
    return lengths, handle


@pytest.fixture(scope="module")
def setup(tiny_qwen2_vl):
    processor = TTEProcessor.from_backbone(tiny_qwen2_vl)
    return tiny_qwen2_vl, processor, processor.process_reasoner_inputs(ROWS, task_type="retrieval")


def test_auto_decides_from_prefill_states_without_another_forward(setup):
    path, processor, batch = setup
    model, prompt = unified(path), batch["input_ids"].shape[1]
    route(model, batch, [True, False, True, False])
    with torch.no_grad():
        always = model.generate_and_embed(**batch, max_new_tokens=MAX_NEW)
        lengths, handle = decoder_calls(model)
        auto = model.generate_and_embed(**batch, max_new_tokens=MAX_NEW, think="auto")
        handle.remove()
        reference = model(**two_pass_inputs(batch, auto)).embeddings
    assert auto.thought.tolist() == [True, False, True, False] and always.thought.all()
    # one prefill (where the router read its states), then decode steps of one token (two for an appended eos)
    assert lengths[0] == prompt and all(length <= 2 for length in lengths[1:])
    assert len(lengths) == always.sequences.shape[1] - prompt + 1  # exactly as many calls as always thinking
    ecr_lengths = auto.attention_mask[:, prompt:].sum(1)
    assert ecr_lengths[[1, 3]].tolist() == [1, 1]  # skipped rows: the end-of-turn token only
    assert (auto.ecr_ids[[1, 3], 0] == processor.tokenizer.eos_token_id).all()
    for row in (0, 2):  # thinking rows write what they write when every row thinks
        length = int(ecr_lengths[row])
        assert torch.equal(auto.ecr_ids[row, :length], always.ecr_ids[row, :length])
    torch.testing.assert_close(auto.embeddings, reference, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(auto.embeddings[[0, 2]], always.embeddings[[0, 2]], atol=TOLERANCE, rtol=0)


def test_skipping_every_row_is_prefill_and_one_step_and_the_threshold_trades(setup):
    path, processor, batch = setup
    model, prompt = unified(path), batch["input_ids"].shape[1]
    route(model, batch, [False] * 4)
    with torch.no_grad():
        lengths, handle = decoder_calls(model)
        auto = model.generate_and_embed(**batch, max_new_tokens=MAX_NEW, think="auto")
        handle.remove()
        never = model.generate_and_embed(**batch, max_new_tokens=MAX_NEW, think=False)
        forced = model.generate_and_embed(**batch, max_new_tokens=MAX_NEW, think="auto", router_threshold=0.0)
        always = model.generate_and_embed(**batch, max_new_tokens=MAX_NEW)
    assert lengths == [prompt, 1]  # prefill, then the end-of-turn token fed once for the embedding
    assert not auto.thought.any() and not never.thought.any()
    torch.testing.assert_close(auto.embeddings, never.embeddings, atol=0, rtol=0)
    plain = [{k: v for k, v in row.items() if k != "ecr"} for row in ROWS]
    with torch.no_grad():  # prompt + end-of-turn, embedded by a plain forward
        ids = processor.process_reasoner_inputs(plain, task_type="retrieval")
        ids = dict(ids, input_ids=torch.cat([ids["input_ids"], auto.ecr_ids], 1), attention_mask=auto.attention_mask,
                   mm_token_type_ids=torch.cat([ids["mm_token_type_ids"], torch.zeros_like(auto.ecr_ids)], 1))
        torch.testing.assert_close(model(**ids).embeddings, auto.embeddings, atol=TOLERANCE, rtol=0)
    assert forced.thought.all() and torch.equal(forced.sequences, always.sequences)


def test_router_needs_a_unified_model_and_a_trained_router(setup, tiny_qwen2_vl):
    path, _, batch = setup
    plain = TTEForEmbedding.from_backbone(path, mode="unified", head_type="last_token").eval()
    with pytest.raises(ValueError, match="no think router"):
        plain.generate_and_embed(**batch, max_new_tokens=2, think="auto")
    with pytest.raises(ValueError, match="think must be True, False or 'auto'"):
        plain.generate_and_embed(**batch, max_new_tokens=2, think="maybe")
    assert not plain.generate_and_embed(**batch, max_new_tokens=2, think=False).thought.any()
    with pytest.raises(ValueError, match="router_layer needs mode='unified'"):
        TTEForEmbedding.from_backbone(tiny_qwen2_vl, router_layer=-1)
    with pytest.raises(ValueError, match="router_threshold"):
        TTEConfig(mode="unified", router_layer=-1, router_threshold=-0.1)
    with pytest.raises(ValueError, match="router_layer must be a hidden-state index"):
        TTEConfig(mode="unified", router_layer=99)


# Runs in a fresh interpreter elsewhere, with the project's modules made unimportable: the folder's code only.
FRESH_PROCESS = BLOCK_PROJECT_MODULES + textwrap.dedent("""
    import sys
    import torch
    from PIL import Image
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoProcessor
    folder, out = sys.argv[1], sys.argv[2]
    ITEMS = ["what is red?", {"image": Image.new("RGB", (32, 32), "red"), "instruction": "Find a caption."},
             {"text": "two blue stars", "instruction": "Represent."}, "a yellow circle"]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    rows = [{"text": i} if isinstance(i, str) else i for i in ITEMS]
    with torch.no_grad():
        output = model.generate_and_embed(**processor.process_reasoner_inputs(rows, "retrieval"), max_new_tokens=5,
                                          think="auto")
    st = SentenceTransformer(folder, trust_remote_code=True, device="cpu")
    encoded = st.encode_query(ITEMS, think="auto", max_new_tokens=5, convert_to_tensor=True)
    torch.save({"thought": output.thought, "embeddings": output.embeddings, "st": encoded,
                "ecr": [st[0].ecr_for(item) for item in ITEMS]}, out)
""")


def test_saved_router_reloads_in_a_fresh_process_and_routes_identically(tiny_qwen2_vl, tmp_path):
    from PIL import Image

    items = ["what is red?", {"image": Image.new("RGB", (32, 32), "red"), "instruction": "Find a caption."},
             {"text": "two blue stars", "instruction": "Represent."}, "a yellow circle"]
    rows = [to_row(item, "row") for item in items]
    processor = TTEProcessor.from_backbone(tiny_qwen2_vl)
    batch = processor.process_reasoner_inputs(rows, "retrieval")
    model = unified(tiny_qwen2_vl)
    route(model, batch, [True, False, False, True])
    model.config.router_threshold = 0.5
    folder = tmp_path / "routed"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["router_layer"] == -1 and config["router_threshold"] == 0.5
    with torch.no_grad():
        expected = model.generate_and_embed(**batch, max_new_tokens=MAX_NEW, think="auto")
    module = TTESentenceModule(model, processor)
    st = SentenceTransformer(modules=[module], device="cpu")
    st_expected = st.encode_query(items, think="auto", max_new_tokens=MAX_NEW, convert_to_tensor=True)
    assert [module.ecr_for(item) == "" for item in items] == [False, True, True, False]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "load.py").write_text(FRESH_PROCESS)
    result = subprocess.run([sys.executable, "load.py", str(folder), str(tmp_path / "out.pt")], cwd=elsewhere,
                            capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                            env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                                 "HF_HOME": str(tmp_path / "hf_home")})
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    assert got["thought"].tolist() == [True, False, False, True]
    torch.testing.assert_close(got["embeddings"], expected.embeddings, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(got["st"], st_expected, atol=TOLERANCE, rtol=0)
    assert got["ecr"] == [module.ecr_for(item) for item in items]


def test_reciprocal_ranks_count_a_duplicate_of_the_gold_as_the_gold():
    from train.train_router import reciprocal_ranks

    queries = torch.eye(3)
    targets = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    ranks = reciprocal_ranks(queries, targets, ["a", "b", "c"])
    # row 0 scores every target 0 and row 1 scores targets 0 and 1 alike: ties of other candidates rank the gold last
    assert ranks.tolist() == pytest.approx([1 / 3, 1 / 2, 1.0])
    ranks = reciprocal_ranks(queries, targets, ["red", "red", "c"])  # targets 0 and 1 are one class
    assert ranks.tolist() == pytest.approx([1 / 2, 1.0, 1.0])


def test_fit_router_learns_when_thinking_pays_weighted_by_how_much():
    from train.train_router import RouterArguments, fit_router

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(400, 8, generator=generator) * 3 + 10  # far from standardised, as hidden states are
    gains = torch.where(features[:, 2] > 10, 0.5, -0.2) * torch.rand(400, generator=generator)
    gains[features[:, 2].sub(10).abs() < 0.3] = 0.0  # thinking changes nothing: no weight
    args = RouterArguments(model_name_or_path="m", ecr_store="s", output_dir="o",
                           datasets=['{"name": "d", "path": "d.jsonl"}'])
    probe = fit_router(features, gains, args)
    with torch.no_grad():
        thinks = torch.sigmoid(probe(features).squeeze(-1)) >= 0.5
    decided = gains != 0
    assert (thinks[decided] == (gains[decided] > 0)).float().mean() > 0.95


def test_train_router_logs_outcomes_and_saves_a_model_that_routes_by_them(tiny_qwen2_vl, tmp_path):
    from train.data import write_toy_mmeb
    from train.train_router import main

    data = write_toy_mmeb(tmp_path / "toy", rows_per_dataset=12)
    start = tmp_path / "unified"
    TTEForEmbedding.from_backbone(tiny_qwen2_vl, mode="unified", head_type="latent_attention",
                                  head_num_heads=4, head_num_latents=8).save_pretrained(start)
    TTEProcessor.from_backbone(tiny_qwen2_vl).save_pretrained(start)
    log = main(["--model_name_or_path", str(start), "--ecr_store", str(data / "ecr"), "--datasets",
                str(data / "datasets.yaml"), "--image_root", str(data), "--output_dir", str(tmp_path / "routed"),
                "--pool_size", "6", "--batch_size", "8", "--steps", "50", "--router_threshold", "0.5"])
    assert log["fitted"]["rows"] + log["held_out"]["rows"] == 24
    assert set(log["datasets"]) == {"ToyCaption", "ToyColourQA"}
    assert all(0 <= log[s]["mrr_never"] <= 1 and 1 / 6 <= log[s]["mrr_always"] <= 1 for s in ("fitted", "held_out"))
    routed = TTEForEmbedding.from_pretrained(tmp_path / "routed").eval()
    assert routed.config.router_layer == -1 and routed.router.weight.abs().sum() > 0
    assert json.loads((tmp_path / "routed" / "router_log.json").read_text()) == log
    # the reloaded model's decisions on the training queries reproduce the logged think fraction
    from train.mmeb_data import dataset_configs, load_mmeb_pairs

    processor = TTEProcessor.from_pretrained(tmp_path / "routed")
    thinks = []
    for config in dataset_configs([str(data / "datasets.yaml")]):
        queries = [p.query for p in load_mmeb_pairs(config, data)]
        batch = processor.process_reasoner_inputs(queries, config.task_type, dataset=config.name)
        with torch.no_grad():
            thinks += routed.generate_and_embed(**batch, max_new_tokens=2, think="auto").thought.tolist()
        logged = log["datasets"][config.name]["think_fraction"]
        assert sum(thinks[-len(queries):]) / len(queries) == pytest.approx(logged, abs=1e-6)
    assert 0 < sum(thinks) < len(thinks) or log["fitted"]["think_fraction"] in (0.0, 1.0)
