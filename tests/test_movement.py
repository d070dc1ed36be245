"""MovementPruner: the scores it learns, the masks it keeps, its ramps, and the model it leaves."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from secateurs import LevelPruner, MovementPruner, TorchEvaluator, get_masks, load_masks, save_masks
from secateurs.checkpoint import checkpoints
from secateurs.sparsity import to_units

X = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
C = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
# d loss / d W' of the fixed loss sum(model(X) * C), whatever the weights: W' = W * mask is the weight computed with.
G = C.T @ X


def _linear(bias=False):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 4, bias=bias))


def _fixed_loss(batch, model):
    return (model(X) * C).sum()


def _loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
    for _ in range(100):
        optimizers.zero_grad()
        training_step(None, model).backward()
        optimizers.step()


def _evaluator(model, lr, loop=_loop, step=_fixed_loss, **kwargs):
    return TorchEvaluator(loop, torch.optim.SGD(model.parameters(), lr=lr, **kwargs), step)


def _keep_top(scores, ratio):
    """Keep-mask of the highest scores with floor(n * ratio) of them pruned (no ties in these tests)."""
    flat = scores.reshape(-1)
    k = math.floor(flat.numel() * ratio)
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[flat.argsort()[:k]] = False
    return keep.reshape(scores.shape)


def _cubic(step, w, c, final):
    if step <= w:
        return 0.0
    return final * (1 - (1 - (min(step, c) - w) / (c - w)) ** 3)


def test_frozen_weights_scores_are_minus_lr_times_the_summed_grad_times_weight():
    model = _linear()
    model[0].weight.requires_grad_(False)
    w0 = model[0].weight.detach().clone()
    lr, steps = 0.1, 6
    pruner = MovementPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}], _evaluator(model, lr),
                            warmup_step=2, cooldown_begin_step=4)
    _, masks = pruner.compress(max_steps=steps)
    expected = -lr * steps * G * w0
    # Every score moved by the straight-through gradient, the masked weights' too.
    torch.testing.assert_close(pruner.scores[("0", "weight")], expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(masks["0"]["weight"], _keep_top(expected, 0.5))
    assert int((~masks["0"]["weight"]).sum()) == 12


def test_trained_weights_scores_sum_grad_times_the_weight_of_each_step():
    model = _linear()
    w = model[0].weight.detach().clone()
    lr, warmup, cooldown, steps, ratio = 0.05, 1, 4, 6, 0.75
    pruner = MovementPruner(model, [{"op_types": ["Linear"], "sparse_ratio": ratio}], _evaluator(model, lr),
                            warmup_step=warmup, cooldown_begin_step=cooldown)
    _, masks = pruner.compress(max_steps=steps)
    # The same run by hand: the weight's gradient is G masked, the score's is G times the stored weight.
    s = torch.zeros_like(w)
    for t in range(steps):
        keep = _keep_top(s, _cubic(t, warmup, cooldown, ratio))
        s, w = s - lr * G * w, w - lr * G * keep
    torch.testing.assert_close(pruner.scores[("0", "weight")], s, rtol=1e-5, atol=1e-6)
    final = _keep_top(s, ratio)
    assert torch.equal(masks["0"]["weight"], final)
    torch.testing.assert_close(model[0].weight, w * final, rtol=1e-5, atol=1e-6)


def test_blocks_share_one_score_summed_over_the_block():
    model = _linear()
    model[0].weight.requires_grad_(False)
    w0 = model[0].weight.detach().clone()
    lr, steps = 0.1, 3
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.5, "granularity": [2, 4]}]  # 2 x 2 blocks, one partial
    pruner = MovementPruner(model, config, _evaluator(model, lr), warmup_step=1, cooldown_begin_step=2)
    _, masks = pruner.compress(max_steps=steps)
    expected = (-lr * steps * to_units(G * w0, (2, 4), pad=0.0).sum(1)).reshape(2, 2)
    torch.testing.assert_close(pruner.scores[("0", "weight")], expected, rtol=1e-5, atol=1e-6)
    keep = _keep_top(expected, 0.5)
    assert torch.equal(masks["0"]["weight"], keep.repeat_interleave(2, 0).repeat_interleave(4, 1)[:, :6])


def test_hard_mode_ramps_cubically_and_ends_at_the_exact_count():
    model = _linear()
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.8}]
    pruner = MovementPruner(model, config, _evaluator(model, 0.01), warmup_step=2, cooldown_begin_step=6,
                            checkpoint_steps=1)
    assert [round(pruner.sparse_ratio_at(t)[0], 6) for t in (0, 2, 3, 4, 6, 9)] == \
        [0.0, 0.0, round(0.8 * (1 - 0.75 ** 3), 6), 0.7, 0.8, 0.8]
    _, masks = pruner.compress(max_steps=8)
    # One chunk per step: the history has the pruned count after every optimizer step.
    counts = [round(h["sparsity"]["0.weight"] * 24) for h in pruner.history]
    assert counts == [math.floor(24 * _cubic(t, 2, 6, 0.8)) for t in range(1, 9)]
    assert counts[-1] == int((~masks["0"]["weight"]).sum()) == math.floor(24 * 0.8)


def test_soft_mode_keeps_sigmoid_above_the_threshold_and_adds_the_ramped_regulariser():
    model = _linear()
    model[0].weight.requires_grad_(False)  # the scores of weights the loss would shrink then go down
    seen = []

    def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
        for _ in range(100):
            optimizers.zero_grad()
            loss = training_step(None, model)
            score = pruner.scores[("0", "weight")]
            seen.append((pruner.step, float((loss - _fixed_loss(None, model)).detach()),
                         float(torch.sigmoid(score.detach()).mean())))
            loss.backward()
            optimizers.step()

    config = [{"op_types": ["Linear"], "sparse_threshold": 0.45}]
    pruner = MovementPruner(model, config, _evaluator(model, 0.05, loop=loop), warmup_step=2, cooldown_begin_step=6,
                            regular_scale=2.0)
    assert [pruner.regular_scale_at(t) for t in (0, 2, 4, 6, 9)] == [0.0, 0.0, 2.0 * (1 - 0.5 ** 3), 2.0, 2.0]
    _, masks = pruner.compress(max_steps=8)
    assert [s for s, _, _ in seen] == list(range(8))
    for step, added, mean_sigmoid in seen:
        assert added == pytest.approx(pruner.regular_scale_at(step) * mean_sigmoid, rel=1e-4, abs=1e-6)
    scores = pruner.scores[("0", "weight")]
    assert torch.equal(masks["0"]["weight"], torch.sigmoid(scores) > 0.45)
    assert 0 < int((~masks["0"]["weight"]).sum()) < 24  # the fixed loss and the regulariser moved some scores down
    assert float(pruner.regulariser()) == pytest.approx(float(torch.sigmoid(scores).mean()))


def test_the_model_ends_with_plain_masks_and_no_scores(tmp_path, cnn, batch):
    params = {id(p) for p in cnn.parameters()}
    keys = set(cnn.state_dict())
    ev = _cnn_evaluator(cnn)
    groups = len(ev.optimizers.param_groups)
    config = [{"op_types": ["Conv2d", "Linear"], "exclude_op_names": ["fc2"], "sparse_ratio": 0.6}]
    pruner = MovementPruner(cnn, config, ev, warmup_step=1, cooldown_begin_step=3)
    model, masks = pruner.compress(max_steps=4)
    assert model is cnn and {id(p) for p in cnn.parameters()} == params
    assert len(ev.optimizers.param_groups) == groups and {id(p) for p in ev.optimizers.state} <= params
    assert not [k for k in cnn.state_dict() if "score" in k]
    assert {k.replace(".parametrizations.weight.original", ".weight") for k in cnn.state_dict()
            if not k.endswith(".mask")} == keys
    assert get_masks(cnn).keys() == masks.keys() == {"conv1", "conv2", "fc1"}
    for t in pruner.targets:
        assert int((~masks[t.module_name]["weight"]).sum()) == math.floor(math.prod(t.shape) * 0.6)
    save_masks(masks, tmp_path / "masks.safetensors")
    assert all(torch.equal(load_masks(tmp_path / "masks.safetensors")[m]["weight"], e["weight"])
               for m, e in masks.items())
    cnn.eval()
    out = cnn(batch)
    pruner.unwrap_model()
    assert torch.allclose(cnn(batch), out, atol=1e-6) and get_masks(cnn) == {}


def test_output_channels_with_dummy_input_give_masks_speedup_makes_exact(cnn):
    from secateurs import ModelSpeedup

    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    config = [{"op_types": ["Conv2d", "Linear"], "exclude_op_names": ["fc2"], "sparse_ratio": 0.5,
               "granularity": "out_channel"}]
    pruner = MovementPruner(cnn, config, _cnn_evaluator(cnn), 1, 3, dummy_input=x)
    _, masks = pruner.compress(max_steps=4)
    assert pruner.scores[("conv1", "weight")].shape == (8, 1, 1, 1)  # one score per output channel
    assert int((~masks["conv1"]["bias"]).sum()) == 4 and torch.equal(masks["bn1"]["weight"], masks["conv1"]["bias"])
    cnn.eval()
    masked = cnn(x)
    ModelSpeedup(cnn, x, masks).speedup_model()
    assert cnn.conv1.out_channels == 4 and cnn.fc1.out_features == 16
    assert torch.allclose(cnn(x), masked, rtol=1e-4, atol=1e-5)


def test_units_masked_before_stay_masked(cnn):
    LevelPruner(cnn, [{"op_names": ["fc1"], "sparse_ratio": 0.5}]).compress()
    before = get_masks(cnn)["fc1"]["weight"].clone()
    pruner = MovementPruner(cnn, [{"op_names": ["fc1"], "sparse_ratio": 0.7}], _cnn_evaluator(cnn),
                            warmup_step=0, cooldown_begin_step=2)
    _, masks = pruner.compress(max_steps=3)
    assert not (masks["fc1"]["weight"] & ~before).any()
    assert int((~masks["fc1"]["weight"]).sum()) == math.floor(64 * 32 * 0.7)


def _cnn_evaluator(model, calls=None, fail_at=None):
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(4)]
    count = [0]

    def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
        if calls is not None:
            calls.append(max_steps)
        for _ in range(25):
            for i in torch.randperm(4).tolist():  # the torch RNG decides the order
                optimizers.zero_grad()
                training_step(data[i], model).backward()
                count[0] += 1
                if count[0] == fail_at:
                    raise KeyboardInterrupt  # stands for a kill: the process is gone, a fresh one resumes
                optimizers.step()

    return TorchEvaluator(loop, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                          lambda b, m: F.cross_entropy(m(b[0]), b[1]))


def _resumable(folder, fail_at=None, calls=None):
    from tests.conftest import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN()
    ev = _cnn_evaluator(model, calls, fail_at)
    config = [{"op_types": ["Conv2d", "Linear"], "exclude_op_names": ["fc2"], "sparse_ratio": 0.5}]
    return model, ev, MovementPruner(model, config, ev, warmup_step=1, cooldown_begin_step=5,
                                     checkpoint_dir=folder, checkpoint_steps=2)


def test_a_run_cut_short_resumes_to_the_same_result(tmp_path):
    whole_model, whole_ev, whole = _resumable(tmp_path / "whole")
    whole.compress(max_steps=7)
    _, _, cut = _resumable(tmp_path / "cut", fail_at=6)
    with pytest.raises(KeyboardInterrupt):
        cut.compress(max_steps=7)
    assert [r for r, _ in checkpoints(tmp_path / "cut")] == [1, 2]
    calls = []
    model, ev, resumed = _resumable(tmp_path / "cut", calls=calls)
    resumed.compress(max_steps=7)
    assert calls == [2, 1]  # chunks 3 (steps 5-6) and 4 (step 7) only
    plain_model, _, plain = _resumable(None)
    plain.compress(max_steps=7)  # checkpointing changes nothing
    for other_model, other in ((model, resumed), (plain_model, plain)):
        assert other.history == whole.history
        for key, score in whole.scores.items():
            assert torch.equal(other.scores[key], score), key
        for (name, a), (_, b) in zip(whole_model.state_dict().items(), other_model.state_dict().items()):
            assert torch.equal(a, b), name
    ours, theirs = ev.optimizers.state_dict()["state"], whole_ev.optimizers.state_dict()["state"]
    assert ours.keys() == theirs.keys() and len(ours) == len(list(model.parameters()))  # the scores' state is gone
    assert all(torch.equal(ours[i]["momentum_buffer"], theirs[i]["momentum_buffer"]) for i in ours)
    # A finished run is restored without training again.
    calls = []
    _, _, again = _resumable(tmp_path / "whole", calls=calls)
    _, masks = again.compress(max_steps=7)
    assert calls == [] and all(torch.equal(masks[m]["weight"], whole.masks[m]["weight"]) for m in whole.masks)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"warmup_step": -1}, r"The 'warmup_step' parameter of MovementPruner must be an int >= 0; got -1"),
    ({"cooldown_begin_step": 2}, r"The 'cooldown_begin_step' parameter of MovementPruner must be an int > "
                                 r"warmup_step \(2\); got 2"),
    ({"regular_scale": -1.0}, r"The 'regular_scale' parameter of MovementPruner must be a number >= 0; got -1.0"),
    ({"checkpoint_steps": 0}, r"The 'checkpoint_steps' parameter of MovementPruner must be a positive int"),
])
def test_bad_arguments_are_refused_with_one_message_format(kwargs, words):
    model = _linear()
    args = {"warmup_step": 2, "cooldown_begin_step": 4, **kwargs}
    with pytest.raises(ValueError, match=words):
        MovementPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}], _evaluator(model, 0.1), **args)


def test_bad_configs_and_budgets_are_refused():
    model = _linear()
    ev = _evaluator(model, 0.1)
    with pytest.raises(ValueError, match=r"give 'sparse_ratio' or 'sparse_threshold', not both"):
        MovementPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5, "sparse_threshold": 0.1}], ev, 1, 2)
    with pytest.raises(ValueError, match=r"needs 'sparse_ratio'"):
        MovementPruner(model, [{"op_types": ["Linear"]}], ev, 1, 2)
    with pytest.raises(ValueError, match=r"config_list\[0\]: MovementPruner has no 'granularity' 'head'. To prune "
                                         r"whole attention heads, select the query, key and value projections"):
        MovementPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5, "granularity": "head"}], ev, 1, 2)
    with pytest.raises(ValueError, match=r"config_list\[0\]: MovementPruner compares 'sparse_threshold' with "
                                         r"sigmoid\(score\), so it must be a number in \(0, 1\); got 1.5"):
        MovementPruner(model, [{"op_types": ["Linear"], "sparse_threshold": 1.5}], ev, 1, 2)
    with pytest.raises(ValueError, match=r"ramps a global group's ratio up from 0, which 'min_sparse_ratio'"):
        MovementPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5, "global_group_id": 0,
                                "min_sparse_ratio": 0.2}], ev, 1, 2)
    with pytest.raises(TypeError, match=r"'evaluator' must be a secateurs Evaluator"):
        MovementPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}], None, 1, 2)
    pruner = MovementPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}], ev, 1, 4)
    with pytest.raises(ValueError, match=r"MovementPruner.compress: give 'max_steps' or 'max_epochs'"):
        pruner.compress()
    with pytest.raises(ValueError, match=r"'max_steps' parameter of MovementPruner.compress must be an int >= "
                                         r"cooldown_begin_step \(4\), so that the ramp ends, or None; got 3"):
        pruner.compress(max_steps=3)
    assert get_masks(model) == {} and len(ev.optimizers.param_groups) == 1


def test_a_loop_that_stops_early_is_an_error_and_leaves_the_model_as_it_was():
    model = _linear()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def short(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
        optimizers.zero_grad()
        training_step(None, model).backward()
        optimizers.step()

    ev = _evaluator(model, 0.0, loop=short)
    pruner = MovementPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}], ev, 1, 2)
    with pytest.raises(RuntimeError, match=r"ran 1 of the 3 optimizer steps"):
        pruner.compress(max_steps=3)
    assert get_masks(model) == {} and len(ev.optimizers.param_groups) == 1
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# -- Hugging Face Trainer ----------------------------------------------------------------


def _bert_trainer(tmp_path, optimizer=False):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (16, 8), generator=g)
    data = [{"input_ids": ids[i], "attention_mask": torch.ones(8, dtype=torch.long),
             "labels": (ids[i, 0] >= 50).long()} for i in range(16)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, disable_tqdm=True,
                                          logging_strategy="no", save_strategy="no", per_device_train_batch_size=4,
                                          optim="sgd", learning_rate=0.5, max_grad_norm=0.0, seed=0)
    optimizers = (torch.optim.SGD(model.parameters(), lr=0.1), None) if optimizer else (None, None)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, optimizers=optimizers)
    trainer.remove_callback(transformers.PrinterCallback)
    return trainer


BERT_CONFIG = [{"op_types": ["Linear"], "op_names_re": [r"bert\.encoder\."], "sparse_ratio": 0.5}]


def test_a_tiny_bert_through_the_hugging_face_trainer(tmp_path):
    from secateurs import TransformersEvaluator

    trainer = _bert_trainer(tmp_path)
    model = trainer.model
    params = {id(p) for p in model.parameters()}
    pruner = MovementPruner(model, BERT_CONFIG, TransformersEvaluator(trainer), warmup_step=1, cooldown_begin_step=3)
    _, masks = pruner.compress(max_steps=4)
    assert pruner.step == 4 and len(pruner.targets) == 12  # q, k, v, attention out, intermediate, out per layer
    for t in pruner.targets:
        assert bool((pruner.scores[(t.module_name, t.name)] != 0).any()), t.module_name  # the trainer trained them
        assert int((~masks[t.module_name]["weight"]).sum()) == math.prod(t.shape) // 2
    assert {id(p) for p in model.parameters()} == params and trainer.optimizer is None
    model.eval()
    with torch.no_grad():
        out = model(input_ids=torch.ones(1, 8, dtype=torch.long)).logits
    assert out.shape == (1, 2) and torch.isfinite(out).all()


def test_an_optimizer_that_does_not_train_the_scores_is_an_error(tmp_path):
    from secateurs import TransformersEvaluator

    trainer = _bert_trainer(tmp_path, optimizer=True)  # built over the model's parameters before the scores exist
    pruner = MovementPruner(trainer.model, BERT_CONFIG, TransformersEvaluator(trainer), 1, 3)
    with pytest.raises(RuntimeError, match=r"the optimizer does not train them"):
        pruner.compress(max_steps=3)
    assert get_masks(trainer.model) == {}


def test_max_epochs_trains_one_chunk_per_epoch_and_ends_at_the_full_ratio():
    model = _linear()
    calls = []

    def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
        calls.append((max_steps, max_epochs))
        for _ in range(max_epochs):
            for _ in range(3):  # an epoch of three batches
                optimizers.zero_grad()
                training_step(None, model).backward()
                optimizers.step()

    pruner = MovementPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}], _evaluator(model, 0.1, loop=loop),
                            warmup_step=1, cooldown_begin_step=4)
    _, masks = pruner.compress(max_epochs=2)
    assert calls == [(None, 1), (None, 1)] and pruner.step == 6
    assert [h["step"] for h in pruner.history] == [3, 6]
    assert int((~masks["0"]["weight"]).sum()) == 12
    calls.clear()
    again = MovementPruner(_linear(), [{"op_types": ["Linear"], "sparse_ratio": 0.5}],
                           _evaluator(model, 0.1, loop=loop), warmup_step=1, cooldown_begin_step=4)
    again.compress(max_steps=4, max_epochs=2)  # the steps end it in the second epoch
    assert calls == [(4, 1), (1, 1)] and again.step == 4


@pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning")
def test_a_lightning_module_trains_the_scores_with_its_own_optimizer():
    L = pytest.importorskip("lightning")
    from secateurs import LightningEvaluator

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

        def training_step(self, batch, batch_idx):
            return F.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8)

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    module = Tiny()
    pruner = MovementPruner(module, [{"op_names": ["net.0"], "sparse_ratio": 0.5}],
                            LightningEvaluator(trainer, Data()), warmup_step=1, cooldown_begin_step=3)
    _, masks = pruner.compress(max_steps=4)
    assert pruner.step == 4 and bool((pruner.scores[("net.0", "weight")] != 0).any())
    assert int((~masks["net.0"]["weight"]).sum()) == 16
    assert not [n for n, _ in module.named_parameters() if "score" in n]


_DDP_WORKER = '''
import sys
import torch, torch.distributed as dist, torch.nn as nn, torch.nn.functional as F
from safetensors.torch import save_file
from secateurs import MovementPruner, TorchEvaluator, save_masks

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)))
g = torch.Generator().manual_seed(10 + rank)  # each rank its own data
data = [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(3)]

def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
    for batch in data * 3:
        optimizers.zero_grad()
        training_step(batch, model).backward()
        optimizers.step()

ev = TorchEvaluator(loop, torch.optim.SGD(model.parameters(), lr=0.1), lambda b, m: F.cross_entropy(m(b[0]), b[1]))
pruner = MovementPruner(model, [{"op_names": ["0"], "sparse_ratio": 0.5}], ev, warmup_step=1, cooldown_begin_step=3)
_, masks = pruner.compress(max_steps=5)
save_masks(masks, f"{sys.argv[1]}/masks-{rank}.safetensors")
save_file({"scores": pruner.scores[("0", "weight")]}, f"{sys.argv[1]}/scores-{rank}.safetensors")
dist.destroy_process_group()
'''


def test_every_rank_of_a_ddp_model_learns_the_same_scores_and_masks(tmp_path):
    import socket
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--master_addr=127.0.0.1", f"--master_port={port}", str(script), str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=240, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    masks = [load_masks(tmp_path / f"masks-{r}.safetensors")["0"]["weight"] for r in (0, 1)]
    scores = [load_file(tmp_path / f"scores-{r}.safetensors")["scores"] for r in (0, 1)]
    assert torch.equal(masks[0], masks[1]) and int((~masks[0]).sum()) == 24
    assert torch.equal(scores[0], scores[1]) and bool((scores[0] != 0).any())


def test_whole_heads_go_with_output_channels_of_query_key_value_and_dummy_input(tmp_path):
    from secateurs import ModelSpeedup, TransformersEvaluator

    trainer = _bert_trainer(tmp_path)
    model = trainer.model
    x = {"input_ids": torch.randint(1, 100, (2, 8), generator=torch.Generator().manual_seed(4)),
         "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    config = [{"op_types": ["Linear"], "op_names_re": [r"bert\.encoder\..*attention\.self\.(query|key|value)"],
               "sparse_ratio": 0.5, "granularity": "out_channel"}]
    pruner = MovementPruner(model, config, TransformersEvaluator(trainer), 1, 3, dummy_input=x)
    _, masks = pruner.compress(max_steps=4)
    for layer in ("bert.encoder.layer.0", "bert.encoder.layer.1"):
        heads = masks[f"{layer}.attention.self.query"]["bias"].reshape(4, 8)  # 4 heads of 8 channels
        assert heads.all(1).sum() == 2 and (heads.all(1) | ~heads.any(1)).all()  # 2 whole heads kept
        for name in ("key", "value"):
            assert torch.equal(masks[f"{layer}.attention.self.{name}"]["bias"], heads.reshape(-1))
        assert torch.equal(masks[f"{layer}.attention.output.dense"]["weight"][0], heads.reshape(-1))
    model.eval()
    with torch.no_grad():
        masked = model(**x).logits
    ModelSpeedup(model, x, masks).speedup_model()
    assert model.bert.encoder.layer[0].attention.self.query.out_features == 16
    with torch.no_grad():
        assert torch.allclose(model(**x).logits, masked, rtol=1e-4, atol=1e-5)
