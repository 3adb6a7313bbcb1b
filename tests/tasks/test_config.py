"""Config: params.yaml becomes one validated, frozen object; bad keys are named."""

from __future__ import annotations

import dataclasses

import pytest

from tasks.core.config import ConfigError, Params, load_params, params_from_dict, params_hash


def test_defaults_when_params_file_absent(tmp_path):
    params = load_params(tmp_path / "nope.yaml")
    assert params == Params()
    assert params.train.precision == "auto"
    assert params.replay.strategy == "reservoir"


def test_repo_params_yaml_loads(repo):
    params = load_params(repo / "params.yaml")
    assert isinstance(params, Params)
    # Every section in the file is a known section with valid values.
    assert params.model.base == "minilm"
    assert params.train.precision in {"auto", "fp32", "bf16"}
    assert 0 <= params.gate.tolerance < 1


def test_workspace_fixture_params_load(workspace):
    params = load_params(workspace / "params.yaml")
    assert params.model.base == "tiny"
    assert params.train.epochs == 20
    # sections not in the file fall back to defaults
    assert params.drift == Params().drift


def test_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("")
    assert load_params(path) == Params()


def test_params_are_frozen():
    params = Params()
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.train.epochs = 3  # type: ignore[misc]


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"train\.epoch\b"):
        params_from_dict({"train": {"epoch": 3}})


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match="trian"):
        params_from_dict({"trian": {"epochs": 3}})


def test_unknown_key_in_yaml_file_is_named(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("gate:\n  tolerence: 0.1\n")
    with pytest.raises(ConfigError, match=r"gate\.tolerence"):
        load_params(path)


@pytest.mark.parametrize("section,key,value", [
    ("train", "epochs", "four"),
    ("train", "epochs", 2.5),
    ("train", "lr", "1e-4x"),
    ("model", "base", 3),
    ("replay", "capacity", True),
    ("gate", "tolerance", False),
])
def test_wrong_type_names_the_key(section, key, value):
    with pytest.raises(ConfigError, match=rf"{section}\.{key}"):
        params_from_dict({section: {key: value}})


def test_section_must_be_mapping():
    with pytest.raises(ConfigError, match="train"):
        params_from_dict({"train": [1, 2]})


def test_invalid_yaml_is_config_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: {epochs: [\n")
    with pytest.raises(ConfigError):
        load_params(path)


@pytest.mark.parametrize("value", ["fp16", "FP32", "float32", ""])
def test_precision_choices_enforced(value):
    with pytest.raises(ConfigError, match=r"train\.precision"):
        params_from_dict({"train": {"precision": value}})


@pytest.mark.parametrize("value", ["auto", "fp32", "bf16"])
def test_precision_choices_accepted(value):
    assert params_from_dict({"train": {"precision": value}}).train.precision == value


def test_device_and_strategy_choices_enforced():
    with pytest.raises(ConfigError, match=r"train\.device"):
        params_from_dict({"train": {"device": "tpu"}})
    with pytest.raises(ConfigError, match=r"replay\.strategy"):
        params_from_dict({"replay": {"strategy": "fifo"}})


def test_negative_values_rejected():
    with pytest.raises(ConfigError, match=r"gate\.tolerance"):
        params_from_dict({"gate": {"tolerance": -0.1}})


@pytest.mark.parametrize("key", ["epochs", "batch_size"])
def test_zero_epochs_or_batch_size_rejected(key):
    with pytest.raises(ConfigError, match=key):
        params_from_dict({"train": {key: 0}})


def test_int_coerced_to_float():
    params = params_from_dict({"train": {"lr": 1}, "gate": {"tolerance": 0}})
    assert params.train.lr == 1.0 and type(params.train.lr) is float
    assert type(params.gate.tolerance) is float


def test_float_not_coerced_to_int():
    with pytest.raises(ConfigError, match=r"validate\.min_rows"):
        params_from_dict({"validate": {"min_rows": 10.0}})


def test_overrides_apply(workspace):
    params = load_params(workspace / "params.yaml", {"train.epochs": 1, "gate.tolerance": 0.5})
    assert params.train.epochs == 1
    assert params.gate.tolerance == 0.5
    # other keys in the overridden section keep their file values
    assert params.train.batch_size == 16
    assert params.train.seed == 7


def test_overrides_without_file(tmp_path):
    params = load_params(tmp_path / "missing.yaml", {"train.epochs": 1, "intake.test_share": 0.5})
    assert params.train.epochs == 1
    assert params.intake.test_share == 0.5
    assert params.train.batch_size == Params().train.batch_size


def test_overrides_are_validated(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epochz"):
        load_params(tmp_path / "missing.yaml", {"train.epochz": 1})
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_params(tmp_path / "missing.yaml", {"train.epochs": "x"})
    with pytest.raises(ConfigError, match="section.key"):
        load_params(tmp_path / "missing.yaml", {"epochs": 1})


def test_params_hash_stable_and_sensitive(workspace):
    a = load_params(workspace / "params.yaml")
    b = load_params(workspace / "params.yaml")
    assert params_hash(a) == params_hash(b)
    assert len(params_hash(a)) == 16
    assert params_hash(Params()) == params_hash(Params())
    changed = load_params(workspace / "params.yaml", {"train.epochs": 21})
    assert params_hash(changed) != params_hash(a)
    # int 1 and float 1.0 for a float key are the same effective parameter
    assert params_hash(params_from_dict({"train": {"lr": 1}})) == params_hash(params_from_dict({"train": {"lr": 1.0}}))


def test_params_hash_distinct_over_many_single_changes():
    """Invariant: changing any one value changes the hash."""
    base = Params()
    seen = {params_hash(base)}
    for section in dataclasses.fields(Params):
        sub = getattr(base, section.name)
        for f in dataclasses.fields(sub):
            value = getattr(sub, f.name)
            if isinstance(value, (str, tuple)):  # a tuple: remediation.ladder, tested on its own
                continue
            if isinstance(value, bool):  # a flag flips (True + 1 is not a bool)
                bumped = not value
            else:
                bumped = value + 1 if isinstance(value, int) else value + 0.5
            params = params_from_dict({section.name: {f.name: bumped}})
            h = params_hash(params)
            assert h not in seen, f"{section.name}.{f.name}"
            seen.add(h)


def test_registry_mirror_must_be_an_s3_uri():
    assert Params().registry.mirror == "" and Params().registry.endpoint_url == ""
    ok = params_from_dict({"registry": {"mirror": "s3://bucket/ratchet", "endpoint_url": "http://127.0.0.1:9000"}})
    assert ok.registry.mirror == "s3://bucket/ratchet"
    for bad in ("/srv/models", "s3://", "bucket/prefix"):
        with pytest.raises(ConfigError, match="registry.mirror"):
            params_from_dict({"registry": {"mirror": bad}})
    with pytest.raises(ConfigError, match="registry.mirrors"):
        params_from_dict({"registry": {"mirrors": "s3://b"}})


def test_remediation_ladder_rungs_are_validated_when_params_load():
    ok = params_from_dict({"remediation": {"ladder": [{"train.distill_weight": 1.0}, {"replay.ratio": 2}]}})
    from tasks.core.config import attempt_params

    assert attempt_params(ok, 0) is ok
    assert attempt_params(ok, 1).train.distill_weight == 1.0 and attempt_params(ok, 2).replay.ratio == 2.0
    assert attempt_params(ok, 2).train.distill_weight == 0.0  # each rung applies on top of the params, alone
    for bad, named in (([{"train.no_such_key": 1}], "remediation.ladder\[0\]"),
                       ([{"train.lr": "fast"}], "train.lr"), ({"train.lr": 1}, "list of mappings"),
                       ([{"lr": 1}], "section.key"), ([{"remediation.max_attempts": 9}], "section.key")):
        with pytest.raises(ConfigError, match=named):
            params_from_dict({"remediation": {"ladder": bad}})
    with pytest.raises(ConfigError, match="max_attempts"):
        params_from_dict({"remediation": {"max_attempts": 0}})
