"""Training recipe: learning, exact resume after a kill, seeded repeatability, schedule logic, stages."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torch.optim.optimizer import register_optimizer_step_pre_hook

from cxr_core.data.batches import CacheBatches, prepare_batch
from cxr_core.data.cache import load_cache
from cxr_core.data.tables import SplitTable
from cxr_core.evaluate.metrics import roc_points, summarise
from cxr_core.evaluate.predict import infer_logits, predict_probs
from cxr_core.files import _clean
from cxr_core.labels import LABELS
from cxr_core.models.checkpoints import CheckpointMeta, load_checkpoint, load_model
from cxr_core.models.registry import create_model, get_spec
from cxr_core.params import load_params
from cxr_core.runtime import Runtime
from cxr_core.train.config import TrainConfig
from cxr_core.train.control import CONTROL_NOTE, permuted_labels
from cxr_core.train.live import EPOCH_METRICS, TIMING_COLUMNS
from cxr_core.train.loop import (
    Progress,
    TrainingError,
    epoch_seed,
    fit,
    make_optimizer,
    make_scheduler,
    validation_metrics,
)
from cxr_core.train.losses import get_loss
from cxr_core.train.resume import BEST_FILE, LAST_FILE, pixel_digest

TINY = "test_resnet"  # ~0.4 M parameters: a few seconds per epoch on 2 CPU cores
EPOCHS = 3
TRAIN_IMAGES = 32  # a subset: 4 steps of 8 per epoch


@pytest.fixture(scope="module")
def data(phantom_data, single_thread):
    images, _ = load_cache(phantom_data.cache)
    train = SplitTable.read(phantom_data.splits, "train")
    train = SplitTable(train.table.iloc[:TRAIN_IMAGES].reset_index(drop=True))
    val = SplitTable.read(phantom_data.splits, "val")
    return images, train, val


@pytest.fixture(scope="module")
def cfg(phantom_data) -> TrainConfig:
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    params["train"].update(epochs=EPOCHS, batch_size=8, eval_batch_size=16, device="cpu")
    return TrainConfig.from_params(params, TINY, image_size=phantom_data.image_size, seed=params["seeds"][0])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cfg, data):
    """One uninterrupted run, shared by the resume and repeatability tests."""
    images, train, val = data
    out = tmp_path_factory.mktemp("reference")
    result = fit(cfg, images, train, val, out / "model", out / "live", timing_log=out / "timings.tsv")
    return out, result


def _model_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = _model_tensors(a), _model_tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


# --- learning -------------------------------------------------------------------------------------


def test_loss_falls_over_a_few_steps_on_phantom_data(data, cfg) -> None:
    images, train, _ = data
    torch.manual_seed(0)
    model = create_model(TINY, image_size=cfg.image_size)
    optimizer = make_optimizer(model, 1e-3)
    loss_fn = get_loss(cfg.loss)
    x_u8, y = next(iter(CacheBatches(images, train.rows, train.targets, 16)))
    x = prepare_batch(x_u8, "cpu", train=False)
    losses = []
    for _ in range(20):
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_fit_writes_checkpoints_history_and_dvclive(reference, cfg) -> None:
    out, result = reference
    assert sorted(p.name for p in (out / "model").iterdir()) == [BEST_FILE, LAST_FILE]
    assert [row["epoch"] for row in result.history] == list(range(1, EPOCHS + 1))
    assert result.resumed_from == 0 and not result.stopped_early
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    best = load_checkpoint(out / "model" / BEST_FILE)
    assert best["epoch"] == result.best_epoch and "optimizer" not in best
    assert best["val_loss"] == min(row["val_loss"] for row in result.history)
    assert (
        best["model_name"] == TINY and best["image_size"] == cfg.image_size and best["labels"] == list(LABELS)
    )
    last = load_checkpoint(out / "model" / LAST_FILE)
    assert {"model", "optimizer", "scheduler", "epoch", "progress", "history", "stopped_early"} <= last.keys()
    summary = json.loads((out / "live" / "metrics.json").read_text())
    assert summary["best_epoch"] == result.best_epoch
    assert summary["best_val_loss"] == pytest.approx(result.best_val_loss)
    for name in ("train_loss", "val_loss", "val_macro_auc", "lr"):
        logged = pd.read_csv(out / "live" / "plots" / "metrics" / f"{name}.tsv", sep="\t")
        assert logged["step"].tolist() == list(range(1, EPOCHS + 1)), name
    assert not (out / "live" / "dvc.yaml").exists()


def _keys(obj: object) -> set[str]:
    """Every mapping key anywhere in a nested checkpoint / JSON value (model weights' names excluded)."""
    if isinstance(obj, dict):
        found = {str(k) for k in obj}
        for key, value in obj.items():
            if key != "model":
                found |= _keys(value)
        return found
    if isinstance(obj, list | tuple):
        return set().union(*map(_keys, obj)) if obj else set()
    return set()


def _timing_like(names: set[str]) -> list[str]:
    return sorted(n for n in names if "second" in n.lower() or "time" in n.lower())


def test_tracked_outputs_hold_no_timing_and_the_timing_log_does(reference) -> None:
    """Seconds differ between identical runs, so they must stay out of everything dvc.lock hashes."""
    out, result = reference
    assert all(row.keys() == {"epoch", *EPOCH_METRICS} for row in result.history)
    for name in (BEST_FILE, LAST_FILE):
        keys = _keys(load_checkpoint(out / "model" / name))
        assert "epoch" in keys and not _timing_like(keys), name
    assert "val_loss" in _keys(load_checkpoint(out / "model" / LAST_FILE))  # the walk reaches the history
    summary_keys = _keys(json.loads((out / "live" / "metrics.json").read_text()))
    assert "best_epoch" in summary_keys and not _timing_like(summary_keys)
    plots = sorted((out / "live" / "plots" / "metrics").glob("*.tsv"))
    assert sorted(p.stem for p in plots) == sorted(EPOCH_METRICS)
    for plot in plots:
        assert pd.read_csv(plot, sep="\t").columns.tolist() == ["step", plot.stem]

    timings = pd.read_csv(out / "timings.tsv", sep="\t")
    assert timings.columns.tolist() == list(TIMING_COLUMNS)
    assert timings["epoch"].tolist() == list(range(1, EPOCHS + 1))
    assert (timings[["epoch_seconds", "images_per_second"]] > 0).all().all()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_identical_runs_write_byte_identical_outputs(tmp_path, reference, cfg, data) -> None:
    """Same seed, data and settings on the CPU: the same bytes, so dvc.lock's hashes repeat."""
    ref_dir, _ = reference
    images, train, val = data
    fit(cfg, images, train, val, tmp_path / "model", tmp_path / "live", timing_log=tmp_path / "timings.tsv")
    for name in (BEST_FILE, LAST_FILE):
        assert (tmp_path / "model" / name).read_bytes() == (ref_dir / "model" / name).read_bytes(), name
    ours, theirs = _files(tmp_path / "live"), _files(ref_dir / "live")
    assert ours.keys() == theirs.keys() and "metrics.json" in ours
    for name in ours:
        assert ours[name] == theirs[name], name


# --- resume and repeatability ---------------------------------------------------------------------


class Killed(Exception):
    pass


def _kill_after(epoch: int) -> Callable[[dict], None]:
    def callback(row: dict) -> None:
        if row["epoch"] == epoch:
            raise Killed(f"killed after epoch {epoch}")

    return callback


def test_killed_run_resumes_and_ends_with_identical_weights(tmp_path, reference, cfg, data) -> None:
    ref_dir, ref = reference
    images, train, val = data
    with pytest.raises(Killed):
        fit(cfg, images, train, val, tmp_path / "model", tmp_path / "live", on_epoch_end=_kill_after(1))
    assert load_checkpoint(tmp_path / "model" / LAST_FILE)["epoch"] == 1
    seen: list[int] = []
    result = fit(
        cfg,
        images,
        train,
        val,
        tmp_path / "model",
        tmp_path / "live",
        on_epoch_end=lambda r: seen.append(r["epoch"]),
    )
    assert result.resumed_from == 1 and seen == list(range(2, EPOCHS + 1))
    _assert_same_weights(tmp_path / "model" / LAST_FILE, ref_dir / "model" / LAST_FILE)
    _assert_same_weights(tmp_path / "model" / BEST_FILE, ref_dir / "model" / BEST_FILE)
    assert result.history == ref.history
    logged = pd.read_csv(tmp_path / "live" / "plots" / "metrics" / "val_loss.tsv", sep="\t")
    assert logged["step"].tolist() == list(range(1, EPOCHS + 1))  # no gap, no duplicate after the kill
    assert _files(tmp_path / "live") == _files(ref_dir / "live")  # the replayed log is the same bytes
    assert (tmp_path / "model" / BEST_FILE).read_bytes() == (ref_dir / "model" / BEST_FILE).read_bytes()

    again = fit(cfg, images, train, val, tmp_path / "model", tmp_path / "live")  # finished: nothing to do
    assert again.resumed_from == EPOCHS and len(again.history) == EPOCHS


def test_a_resumed_run_writes_the_same_last_pt_bytes(tmp_path, reference, cfg, data) -> None:
    ref_dir, _ = reference
    images, train, val = data
    with pytest.raises(Killed):
        fit(cfg, images, train, val, tmp_path / "model", on_epoch_end=_kill_after(1))
    fit(cfg, images, train, val, tmp_path / "model")
    assert (tmp_path / "model" / LAST_FILE).read_bytes() == (ref_dir / "model" / LAST_FILE).read_bytes()


def test_same_seed_same_history_other_settings_restart(tmp_path, reference, cfg, data) -> None:
    ref_dir, ref = reference
    images, train, val = data
    short = fit(replace(cfg, epochs=2), images, train, val, tmp_path / "model")
    assert short.history == ref.history[:2]
    # a longer run continues a shorter one exactly (epochs is not part of the resume key)
    longer = fit(cfg, images, train, val, tmp_path / "model")
    assert longer.resumed_from == 2
    _assert_same_weights(tmp_path / "model" / LAST_FILE, ref_dir / "model" / LAST_FILE)
    # other settings: last.pt is not resumed
    other = fit(replace(cfg, epochs=1, seed=1), images, train, val, tmp_path / "model")
    assert other.resumed_from == 0
    assert other.history[0]["train_loss"] != ref.history[0]["train_loss"]


@pytest.fixture()
def step_rates():
    """The learning rate of every optimiser step taken while the fixture is active."""
    rates: list[float] = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: rates.append(opt.param_groups[0]["lr"])
    )
    yield rates
    handle.remove()


def test_warm_up_rises_linearly_to_lr_then_leaves_it(tmp_path, cfg, data, step_rates) -> None:
    """Known answer: 4 steps per epoch, 2 warm-up epochs -> lr * 1/8, 2/8, ..., 8/8, then lr."""
    images, train, val = data
    steps = TRAIN_IMAGES // cfg.batch_size
    result = fit(replace(cfg, warmup_epochs=2), images, train, val, tmp_path / "model")
    expected = [cfg.lr * (i + 1) / (2 * steps) for i in range(2 * steps)] + [cfg.lr] * steps
    np.testing.assert_allclose(step_rates, expected, rtol=1e-12)
    assert [row["lr"] for row in result.history] == pytest.approx([cfg.lr / 2, cfg.lr, cfg.lr])


def test_a_killed_warm_up_run_resumes_exactly(tmp_path, cfg, data, step_rates) -> None:
    images, train, val = data
    warm = replace(cfg, warmup_epochs=2)
    full = fit(warm, images, train, val, tmp_path / "full")
    rates_full = list(step_rates)
    step_rates.clear()
    with pytest.raises(Killed):
        fit(warm, images, train, val, tmp_path / "killed", on_epoch_end=_kill_after(1))
    resumed = fit(warm, images, train, val, tmp_path / "killed")
    assert resumed.resumed_from == 1 and resumed.history == full.history
    assert step_rates == rates_full  # epoch 2 replays the second half of the warm-up
    _assert_same_weights(tmp_path / "killed" / LAST_FILE, tmp_path / "full" / LAST_FILE)
    # warm-up is part of the resume key: the run without it does not continue this one
    assert fit(cfg, images, train, val, tmp_path / "killed").resumed_from == 0


def test_permuted_labels_move_whole_rows_and_depend_on_the_seed_only(data) -> None:
    _, train, _ = data
    before = train.targets.copy()
    shuffled = permuted_labels(train, seed=0)
    assert np.array_equal(train.targets, before)  # the caller's table is not touched
    assert np.array_equal(shuffled.rows, train.rows) and np.array_equal(shuffled.patients, train.patients)
    # the same label rows (prevalences and co-occurrences kept), paired with other images
    key = lambda t: sorted(map(tuple, t.targets.tolist()))  # noqa: E731
    assert key(shuffled) == key(train)
    assert not np.array_equal(shuffled.targets, train.targets)
    assert np.array_equal(permuted_labels(train, seed=0).targets, shuffled.targets)
    assert not np.array_equal(permuted_labels(train, seed=1).targets, shuffled.targets)


def test_a_control_run_trains_on_permuted_labels_and_its_checkpoint_says_so(
    tmp_path, cfg, data, monkeypatch
) -> None:
    images, train, val = data
    seen: list[np.ndarray] = []
    real_batches = CacheBatches.__init__

    def spy(self, images, rows, targets, *args, **kwargs):
        seen.append(np.asarray(targets).copy())
        real_batches(self, images, rows, targets, *args, **kwargs)

    monkeypatch.setattr(CacheBatches, "__init__", spy)
    fit(replace(cfg, epochs=1, shuffle_labels=True), images, train, val, tmp_path / "model")
    assert np.array_equal(seen[0], permuted_labels(train, cfg.seed).targets)  # what the loss saw
    meta = CheckpointMeta.of(load_checkpoint(tmp_path / "model" / BEST_FILE), "best.pt")
    assert meta.label_file == f"{cfg.label_file} ({CONTROL_NOTE})"
    assert load_checkpoint(tmp_path / "model" / LAST_FILE)["resume_key"]["shuffle_labels"] is True


def test_epoch_seeds_depend_only_on_their_inputs() -> None:
    assert epoch_seed(0, 3, 1) == epoch_seed(0, 3, 1)
    seeds = {epoch_seed(s, e, k, r) for s in (0, 1) for e in (1, 2) for k in (1, 2) for r in (0, 1)}
    assert len(seeds) == 16 and all(0 <= s < 2**63 for s in seeds)


# --- schedule logic -------------------------------------------------------------------------------


def _run_schedule(val_losses: list[float], plateau_patience: int, early_stop_patience: int):
    """The loop's bookkeeping on a constructed val-loss sequence: lr used per epoch, stop epoch."""
    optimizer = make_optimizer(torch.nn.Linear(1, 1), 5e-4)
    scheduler = make_scheduler(optimizer, 0.5, plateau_patience)
    progress = Progress()
    lrs = []
    for epoch, loss in enumerate(val_losses, start=1):
        lrs.append(optimizer.param_groups[0]["lr"])
        progress.update(epoch, loss, 0.5)
        scheduler.step(loss)
        if progress.should_stop(early_stop_patience):
            return lrs, epoch, progress
    return lrs, None, progress


def test_plateau_halves_lr_and_early_stop_fires_on_a_constructed_sequence() -> None:
    # paper settings: halve after 3 epochs without improvement, stop after 5
    lrs, stop, progress = _run_schedule([1.0, 0.8, 0.9, 0.85, 0.81, 0.9, 0.95, 0.99], 3, 5)
    assert lrs == [5e-4] * 6 + [2.5e-4]  # bad epochs 3, 4, 5, 6: the 4th (> patience) halves
    assert stop == 7 and progress.best_epoch == 2 and progress.best_loss == 0.8
    # an improvement resets both counters
    lrs, stop, progress = _run_schedule([1.0, 1.1, 1.2, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], 3, 5)
    assert stop == 9 and progress.best_epoch == 4 and lrs[-1] == 2.5e-4 and lrs[-2] == 5e-4
    # equal is not better (strict), and patience 1 stops at the first non-improvement
    _, stop, _ = _run_schedule([1.0, 1.0], 3, 1)
    assert stop == 2


# --- evaluation -----------------------------------------------------------------------------------


def test_evaluate_is_batch_size_independent_and_restores_mode(data, cfg) -> None:
    images, _, val = data
    torch.manual_seed(0)
    model = create_model(TINY, image_size=cfg.image_size).train()
    a = predict_probs(model, images, val.rows, runtime=Runtime.cpu(), batch_size=5)
    b = predict_probs(
        model, images, val.rows, runtime=replace(Runtime.cpu(), channels_last=True), batch_size=64
    )
    assert model.training and a.dtype == np.float32 and a.shape == (len(val.rows), len(LABELS))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    logits = infer_logits(model, images, val.rows, runtime=Runtime.cpu(), batch_size=7)
    loss, auc = validation_metrics(logits, val.targets, get_loss("bce"))
    assert np.isfinite(loss) and 0.0 <= auc <= 1.0


def test_fit_rejects_impossible_settings(tmp_path, cfg, data) -> None:
    images, train, val = data
    with pytest.raises(TrainingError, match="lower train.batch_size"):
        fit(replace(cfg, batch_size=64), images, train, val, tmp_path)
    with pytest.raises(TrainingError, match="validation split is empty"):
        fit(cfg, images, train, SplitTable(val.table.iloc[:0]), tmp_path)


# --- stages ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory, phantom_data, single_thread):
    """train + test stages through their click commands, one epoch of the tiny model."""
    import yaml

    from stages import test as test_stage
    from stages import train as train_stage

    root = tmp_path_factory.mktemp("stages")
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["models"] = [TINY]
    params["train"].update(epochs=1, batch_size=8, device="cpu")
    params["test"].update(bootstrap=50, roc_points=20)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    p = {
        "params": root / "params.yaml",
        "model_dir": root / "data" / "models" / TINY / "seed0",
        "metrics": root / "metrics" / "test" / TINY / "seed0.json",
        "roc": root / "plots" / "roc" / TINY / "seed0.csv",
        "predictions": root / "data" / "predictions" / TINY / "seed0.npz",
    }
    common = ["--model", TINY, "--params", str(p["params"]), "--cache", str(phantom_data.cache)]
    common += ["--splits", str(phantom_data.splits)]
    runner = CliRunner()
    out = runner.invoke(
        train_stage.main,
        [*common, "--seed", "0", "--raw", str(phantom_data.raw), "--out", str(p["model_dir"])]
        + ["--live", str(root / "metrics" / "train" / TINY / "seed0")]
        + ["--timings", str(root / "logs" / f"{TINY}.tsv")],
        catch_exceptions=False,
    )
    assert out.exit_code == 0, out.output
    out = runner.invoke(
        test_stage.main,
        [
            *common,
            "--checkpoint",
            str(p["model_dir"] / BEST_FILE),
            "--metrics",
            str(p["metrics"]),
            "--roc",
            str(p["roc"]),
            "--predictions",
            str(p["predictions"]),
        ],
        catch_exceptions=False,
    )
    assert out.exit_code == 0, out.output
    return p


def test_test_stage_json_matches_summarise_on_saved_probabilities(stage_run, phantom_data) -> None:
    params = load_params(stage_run["params"])
    saved = np.load(stage_run["predictions"], allow_pickle=False)
    test_table = pd.read_csv(phantom_data.splits / "test.csv", dtype={"image": str})
    assert saved["probs"].dtype == np.float32 and saved["probs"].shape == (len(test_table), len(LABELS))
    assert saved["images"].tolist() == test_table["image"].tolist()
    np.testing.assert_array_equal(saved["rows"], test_table["row"].to_numpy())
    np.testing.assert_array_equal(saved["targets"], test_table[list(LABELS)].to_numpy())

    expected = summarise(
        saved["targets"],
        saved["probs"],
        test_table["patient"].to_numpy(),
        n_boot=params["test"]["bootstrap"],
        ci=params["test"]["ci"],
        seed=params["seed"],
    )
    assert json.loads(stage_run["metrics"].read_text()) == json.loads(json.dumps(_clean(expected)))

    images, _ = load_cache(phantom_data.cache)
    model, meta = load_model(stage_run["model_dir"] / BEST_FILE, model_name=TINY)
    runtime = Runtime.from_params(params["train"], get_spec(TINY))  # as the test stage runs it
    probs = predict_probs(model, images, saved["rows"], runtime=runtime, batch_size=64)
    np.testing.assert_allclose(saved["probs"], probs, rtol=1e-5, atol=1e-6)

    roc = pd.read_csv(stage_run["roc"])
    assert list(roc.columns) == ["label", "fpr", "tpr"]
    curves = roc_points(saved["targets"], saved["probs"], max_points=params["test"]["roc_points"])
    assert roc["label"].unique().tolist() == list(curves)
    for name, (fpr, _tpr) in curves.items():
        np.testing.assert_allclose(roc.loc[roc["label"] == name, "fpr"], fpr, atol=1e-6)


def test_train_stage_writes_one_checkpoint_pair(stage_run) -> None:
    assert sorted(p.name for p in stage_run["model_dir"].iterdir()) == [BEST_FILE, LAST_FILE]
    assert load_checkpoint(stage_run["model_dir"] / LAST_FILE)["resume_key"]["world_size"] == 1


def test_checkpoints_say_which_data_trained_them(stage_run) -> None:
    """The raw manifest's source and label file go into both checkpoints: phantom weights say so."""
    for name in (BEST_FILE, LAST_FILE):
        state = load_checkpoint(stage_run["model_dir"] / name)
        assert (state["data_source"], state["label_file"]) == (
            "synthetic",
            "Data_Entry_2017_v2020.csv (phantom)",
        )
        assert CheckpointMeta.of(state, name).phantom


def test_the_seed_option_is_the_training_seed(tmp_path, cfg, data) -> None:
    """Another seed: other initial weights and batches (the seeds matrix trains different models)."""
    images, train, val = data
    one = fit(replace(cfg, epochs=1, seed=1), images, train, val, tmp_path / "one")
    two = fit(replace(cfg, epochs=1, seed=1), images, train, val, tmp_path / "two")
    other = fit(replace(cfg, epochs=1, seed=2), images, train, val, tmp_path / "other")
    assert one.best_val_loss == two.best_val_loss != other.best_val_loss
    _assert_same_weights(tmp_path / "one" / BEST_FILE, tmp_path / "two" / BEST_FILE)


def test_cpu_bf16_training_is_repeatable_and_in_the_resume_key(tmp_path, cfg, data) -> None:
    """``amp: bf16`` on the CPU autocasts (as ``auto`` does for DenseNets and Swins): still
    byte-repeatable, and a float32 last.pt is not resumed under it."""
    images, train, val = data
    bf16 = replace(cfg, epochs=1, amp="bf16")
    assert bf16.runtime().amp and not cfg.runtime().amp  # test_resnet: not a family that gains
    fit(bf16, images, train, val, tmp_path / "a")
    fit(bf16, images, train, val, tmp_path / "b")
    assert (tmp_path / "a" / LAST_FILE).read_bytes() == (tmp_path / "b" / LAST_FILE).read_bytes()
    fit(replace(cfg, epochs=1), images, train, val, tmp_path / "fp32")
    assert fit(replace(bf16, epochs=2), images, train, val, tmp_path / "fp32").resumed_from == 0


def test_pixel_digest_sees_a_regenerated_cache():
    """A cache rebuilt with other pixels (same shape and rows) must not be resumed from."""
    images = np.random.default_rng(0).integers(0, 255, (50, 8, 8), dtype=np.uint8)
    rows = np.arange(50)
    before = pixel_digest(images, rows)
    assert pixel_digest(images.copy(), rows[::-1]) == before  # order of rows does not matter
    changed = images.copy()
    changed[rows[-1]] += 1
    assert pixel_digest(changed, rows) != before


def test_a_last_pt_from_another_runtime_is_not_resumed(tmp_path, cfg, data) -> None:
    """``channels_last`` (like ``device: auto`` on another machine) changes the float results: the
    resume key holds the runtime it resolves to, so such a last.pt trains from scratch."""
    images, train, val = data
    assert cfg.runtime().channels_last, "the tiny CNN runs channels_last by default"
    fit(replace(cfg, epochs=1), images, train, val, tmp_path / "model")
    same = fit(replace(cfg, epochs=2), images, train, val, tmp_path / "model")
    assert same.resumed_from == 1
    other = fit(replace(cfg, epochs=3, channels_last=False), images, train, val, tmp_path / "model")
    assert other.resumed_from == 0


def test_a_queue_neighbour_removing_dvclives_signal_file_does_not_fail_the_run(tmp_path, monkeypatch) -> None:
    """Two queued experiments share dvclive's VS Code signal file; the one that finds it gone in
    ``Live.end`` must still finish (this failed `dvc queue start -j 2` runs at random)."""
    from cxr_core.train import live as live_module

    log = live_module.EpochLog(tmp_path / "live")
    signal = tmp_path / ".dvc" / "tmp" / "exps" / "run" / "DVCLIVE_STEP_COMPLETED"

    def raced() -> None:
        raise FileNotFoundError(2, "No such file or directory", str(signal))

    monkeypatch.setattr("dvclive.live.cleanup_dvclive_step_completed", raced)
    log.finish({"epochs_trained": 1, "best_val_loss": 0.5})
    assert (tmp_path / "live" / "metrics.json").is_file()

    def other() -> None:
        raise FileNotFoundError(2, "No such file or directory", "elsewhere.json")

    monkeypatch.setattr("dvclive.live.cleanup_dvclive_step_completed", other)
    with pytest.raises(FileNotFoundError):
        live_module.EpochLog(tmp_path / "live2").finish({"epochs_trained": 1})
