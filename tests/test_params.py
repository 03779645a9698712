"""params.yaml validation: every bad key or value stops with the key, the value and what is allowed."""

import copy
from pathlib import Path

import pytest
import yaml

from cxr_core.app.cli import all_lookups
from cxr_core.params import ParamsError, load_params, registries, validate

ROOT = Path(__file__).parents[1]
SHIPPED = yaml.safe_load((ROOT / "params.yaml").read_text())


def _with(path: str, value):
    params = copy.deepcopy(SHIPPED)
    *parents, last = path.split(".")
    node = params
    for key in parents:
        node = node[key]
    node[last] = value
    return params


def test_shipped_params_are_valid_and_lr_is_top_level():
    params = load_params(ROOT / "params.yaml")
    assert params["lr"] == 0.0005
    assert params["data"]["source"] == "synthetic"
    assert params["train"]["pretrained"] is False


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("lr", -1, r"lr = -1 is not allowed; expected a number in \(0.0"),
        ("lr", "fast", r"lr = 'fast'"),
        ("preprocess.on_error", "ignore", r"preprocess.on_error = 'ignore'.*\['fail', 'skip'\]"),
        ("split.group_by", "study", r"split.group_by = 'study'.*\['patient', 'image'\]"),
        ("train.epochs", 0, r"train.epochs = 0 .*integer in \[1, 1000\]"),
        ("train.pretrained", "yes", r"train.pretrained = 'yes'.*true or false"),
        ("cam.thresholds", [0.1, 1.5], r"cam.thresholds\[1\] = 1.5"),
        ("data.source", "/no/such/folder", r"data.source = '/no/such/folder': no such folder"),
        ("models", ["densenet121", "densenet121"], r"models = .*without repeated items"),
    ],
)
def test_bad_values_name_key_value_and_allowed(path, value, message):
    with pytest.raises(ParamsError, match=message):
        validate(_with(path, value))


def test_unknown_and_missing_keys():
    params = copy.deepcopy(SHIPPED)
    params["train"]["learning_rate"] = 0.1
    with pytest.raises(ParamsError, match=r"unknown key\(s\) \['learning_rate'\] in train; allowed keys: \["):
        validate(params)
    params = copy.deepcopy(SHIPPED)
    del params["split"]["seed"]
    with pytest.raises(ParamsError, match=r"missing key\(s\) \['seed'\] in split"):
        validate(params)
    params = copy.deepcopy(SHIPPED)
    params["optimizer"] = "sgd"
    with pytest.raises(ParamsError, match=r"unknown key\(s\) \['optimizer'\] in the top level"):
        validate(params)


LOOKUPS = all_lookups()  # every registry the schema names, as the cxr command checks them


def test_every_registry_of_the_schema_has_a_lookup_and_the_shipped_names_pass():
    assert registries() == set(LOOKUPS)
    validate(SHIPPED, LOOKUPS)
    with pytest.raises(ValueError, match="no params field refers to registry"):
        validate(SHIPPED, {"optimizer": lambda name: name})


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("models", ["densenet121", "densenet122"], r"models\[1\] = 'densenet122'.*Did you mean"),
        ("cam.methods", ["GradCam"], r"cam.methods\[0\] = 'GradCam'.*GradCAM"),
        ("report.example_methods", ["Eigen"], r"report.example_methods\[0\] = 'Eigen'.*EigenCAM"),
        ("train.loss", "focal", r"train.loss = 'focal'.*class_averaged_bce"),
        ("train.device", "tpu", r"train.device = 'tpu'.*\['auto', 'cpu', 'cuda'\]"),
        ("train.amp", "fp16", r"train.amp = 'fp16'.*\['auto', 'bf16', 'none'\]"),
        ("cam.eigen_sign", "up", r"cam.eigen_sign = 'up'.*pytorch-grad-cam"),
    ],
)
def test_registry_names_are_checked_by_the_stage_that_uses_them(path, value, message):
    params = _with(path, value)
    validate(params)  # only the shape is checked without the registry: other stages need not import it
    with pytest.raises(ParamsError, match=message):
        validate(params, LOOKUPS)


def test_thresholds_that_would_share_a_metric_key_are_refused():
    with pytest.raises(ParamsError, match=r"cam.thresholds\[1\] = 0.104 .*at most 2 decimals"):
        validate(_with("cam.thresholds", [0.1, 0.104]))
    with pytest.raises(ParamsError, match=r"cam.box_thresholds\[0\] = 0.255"):
        validate(_with("cam.box_thresholds", [0.255]))
    assert validate(_with("cam.thresholds", [0.1, 0.15, 0.3]))["cam"]["thresholds"] == [0.1, 0.15, 0.3]


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "exp.yaml"
    bad.write_text(yaml.safe_dump(_with("seed", -3)))
    with pytest.raises(ParamsError, match=r"exp.yaml: seed = -3"):
        load_params(bad)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("test.ci", r"test.ci = 1.0 .*\[0.5, 1.0\)"),
        ("train.plateau_factor", r"plateau_factor = 1.0 .*\(0.0, 1.0\)"),
    ],
)
def test_open_upper_bounds_are_refused_before_any_work(path, message):
    with pytest.raises(ParamsError, match=message):
        validate(_with(path, 1.0))


def test_example_methods_must_be_computed_ones_where_methods_are_looked_up():
    params = _with("report.example_methods", ["LayerCAM"])  # a real method, not in cam.methods
    validate(params)  # stages that do not draw CAMs need not care
    with pytest.raises(ParamsError, match=r"report.example_methods = \['LayerCAM'\].*not in cam.methods"):
        validate(params, LOOKUPS)


def test_the_compared_box_accuracy_point_must_be_scored():
    from cxr_core.compare.study import CompareSettings

    ok = CompareSettings.from_params(validate(SHIPPED))
    assert (ok.box_threshold, ok.box_cutoff) == (
        SHIPPED["compare"]["box_threshold"],
        SHIPPED["compare"]["box_cutoff"],
    )
    with pytest.raises(ParamsError, match=r"compare.box_threshold = 0.25: \[0.25\] not in cam.thresholds"):
        CompareSettings.from_params(validate(_with("cam.thresholds", [0.1, 0.15, 0.3])))
    with pytest.raises(ParamsError, match=r"compare.box_cutoff = 0.1: .* not in cam.box_thresholds"):
        CompareSettings.from_params(validate(_with("cam.box_thresholds", [0.5])))
