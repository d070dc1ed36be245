"""config_list validation, NNI 2.x translation and resolution."""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secateurs import L1NormPruner, LevelPruner
from secateurs.config import SELECTOR_KEYS, SETTING_KEYS, ConfigSchema, resolve

SCHEMA = ConfigSchema(owner="L1NormPruner")


def test_later_config_wins_and_report_names_it(cnn):
    configs = [
        {"op_types": ["Conv2d"], "sparse_ratio": 0.25},
        {"op_names": ["conv2"], "sparse_ratio": 0.5},
    ]
    pruner = L1NormPruner(cnn, configs)
    assert pruner.settings["conv1"].sparse_ratio == 0.25
    assert pruner.settings["conv2"].sparse_ratio == 0.5
    assert pruner.settings["conv2"].config_index == 1
    pruner.compress()
    rows = {(r.module_name, r.target): r for r in pruner.report().rows}
    assert rows[("conv2", "weight")].config_index == 1
    assert rows[("conv1", "weight")].config_index == 0
    assert "[1]" in str(pruner.report())


def test_exclude_config_removes_modules(cnn):
    configs = [{"op_types": ["Conv2d", "Linear"], "sparsity": 0.5}, {"op_names": ["fc2"], "exclude": True}]
    settings_ = resolve(cnn, configs, SCHEMA)
    assert list(settings_) == ["conv1", "conv2", "fc1"]


def test_exclude_keys_inside_a_config(cnn):
    configs = [{"op_types": ["Conv2d", "Linear"], "exclude_op_names": ["fc2"], "exclude_op_types": ["Conv2d"],
                "sparse_ratio": 0.5}]
    assert list(resolve(cnn, configs, SCHEMA)) == ["fc1"]
    configs = [{"op_names_re": ["fc"], "exclude_op_names_re": [".*2$"], "sparse_ratio": 0.5}]
    assert list(resolve(cnn, configs, SCHEMA)) == ["fc1"]


def test_nni2_keys_are_translated(cnn):
    got = resolve(cnn, [{"op_types": ["default"], "sparsity_per_layer": 0.3}], SCHEMA)
    assert set(got) == {"conv1", "conv2", "fc1", "fc2"} and got["fc1"].sparse_ratio == 0.3
    got = resolve(cnn, [{"op_types": ["Linear"], "total_sparsity": 0.4, "max_sparsity_per_layer": 0.9}], SCHEMA)
    assert got["fc1"].global_group_id == got["fc2"].global_group_id is not None
    assert got["fc1"].sparse_ratio == 0.4 and got["fc1"].max_sparse_ratio == 0.9
    got = resolve(cnn, [{"op_partial_names": ["conv"], "sparsity": 0.5}], SCHEMA)
    assert list(got) == ["conv1", "conv2"]


def test_op_types_and_op_names_must_both_match(cnn):
    got = resolve(cnn, [{"op_types": ["Linear"], "op_names": ["conv1", "fc1"], "sparse_ratio": 0.5}], SCHEMA)
    assert list(got) == ["fc1"]


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"op_types": ["Conv2d"], "sparse_ratio": 1.5}, ["config_list[0]", "'sparse_ratio'", "[0, 1)", "1.5"]),
        ({"op_types": ["Conv2d"], "sparse_ratoi": 0.5}, ["'sparse_ratoi'", "did you mean 'sparse_ratio'"]),
        ({"op_types": ["Conv2d"], "sparse_ratio": 0.5, "sparse_threshold": 0.1}, ["'sparse_ratio'", "'sparse_threshold'"]),
        ({"op_types": ["Conv2D"], "sparse_ratio": 0.5}, ["'Conv2D'", "did you mean 'Conv2d'"]),
        ({"op_names": ["conv3"], "sparse_ratio": 0.5}, ["'op_names'", "'conv3'", "did you mean"]),
        ({"op_types": ["Conv3d"], "sparse_ratio": 0.5}, ["selects no module"]),
        ({"op_types": ["Conv2d"]}, ["needs 'sparse_ratio'"]),
        ({"op_types": ["Conv2d"], "sparse_ratio": 0.5, "max_sparse_ratio": 0.4}, ["'sparse_ratio'", "0.4"]),
        ({"op_types": ["Conv2d"], "sparse_ratio": 0.1, "min_sparse_ratio": 0.6, "max_sparse_ratio": 0.5},
         ["'min_sparse_ratio'"]),
        ({"op_types": ["Conv2d"], "sparse_ratio": 0.5, "granularity": "channel"}, ["'granularity'", "'channel'"]),
        ({"op_types": ["Conv2d"], "sparse_ratio": 0.5, "granularity": [0, 2]}, ["'granularity'"]),
        ({"op_types": ["BatchNorm2d"], "sparse_ratio": 0.5, "granularity": "in_channel"}, ["'in_channel'"]),
        ({"op_types": ["ReLU"], "sparse_ratio": 0.5}, ["ReLU", "selects no module"]),
        ({"op_types": ["Linear"], "sparse_ratio": 0.5, "target_names": ["weights"]}, ["'weights'"]),
        ({"op_names_re": ["conv("], "sparse_ratio": 0.5}, ["'op_names_re'"]),
        ({"op_types": ["Linear"], "sparse_ratio": 0.5, "exclude": True}, ["'exclude'"]),
    ],
)
def test_bad_configs_raise_naming_the_problem(cnn, config, words):
    with pytest.raises((ValueError, TypeError)) as info:
        L1NormPruner(cnn, [config])
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    "config_list",
    [None, "op_types", [], [["Conv2d"]], [{"op_types": "Conv2d", "sparse_ratio": 0.5}],
     [{"op_types": ["Conv2d"], "sparse_ratio": "0.5"}], [{"op_types": ["Conv2d"], "sparse_ratio": True}]],
)
def test_wrong_types_raise_type_or_value_error(cnn, config_list):
    with pytest.raises((TypeError, ValueError)):
        L1NormPruner(cnn, config_list)


def test_global_group_members_must_agree(cnn):
    configs = [
        {"op_names": ["fc1"], "sparse_ratio": 0.5, "global_group_id": 1},
        {"op_names": ["fc2"], "sparse_ratio": 0.3, "global_group_id": 1},
    ]
    with pytest.raises(ValueError, match="global_group_id 1"):
        LevelPruner(cnn, configs)


_VALID = {"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5}
_KNOWN = set(SELECTOR_KEYS + SETTING_KEYS) | {"sparsity", "sparsity_per_layer", "total_sparsity",
                                              "max_sparsity_per_layer", "op_partial_names", "exclude"}
_junk = st.one_of(
    st.none(), st.booleans(), st.text(max_size=5), st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-5, 5), st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
_bad_values = {
    "sparse_ratio": st.one_of(st.floats(min_value=1.0), st.floats(max_value=-1e-9), st.just(math.nan),
                              st.text(max_size=3), st.none(), st.booleans(), st.lists(st.floats(), max_size=2)),
    "min_sparse_ratio": st.one_of(st.floats(min_value=1.0000001), st.floats(max_value=-1e-9), st.text(max_size=3)),
    "max_sparse_ratio": st.one_of(st.floats(max_value=0.4999), st.floats(min_value=1.0000001), st.none()),
    "sparse_threshold": st.one_of(st.text(max_size=3), st.none(), st.just(math.inf), st.lists(st.floats(), max_size=1)),
    "granularity": st.one_of(st.text(max_size=8).filter(lambda s: s not in ("default", "out_channel", "in_channel", "per_channel")),
                             st.lists(st.integers(-9, 0).filter(lambda i: i != -1), min_size=1, max_size=3), st.just([]), st.floats()),
    "op_types": st.one_of(st.text(min_size=1, max_size=6).map(lambda s: [s + "Zz"]), st.integers(), st.just([3])),
    "op_names": st.one_of(st.text(min_size=1, max_size=6).map(lambda s: [s + "_nope"]), st.just("conv1"), st.just([None])),
    "global_group_id": st.one_of(st.floats(), st.booleans(), st.lists(st.integers(), max_size=2), st.none()),
    "dependency_group_id": st.one_of(st.floats(), st.booleans(), st.none()),
    "target_names": st.one_of(st.just("weight"), st.just([""]), st.integers(), st.just(["nope"])),
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_invalid_configs_are_rejected_naming_the_key(cnn, data):
    mode = data.draw(st.sampled_from(["unknown_key", "bad_value"]))
    config = dict(_VALID)
    if mode == "unknown_key":
        key = data.draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in _KNOWN))
        config[key] = data.draw(_junk)
    else:
        key = data.draw(st.sampled_from(sorted(_bad_values)))
        config[key] = data.draw(_bad_values[key])
    with pytest.raises((ValueError, TypeError)) as info:
        LevelPruner(cnn, [config])
    assert repr(key) in str(info.value) or key in str(info.value)
