"""params.yaml validation: every bad key or value stops with the key, the value and what is allowed."""

import copy
from pathlib import Path

import pytest
import yaml

from cxr_core.params import ParamsError, load_params, validate

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


def test_unknown_model_and_cam_method_are_named():
    with pytest.raises(ParamsError, match=r"models\[1\] = 'densenet122'"):
        validate(_with("models", ["densenet121", "densenet122"]))
    with pytest.raises(ParamsError, match=r"cam.methods\[0\] = 'GradCam'.*GradCAM"):
        validate(_with("cam.methods", ["GradCam"]))


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "exp.yaml"
    bad.write_text(yaml.safe_dump(_with("seed", -3)))
    with pytest.raises(ParamsError, match=r"exp.yaml: seed = -3"):
        load_params(bad)
