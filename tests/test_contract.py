"""The contract every registered pruner keeps (parametrised over the registry).

Constructor arguments are built from each pruner's declared ``needs``, so a pruner
registered without that metadata (or with a need this suite cannot provide) fails here.
"""

import functools
import inspect
import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from secateurs import L1NormPruner, PRUNERS, TorchEvaluator, get_masks
from secateurs.pruners import UnprunedWarning
from secateurs.sparsity import to_units

NAMES = PRUNERS.names()
# Search pruners meet the config's ratio over all selected layers, choosing each layer's.
BUDGETED = {n for n in NAMES if getattr(PRUNERS.get(n), "budget_over_layers", False)}
WITH_AND_WITHOUT_TRACE = [pytest.param(False, id="no-trace"), pytest.param(True, id="traced")]


def _evaluator(model):
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(4)]

    def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
        for batch in data * 10:
            optimizers.zero_grad()
            training_step(batch, model).backward()
            optimizers.step()

    def step(batch, model):
        return F.cross_entropy(model(batch[0]), batch[1])

    def evaluate(model):  # the search pruners score candidates with it
        with torch.no_grad():
            return -float(sum(F.cross_entropy(model(x), y) for x, y in data))

    return TorchEvaluator(loop, torch.optim.SGD(model.parameters(), lr=0.01), step, evaluating_func=evaluate)


# How this suite provides each need a pruner may declare.
PROVIDERS = {
    "evaluator": _evaluator,
    "training_steps": lambda model: 3,
    "iterations": lambda model: 2,
    "warmup_step": lambda model: 1,
    "cooldown_begin_step": lambda model: 3,
}
# How long the pruners that train in compress() (MovementPruner) train there.
COMPRESS_STEPS = 4


def _dummy():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))


def config(ratio=0.5, **extra):
    # fc2 is the model's output: with dummy_input it could only be pruned when named.
    return [{"op_types": ["default"], "exclude_op_names": ["fc2"], "sparse_ratio": ratio, **extra}]


def make(name, model, ratio=0.5, traced=False, configs=None, **extra):
    cls = PRUNERS.get(name)
    kwargs = {need: PROVIDERS[need](model) for need in cls.needs}
    configs = configs if configs is not None else config(ratio, **extra)
    if getattr(cls, "wraps", False):  # a scheduled pruner around an L1NormPruner, two rounds of one step
        inner = L1NormPruner(model, configs, **({"dummy_input": _dummy()} if traced else {}))
        return cls(inner, 1, 2, **kwargs)
    if traced:
        kwargs["dummy_input"] = _dummy()
    if name in BUDGETED:  # searches kept short; the budget these tests check is sparsity (FLOPs need the trace)
        params = inspect.signature(cls).parameters
        small = {"target": "sparsity", "max_evaluations": 3, "total_episode": 4, "total_iteration": 1,
                 "sa_params": {"max_evaluations": 3}}
        kwargs.update({k: v for k, v in small.items() if k in params})
    pruner = cls(model, configs, **kwargs)
    if "max_steps" in inspect.signature(cls.compress).parameters and not getattr(cls, "wraps", False):
        pruner.compress = functools.partial(pruner.compress, max_steps=COMPRESS_STEPS)
    return pruner


def _pruned_units(t, mask):
    """Units of target ``t`` whose elements are all masked."""
    return int((to_units(mask.float(), t.blocks, pad=0.0).amax(1) == 0).sum())


def _assert_budget(pruner, masks, ratio):
    """At least ``ratio`` of the selected tensors' elements masked, every layer keeps a unit."""
    numel = sum(math.prod(t.shape) for t in pruner.targets)
    zeros = sum(int((~masks[t.module_name][t.name]).sum()) for t in pruner.targets if t.module_name in masks)
    assert ratio <= zeros / numel
    for t in pruner.targets:
        if t.module_name in masks:
            assert _pruned_units(t, masks[t.module_name][t.name]) < _units(t), t.module_name


def _units(t):
    return math.prod(math.ceil(s / b) for s, b in zip(t.shape, t.blocks))


def test_every_registered_pruner_declares_what_it_needs():
    for name in NAMES:
        cls = PRUNERS.get(name)
        assert "needs" in vars(cls), f"{cls.__name__} does not declare `needs` in its class body"
        assert isinstance(cls.needs, tuple) and set(cls.needs) <= set(PROVIDERS), (cls.__name__, cls.needs)
        assert cls.default_op_types and all(isinstance(t, str) for t in cls.default_op_types)


@pytest.mark.parametrize("traced", WITH_AND_WITHOUT_TRACE)
@pytest.mark.parametrize("name", NAMES)
def test_compress_returns_the_same_model_and_full_shape_binary_masks(name, traced, cnn):
    pruner = make(name, cnn, traced=traced)
    model, masks = pruner.compress()
    assert model is cnn
    targets = {t.module_name for t in pruner.targets}
    assert targets <= set(masks) if traced else set(masks) == targets
    for module_name, entry in masks.items():
        for target, mask in entry.items():
            assert mask.shape == getattr(cnn.get_submodule(module_name), target).shape
            assert mask.dtype == torch.bool


@pytest.mark.parametrize("traced", WITH_AND_WITHOUT_TRACE)
@pytest.mark.parametrize("name", NAMES)
def test_requested_ratio_is_realised_exactly(name, traced, cnn):
    pruner = make(name, cnn, ratio=0.3, traced=traced)
    _, masks = pruner.compress()
    if name in BUDGETED:
        _assert_budget(pruner, masks, 0.3)
        return
    for t in pruner.targets:
        assert _pruned_units(t, masks[t.module_name][t.name]) == math.floor(_units(t) * 0.3), t.module_name


@pytest.mark.parametrize("traced", WITH_AND_WITHOUT_TRACE)
@pytest.mark.parametrize("name", NAMES)
def test_parameter_identity_and_unwrap(name, traced, cnn, batch):
    params = [id(p) for p in cnn.parameters()]
    pruner = make(name, cnn, traced=traced)
    pruner.compress()
    cnn.eval()
    out = cnn(batch)
    pruner.unwrap_model()
    assert sorted(id(p) for p in cnn.parameters()) == sorted(params)
    assert get_masks(cnn) == {}
    assert torch.allclose(cnn(batch), out, atol=1e-6)


@pytest.mark.parametrize("traced", WITH_AND_WITHOUT_TRACE)
@pytest.mark.parametrize("name", NAMES)
def test_global_group_is_realised_over_the_group(name, traced, cnn):
    pruner = make(name, cnn, ratio=0.4, traced=traced, global_group_id=0)
    _, masks = pruner.compress()
    if name in BUDGETED:
        _assert_budget(pruner, masks, 0.4)
        return
    units = sum(_units(t) for t in pruner.targets)
    pruned = sum(_pruned_units(t, masks[t.module_name][t.name]) for t in pruner.targets)
    assert pruned == math.floor(units * 0.4)


@pytest.mark.parametrize("traced", WITH_AND_WITHOUT_TRACE)
@pytest.mark.parametrize("name", NAMES)
def test_pruning_a_masked_model_again_never_revives_a_unit(name, traced, cnn):
    """Invariant 8: each round counts floor(n * r) of all units, already pruned ones first,
    and never brings back a unit (or element) pruned before."""
    before = None
    for ratio, expected in ((0.5, 0.5), (0.5, 0.5), (0.75, 0.75), (0.25, 0.75)):
        pruner = make(name, cnn, ratio=ratio, traced=traced)
        pruner.compress()
        attached = {m: {t: v.clone() for t, v in e.items()} for m, e in get_masks(cnn).items()}
        if name in BUDGETED:
            _assert_budget(pruner, attached, expected)
        for t in pruner.targets if name not in BUDGETED else ():
            assert _pruned_units(t, attached[t.module_name][t.name]) == math.floor(_units(t) * expected), \
                (ratio, t.module_name)
        if before is not None:
            for module_name, entry in before.items():
                for target, old in entry.items():
                    assert not (attached[module_name][target] & ~old).any(), (ratio, module_name, target)
        before = attached


@pytest.mark.parametrize("traced", WITH_AND_WITHOUT_TRACE)
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trips_through_safetensors_and_json(name, traced, cnn, tmp_path):
    pruner = make(name, cnn, traced=traced)
    _, masks = pruner.compress()
    state = pruner.state_dict()
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    assert set(state) - set(tensors) == {"format", "pruner", "config_list"}
    assert {k for k in tensors if k.startswith("masks/")} == {
        f"masks/{m}/{t}" for m, e in masks.items() for t in e}
    save_file(tensors, tmp_path / "state.safetensors")
    (tmp_path / "state.json").write_text(json.dumps({k: v for k, v in state.items() if k not in tensors}))
    loaded = {**load_file(tmp_path / "state.safetensors"), **json.loads((tmp_path / "state.json").read_text())}

    torch.manual_seed(0)
    fresh = type(cnn)()
    other = make(name, fresh, traced=traced)
    other.load_state_dict(loaded)
    attached = get_masks(fresh)
    for module_name, entry in masks.items():
        for target, mask in entry.items():
            assert torch.equal(other.masks[module_name][target], mask)
            assert torch.equal(attached[module_name][target], mask)
    for key, value in getattr(pruner, "stats", {}).items():
        assert torch.equal(other.stats[key], value.cpu())
    again = other.calculate_masks()  # from the restored statistics (or the same initial weights)
    for module_name, entry in masks.items():
        for target, mask in entry.items():
            assert torch.equal(again[module_name][target], mask), (module_name, target)


@pytest.mark.parametrize("name", NAMES)
def test_load_state_dict_refuses_a_state_that_does_not_fit(name, cnn):
    pruner = make(name, cnn)
    pruner.compress()
    state = pruner.state_dict()
    other_name = next(n for n in NAMES if n != name)
    bad = [
        ({**state, "pruner": other_name}, f"pruner '{other_name}'"),
        ({**state, "config_list": config(0.25)}, "config_list"),
        ({**state, "format": "something/else"}, "'format'"),
        ({**state, "masks/nope/weight": torch.ones(3, dtype=torch.bool)}, "module 'nope'"),
        ({**state, "mystery": 1}, "unknown key 'mystery'"),
    ]
    key = next(k for k in state if k.startswith("masks/"))
    bad.append(({**state, key: torch.ones(2, 2, dtype=torch.bool)}, r"has shape \(2, 2\)"))
    for broken, words in bad:
        with pytest.raises(ValueError, match=words):
            make(name, cnn).load_state_dict(broken)


@pytest.mark.parametrize("name", NAMES)
def test_bad_model_is_a_type_error(name, cnn):
    cls = PRUNERS.get(name)
    kwargs = {need: PROVIDERS[need](cnn) for need in cls.needs}
    if getattr(cls, "wraps", False):  # built around a pruner: anything else is refused the same way
        with pytest.raises(TypeError, match="'pruner' must be a secateurs pruner"):
            cls("not a pruner", 1, 2, **kwargs)
        return
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        cls("not a model", [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], **kwargs)


BAD_CONFIGS = [
    ({"op_types": ["default"], "sparse_ratoi": 0.5}, ValueError, r"unknown key 'sparse_ratoi'.*did you mean 'sparse_ratio'"),
    ({"op_types": ["default"], "sparse_ratio": "0.5"}, TypeError, r"'sparse_ratio' must be a number in \[0, 1\); got '0.5'"),
    ({"op_types": "Conv2d", "sparse_ratio": 0.5}, TypeError, r"'op_types' must be a list of non-empty strings"),
    ({"op_types": ["default"], "sparse_ratio": 1.5}, ValueError, r"'sparse_ratio' must be a number in \[0, 1\); got 1.5"),
    ({"op_types": ["default"], "sparse_ratio": 0.5, "max_sparse_ratio": 1.2}, ValueError,
     r"'max_sparse_ratio' must be a number in \[0, 1\]; got 1.2"),
    ({"op_types": ["default"], "sparse_ratio": 0.5, "min_sparse_ratio": 0.6, "max_sparse_ratio": 0.5}, ValueError,
     r"config_list\[0\]: 'min_sparse_ratio' \(0.6\) must not exceed 'max_sparse_ratio' \(0.5\)"),
    ({"op_names": ["conv3"], "sparse_ratio": 0.5}, ValueError, r"'op_names' names 'conv3'.*did you mean"),
    ({"op_types": ["Conv2D"], "sparse_ratio": 0.5}, ValueError, r"unknown op type 'Conv2D'.*did you mean 'Conv2d'"),
]


@pytest.mark.parametrize(("bad", "exc", "words"), BAD_CONFIGS, ids=[w.split("'")[1] for _, _, w in BAD_CONFIGS])
@pytest.mark.parametrize("name", NAMES)
def test_config_errors_have_a_pinned_type_and_message(name, bad, exc, words, cnn):
    with pytest.raises(exc, match=words):
        make(name, cnn, configs=[bad])


@pytest.mark.parametrize("name", NAMES)
def test_a_config_whose_layers_the_trace_fixes_entirely_is_refused(name, cnn):
    cls = PRUNERS.get(name)
    if cls.default_granularity == "element":
        pytest.skip("element units are not coupled by the trace")
    # fc2 selected by type only: its outputs are the model's, so none of them may go.
    configs = [{"op_types": ["Linear"], "op_names_re": ["fc2"], "sparse_ratio": 0.5}]
    with pytest.raises(ValueError, match=r"config_list\[0\]: .*'fc2' \(model output\)"):
        make(name, cnn, traced=True, configs=configs)


@pytest.mark.parametrize("name", NAMES)
def test_an_output_layer_kept_whole_is_in_the_report_without_a_warning(name, cnn):
    cls = PRUNERS.get(name)
    if cls.default_granularity == "element":
        pytest.skip("element units are not coupled by the trace")
    configs = [{"op_types": ["Linear"], "sparse_ratio": 0.5}]  # fc1 prunable, fc2 the model output
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner = make(name, cnn, traced=True, configs=configs)
        pruner.compress()
    # Keeping the classifier whole is the documented default, not a surprise worth a warning.
    assert not [w for w in caught if issubclass(w.category, UnprunedWarning)]
    rows = {(r.module_name, r.target): r for r in pruner.report().rows}
    assert rows[("fc2", "weight")].note == "not pruned: model output"
    assert rows[("fc1", "weight")].note is None and rows[("fc1", "weight")].pruned > 0
    assert "model output" in str(pruner.report())


def test_registry_suggests_close_names():
    with pytest.raises(KeyError, match="did you mean 'l1norm'"):
        PRUNERS.get("l1_norm")
    assert PRUNERS.get("L1NormPruner") is PRUNERS.get("l1norm")
