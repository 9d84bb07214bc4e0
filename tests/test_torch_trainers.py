"""End-to-end tests of the torch trainers (torch_models.train_mlp / train_convnet) on the CPU.

Everything runs on the tiny synthetic CIFAR-10 of ``tests/conftest.py`` (1000 training,
200 test images); ConvNet runs use batches of 4 and a few test images, since the
network is heavy for a 2-core machine.
"""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

from fastmlp import loop  # noqa: E402
from fastmlp.cli import flag_actions  # noqa: E402
from fastmlp.data import LABEL_NAMES, DataSet, get_cifar10  # noqa: E402
from fastmlp.modelfile import load as load_model_file  # noqa: E402
from fastmlp.runlog import DivergenceError  # noqa: E402
from torch_models import checkpoint as tcheckpoint  # noqa: E402
from torch_models import evaluation, precision, rng, train_convnet, train_mlp  # noqa: E402
from torch_models.config import ConvNetConfig, TorchMLPConfig  # noqa: E402
from torch_models.convnet_run import augment_batch  # noqa: E402
from torch_models.distributed import DistContext  # noqa: E402
from torch_models.mlp_run import initialize_parameters  # noqa: E402
from torch_models.optimizers import make_optimizer, parameter_groups  # noqa: E402
from torch_models.trainer import TrainerSpec, fit  # noqa: E402
from _trainer_runs import Interrupted, run_cut_and_resume, train_until  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
# Every run here is a CPU run, also on a machine with a GPU (where --device auto would pick
# it): these tests expect CPU behaviour, e.g. bit-identical resumes. GPU runs: test_torch_gpu.py.
CPU = ["--device", "cpu"]
needs_native_bf16 = pytest.mark.skipif(
    not precision.cpu_bf16_features(),
    reason="this CPU has no native bf16 (no avx512_bf16, amx_bf16 or bf16 flag): --amp trains in float32 here")
METRIC_KEYS = {"test_accuracy", "test_loss", "best_test_accuracy", "steps", "wall_seconds", "flags",
               "seconds_per_step", "out_dir", "fastmlp_version"}


@pytest.fixture(autouse=True)
def _one_thread():
    # Identical thread counts make CPU results bit-reproducible; one thread suits a 2-core CI box.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def mlp_data(synthetic_cifar_dir):
    """Synthetic CIFAR-10, flattened, with a 100-image validation split (900 train, 200 test)."""
    return get_cifar10(synthetic_cifar_dir, one_hot=False, validation_size=100, flatten=True)


@pytest.fixture(scope="module")
def conv_data(synthetic_cifar_dir):
    """Synthetic CIFAR-10 as images, test split cut to 12 images to keep ConvNet evaluation cheap."""
    data = get_cifar10(synthetic_cifar_dir, one_hot=False, flatten=False)
    x, y = data["test"].as_arrays()
    return {"train": data["train"], "validation": None, "test": DataSet(x[:12], y[:12])}


def read_curves(out_dir: Path) -> list[dict[str, str]]:
    with open(out_dir / "curves.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_outputs(out_dir: Path, *, steps: int, eval_steps: list[int], validation: bool, plot: bool = False) -> dict:
    """Check the output files of a finished run (curves.png with ``plot``, i.e. --plot); return metrics.json."""
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["steps"] == steps
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and np.isfinite(metrics["test_loss"])
    assert ("validation_accuracy" in metrics) == validation
    rows = read_curves(out_dir)
    assert [int(r["step"]) for r in rows] == eval_steps
    assert all(r["test_accuracy"] != "" for r in rows)
    assert all(r["train_loss"] != "" and r["learning_rate"] != "" for r in rows[1:])  # step 0: no batch yet
    assert float(rows[-1]["test_accuracy"]) == pytest.approx(metrics["test_accuracy"])
    assert (out_dir / "curves.png").is_file() == plot
    if plot:
        png = (out_dir / "curves.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    checkpoint = tcheckpoint.load_checkpoint(out_dir)
    assert checkpoint["step"] == steps
    assert {"model", "optimizer", "scheduler", "rng", "train_data", "curves"} <= set(checkpoint)
    assert checkpoint["rng"]["per_rank"][0]["torch"].dtype == torch.uint8
    assert not [p.name for p in out_dir.iterdir() if p.name.endswith(".tmp")]  # no half-written leftovers
    return metrics


def params_of(out_dir: Path) -> dict[str, torch.Tensor]:
    return tcheckpoint.load_checkpoint(out_dir)["model"]


# --------------------------------------------------------------------------- end to end
def test_mlp_cli_course_defaults_writes_outputs_and_beats_chance(tmp_path, synthetic_cifar_dir, capsys):
    out = tmp_path / "run"
    code = train_mlp.main([*CPU, "--data_dir", str(synthetic_cifar_dir), "--max_steps", "60", "--eval_freq", "20",
                           "--validation_size", "100", "--out_dir", str(out), "--plot"])
    assert code == 0
    metrics = assert_outputs(out, steps=60, eval_steps=[0, 20, 40, 60], validation=True, plot=True)
    assert metrics["flags"]["optimizer"] == "sgd" and metrics["flags"]["learning_rate"] == 2e-3
    assert metrics["flags"]["dnn_hidden_units"] == [100]
    # 10 balanced classes: chance is 0.1; the synthetic classes are easy to separate.
    assert metrics["test_accuracy"] > 0.5 and metrics["validation_accuracy"] > 0.5
    assert float(read_curves(out)[0]["test_accuracy"]) < 0.3  # the untrained model is near chance
    assert "test accuracy" in capsys.readouterr().out
    # The run's model file predicts the raw test images as the run's evaluation did (float32 sums in
    # another order: an image on a near tie may go the other way).
    test = get_cifar10(synthetic_cifar_dir, one_hot=False)["test"]
    predicted = load_model_file(out).predict(test.raw_images)
    assert np.mean(predicted == np.array(LABEL_NAMES)[test.labels]) == pytest.approx(metrics["test_accuracy"],
                                                                                      abs=0.011)


def test_mlp_logistic_regression_adam_batchnorm_dropout(tmp_path, mlp_data):
    args = train_mlp.build_parser().parse_args([*CPU, 
        "--dnn_hidden_units", "", "--optimizer", "adam", "--learning_rate", "1e-3", "--max_steps", "10",
        "--eval_freq", "5", "--out_dir", str(tmp_path / "lr"), "--quiet"])
    metrics = train_mlp.train(args, data=mlp_data)
    assert args.hidden_units == [] and metrics["flags"]["dnn_hidden_units"] == []  # recorded by its flag's name
    assert metrics["n_parameters"] == 3072 * 10 + 10  # one Linear layer
    args = train_mlp.build_parser().parse_args([*CPU, 
        "--dnn_hidden_units", "64,32", "--batchnorm", "custom", "--dropout", "0.2", "--weight_decay", "1e-4",
        "--max_steps", "10", "--eval_freq", "5", "--out_dir", str(tmp_path / "deep"), "--quiet"])
    metrics = train_mlp.train(args, data=mlp_data)
    assert_outputs(tmp_path / "deep", steps=10, eval_steps=[0, 5, 10], validation=True)
    # batch normalisation folded into the model file's linear layers, dropout left out
    x, y = mlp_data["test"].as_arrays(flatten=True)
    assert load_model_file(tmp_path / "deep").model.evaluate(x, y)[1] == pytest.approx(metrics["test_accuracy"],
                                                                                      abs=0.011)


def test_convnet_cli_dry_run_with_extras(tmp_path, small_cifar_dir, capsys, monkeypatch):
    # On a CPU without native bf16, --amp runs float32, says so once and records what it applied.
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda: ())
    out = tmp_path / "conv"
    with pytest.warns(UserWarning, match="no native bf16") as warned:
        code = train_convnet.main([
            *CPU, "--data_dir", str(small_cifar_dir), "--dry_run", "--batch_size", "4", "--eval_batch_size", "50",
            "--augment", "--lr_schedule", "onecycle", "--amp", "--preprocessing", "standardize",
            "--threads", "1", "--out_dir", str(out)])
    assert code == 0
    assert len([w for w in warned if "bf16" in str(w.message)]) == 1
    printed = capsys.readouterr().out
    assert "dry run" in printed and "parameters" in printed and "precision: float32" in printed
    metrics = assert_outputs(out, steps=loop.DRY_RUN_STEPS, eval_steps=[0, 2, 4], validation=False)
    assert metrics["amp"] is False and metrics["amp_requested"] is True and metrics["autocast_dtype"] is None
    assert metrics["channels_last"] is False  # the default follows the autocast actually applied
    assert metrics["dry_run"] is True and metrics["device"] == "cpu"
    checkpoint = tcheckpoint.load_checkpoint(out)
    assert checkpoint["precision"]["amp"] is False and checkpoint["flags"]["amp"] is True  # applied vs asked
    assert checkpoint["scheduler"]["total_steps"] == 5000  # the schedule spans the full --max_steps
    assert checkpoint["trainer"] == "train_convnet"


@needs_native_bf16
def test_convnet_amp_trains_in_bf16_on_a_cpu_with_native_bf16(tmp_path, conv_data):
    flags = [*CPU, "--batch_size", "4", "--max_steps", "3", "--eval_freq", "3", "--learning_rate", "1e-3", "--quiet"]
    parser = train_convnet.build_parser()
    amp = train_convnet.train(parser.parse_args(flags + ["--amp", "--out_dir", str(tmp_path / "amp")]), data=conv_data)
    fp32 = train_convnet.train(parser.parse_args(flags + ["--out_dir", str(tmp_path / "fp32")]), data=conv_data)
    assert amp["amp"] is True and amp["autocast_dtype"] == "bfloat16" and amp["grad_scaler"] is False
    assert amp["channels_last"] is True and set(amp["precision_features"]) <= set(precision.CPU_BF16_FLAGS)
    assert fp32["amp"] is False and fp32["channels_last"] is False
    rows = read_curves(tmp_path / "amp")
    assert np.isfinite(amp["test_loss"]) and np.isfinite(float(rows[-1]["train_loss"]))
    assert amp["test_loss"] != fp32["test_loss"]  # the bf16 arithmetic really ran
    checkpoint = tcheckpoint.load_checkpoint(tmp_path / "amp")
    assert checkpoint["precision"]["autocast_dtype"] == "bfloat16"
    assert all(t.dtype in (torch.float32, torch.int64) for t in checkpoint["model"].values())  # weights stay fp32


def test_convnet_resume_across_amp_settings(tmp_path, small_cifar_dir, monkeypatch):
    # Any CPU can run bf16 autocast (natively or emulated): pretend this one has it.
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda: ("avx512_bf16",))
    run = tmp_path / "run"
    common = [*CPU, "--data_dir", str(small_cifar_dir), "--batch_size", "4", "--eval_freq", "2",
              "--threads", "1", "--quiet"]
    assert train_convnet.main(common + ["--max_steps", "2", "--out_dir", str(run)]) == 0
    with pytest.warns(UserWarning, match="trained under float32 autocast, this run trains under bfloat16"):
        assert train_convnet.main(common + ["--resume", str(run), "--amp", "--max_steps", "4"]) == 0
    checkpoint = tcheckpoint.load_checkpoint(run)
    assert checkpoint["step"] == 4 and checkpoint["precision"]["autocast_dtype"] == "bfloat16"
    assert all(t.dtype in (torch.float32, torch.int64) for t in checkpoint["model"].values())
    # --amp is now taken from the checkpoint; --no-amp turns it off again.
    with pytest.warns(UserWarning, match="trained under bfloat16 autocast, this run trains under float32"):
        assert train_convnet.main(common + ["--resume", str(run), "--no-amp", "--max_steps", "6"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["amp"] is False and metrics["flags"]["amp"] is False
    assert [int(r["step"]) for r in read_curves(run)] == [0, 2, 4, 6]
    assert all(np.isfinite(float(r["test_loss"])) for r in read_curves(run))


def test_convnet_checkpoint_with_one_optimizer_group_is_refused_clearly(tmp_path, conv_data):
    # ConvNet checkpoints written before --weight_decay existed hold one Adam parameter group.
    parser = train_convnet.build_parser()
    flags = [*CPU, "--batch_size", "2", "--eval_freq", "1", "--quiet"]
    train_convnet.train(parser.parse_args(flags + ["--max_steps", "1", "--out_dir", str(tmp_path)]), data=conv_data)
    checkpoint = tcheckpoint.load_checkpoint(tmp_path)
    from torch_models.convnet import ConvNet

    checkpoint["optimizer"] = torch.optim.Adam(ConvNet(3, 10).parameters()).state_dict()
    tcheckpoint.save_checkpoint(tmp_path / tcheckpoint.CHECKPOINT_NAME, checkpoint)
    with pytest.raises(ValueError, match="--resume: the checkpoint's optimizer state does not fit"):
        train_convnet.train(parser.parse_args(flags + ["--max_steps", "2", "--resume", str(tmp_path)]),
                            data=conv_data)


def test_batch_too_small_for_batchnorm_is_refused_up_front(tmp_path, small_cifar_dir, conv_data, capsys):
    code = train_convnet.main([*CPU, "--data_dir", str(small_cifar_dir), "--batch_size", "1", "--quiet",
                               "--out_dir", str(tmp_path / "one")])
    assert code == 2
    assert "--batch_size 1 gives 1 example(s), but the model's BatchNorm" in capsys.readouterr().err
    # Under torchrun each rank trains on batch_size / world_size rows: checked before any collective.
    config = ConvNetConfig(device="cpu", batch_size=2, quiet=True)
    ctx = DistContext(torch.device("cpu"), world_size=2)
    spec = TrainerSpec(name="train_convnet", input_shape=(3, 32, 32), build_model=None, build_optimizer=None,
                       min_local_batch=2)
    with pytest.raises(ValueError, match=r"--batch_size 2 gives 1 example\(s\) per rank \(world size 2\)"):
        fit(config, spec, ctx=ctx, data=conv_data)


# --------------------------------------------------------------------------- API contract
def test_train_api_leaves_args_and_argv_alone(tmp_path, mlp_data, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pytest", "--not-a-trainer-flag"])
    args = train_mlp.build_parser().parse_args([*CPU, "--max_steps", "6", "--eval_freq", "3", "--quiet",
                                                "--out_dir", str(tmp_path / "a")])
    before = vars(args).copy()
    seen = []
    metrics = train_mlp.train(args, data=mlp_data, on_eval=lambda step, m: seen.append((step, dict(m))))
    assert vars(args) == before
    assert [step for step, _ in seen] == [0, 3, 6]
    assert {"test_accuracy", "validation_accuracy", "train_loss", "step"} <= set(seen[-1][1])
    assert seen[-1][1]["test_accuracy"] == metrics["test_accuracy"]
    assert mlp_data["train"].index_in_epoch == 0  # the caller's DataSet was not consumed


def test_on_eval_exception_propagates_and_keeps_checkpoint(tmp_path, mlp_data):
    args = train_mlp.build_parser().parse_args([*CPU, "--max_steps", "20", "--eval_freq", "5", "--quiet",
                                                "--out_dir", str(tmp_path)])

    def prune(step, metrics):
        if step == 10:
            raise Interrupted(step)

    with pytest.raises(Interrupted):
        train_mlp.train(args, data=mlp_data, on_eval=prune)
    assert tcheckpoint.load_checkpoint(tmp_path)["step"] == 10
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("batch_size", 0, "expected an integer > 0, got 0"),
    ("dropout", 1.5, "expected a finite number >= 0.0 and < 1.0, got 1.5"),
    ("threads", 0, "expected an integer > 0, got 0"),
])
def test_a_bad_flag_is_refused_by_the_parser_and_by_train(mlp_data, flag, value, message, capsys):
    # The command line refuses it while parsing (exit 2); a Namespace built by hand, in train().
    with pytest.raises(SystemExit) as exited:
        train_mlp.build_parser().parse_args([*CPU, f"--{flag}", str(value)])
    assert exited.value.code == 2 and message in capsys.readouterr().err
    args = argparse_copy(train_mlp.build_parser().parse_args([*CPU, "--quiet"]), **{flag: value})
    with pytest.raises(ValueError, match=f"^--{flag}: {re.escape(message)}$"):
        train_mlp.train(args, data=mlp_data)


def test_num_threads_is_unrecognised_and_a_checkpoint_saved_with_it_resumes(synthetic_cifar_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        train_mlp.build_parser().parse_args([*CPU, "--num_threads", "1"])
    assert exited.value.code == 2 and "unrecognized arguments: --num_threads" in capsys.readouterr().err
    run = tmp_path / "run"
    assert train_mlp.main([*CPU, "--data_dir", str(synthetic_cifar_dir), "--dnn_hidden_units", "8", "--max_steps", "2",
                           "--eval_freq", "2", "--quiet", "--out_dir", str(run)]) == 0
    state = tcheckpoint.load_checkpoint(run)
    state["flags"]["num_threads"] = 1  # what a checkpoint written while --num_threads existed holds
    tcheckpoint.save_checkpoint(run / "checkpoint.pt", state)
    assert train_mlp.main(["--resume", str(run), "--max_steps", "4", "--quiet"]) == 0
    resumed = tcheckpoint.load_checkpoint(run)
    assert resumed["step"] == 4 and "num_threads" not in resumed["flags"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when CUDA is missing")
def test_device_cuda_without_gpu_is_a_clear_error(mlp_data):
    args = train_mlp.build_parser().parse_args(["--device", "cuda", "--quiet"])
    with pytest.raises(ValueError, match="--device cuda"):
        train_mlp.train(args, data=mlp_data)


def test_hidden_units_parsing():
    assert TorchMLPConfig(hidden_units="512, 256").hidden_units == (512, 256)
    assert TorchMLPConfig(hidden_units="").hidden_units == ()
    assert train_mlp.build_parser().parse_args(["--dnn_hidden_units", "64,32"]).hidden_units == [64, 32]
    with pytest.raises(SystemExit):
        train_mlp.build_parser().parse_args(["--dnn_hidden_units", "10,x"])
    with pytest.raises(SystemExit):
        train_mlp.build_parser().parse_args(["--dnn_hidden_units", "10,-1"])


def test_resume_errors(tmp_path, mlp_data, conv_data, capsys):
    with pytest.raises(SystemExit):  # main: argparse error naming --resume
        train_mlp.main([*CPU, "--resume", str(tmp_path / "nowhere"), "--quiet"])
    assert "--resume" in capsys.readouterr().err
    conv_args = train_convnet.build_parser().parse_args([*CPU, 
        "--max_steps", "1", "--eval_freq", "1", "--batch_size", "2", "--quiet", "--out_dir", str(tmp_path / "c")])
    train_convnet.train(conv_args, data=conv_data)
    args = train_mlp.build_parser().parse_args([*CPU, "--resume", str(tmp_path / "c"), "--quiet"])
    with pytest.raises(ValueError, match="train_convnet checkpoint"):
        train_mlp.train(args, data=mlp_data)
    train_mlp.train(train_mlp.build_parser().parse_args([*CPU, "--max_steps", "2", "--quiet", "--out_dir",
                                                         str(tmp_path / "m")]), data=mlp_data)
    args = train_mlp.build_parser().parse_args([*CPU, "--resume", str(tmp_path / "m"), "--dnn_hidden_units", "7",
                                                "--max_steps", "4", "--quiet"])
    with pytest.raises(ValueError, match="--dnn_hidden_units"):
        train_mlp.train(args, data=mlp_data)


def test_ctrl_c_exits_130_naming_the_resume_command_which_then_finishes_the_run(tmp_path, synthetic_cifar_dir,
                                                                               monkeypatch, capsys):
    from torch_models import hooks

    out = tmp_path / "run"
    flags = [*CPU, "--data_dir", str(synthetic_cifar_dir), "--dnn_hidden_units", "16", "--max_steps", "6",
             "--eval_freq", "2", "--quiet"]
    step = hooks.TorchHooks.step

    def interrupted_at_3(self, n):
        if n == 3:
            raise KeyboardInterrupt
        return step(self, n)

    monkeypatch.setattr(hooks.TorchHooks, "step", interrupted_at_3)
    assert train_mlp.main(flags + ["--out_dir", str(out)]) == 130
    assert f"python -m torch_models.train_mlp --resume {out}" in capsys.readouterr().err
    assert tcheckpoint.load_checkpoint(out)["step"] == 2
    monkeypatch.setattr(hooks.TorchHooks, "step", step)
    # --resume alone: every flag but the invocation's (--device...) comes from the checkpoint, --data_dir too.
    assert train_mlp.main([*CPU, "--quiet", "--resume", str(out)]) == 0
    assert [int(r["step"]) for r in read_curves(out)] == [0, 2, 4, 6]


# --------------------------------------------------------------------------- divergence
def test_nan_loss_raises_divergence_error_with_step_and_keeps_last_checkpoint(tmp_path, mlp_data, synthetic_cifar_dir,
                                                                             capsys):
    flags = [*CPU, "--learning_rate", "1e12", "--max_steps", "50", "--eval_freq", "1", "--quiet",
             "--out_dir", str(tmp_path)]
    with pytest.raises(DivergenceError) as info:
        train_mlp.train(train_mlp.build_parser().parse_args(flags), data=mlp_data)
    step = info.value.step
    assert 1 <= step < 50 and not np.isfinite(info.value.loss)
    assert f"diverged at step {step}" in str(info.value)
    checkpoint = tcheckpoint.load_checkpoint(tmp_path)
    assert checkpoint["step"] == step - 1  # the last evaluation before the bad step, not the bad step
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())
    # The CLI reports the same step and exits with status 1.
    out = tmp_path / "cli"
    code = train_mlp.main(["--data_dir", str(synthetic_cifar_dir), "--validation_size", "100", *flags[:-1], str(out)])
    assert code == 1
    assert f"diverged at step {step}" in capsys.readouterr().err


def test_an_update_to_infinite_weights_is_never_checkpointed(tmp_path, synthetic_cifar_dir, capsys):
    """--learning_rate 1e38: the first update makes the weights huge or inf while its own batch loss, taken
    before the update, is finite. The evaluation after it must report divergence (exit 1), not save them."""
    out = tmp_path / "inf"
    code = train_mlp.main([*CPU, "--data_dir", str(synthetic_cifar_dir), "--learning_rate", "1e38", "--init",
                           "kaiming", "--max_steps", "5", "--eval_freq", "1", "--batch_size", "50", "--quiet",
                           "--out_dir", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.startswith("error: training diverged at step 1: "), err  # caught by the evaluation, not step 2
    checkpoint = tcheckpoint.load_checkpoint(out)
    assert checkpoint["step"] == 0 and all(torch.isfinite(t).all() for t in checkpoint["model"].values())
    assert [int(r["step"]) for r in read_curves(out)] == [0]  # the diverged evaluation is not a curve point
    assert not (out / "metrics.json").exists()


def test_torch_hooks_see_a_non_finite_parameter(tmp_path, mlp_data):
    """What fastmlp.loop.check_before_checkpoint asks the torch hooks before each checkpoint."""
    from torch_models.hooks import TorchHooks
    from torch_models.precision import choose_precision

    config = TorchMLPConfig(device="cpu", hidden_units=(8,))
    spec = TrainerSpec(name="train_mlp", input_shape=(3072,), build_model=lambda: torch.nn.Linear(3072, 10),
                       build_optimizer=lambda model: torch.optim.SGD(model.parameters(), lr=0.1))
    ctx = DistContext(torch.device("cpu"))
    hooks = TorchHooks.build(spec, config, mlp_data, ctx=ctx, plan=loop.Plan(5, 1),
                             precision=choose_precision(False, ctx.device), checkpoint_path=tmp_path / "c.pt")
    assert hooks.parameters_finite()
    with torch.no_grad():
        hooks.parts.model.bias[3] = float("inf")  # a bias: the evaluation loss alone might not show it
    assert not hooks.parameters_finite()
    with pytest.raises(DivergenceError, match="diverged at step 3: a parameter is NaN or infinite"):
        loop.check_before_checkpoint(hooks, 3, {"test_loss": 2.0})


# --------------------------------------------------------------------------- resume
def test_mlp_resume_matches_uninterrupted_run(tmp_path, mlp_data):
    # Adam + dropout + BatchNorm: optimizer state, torch RNG and buffers must all be restored;
    # 9 steps of 200 on 900 images cross an epoch boundary after the interruption.
    flags = [*CPU, "--dnn_hidden_units", "32", "--optimizer", "adam", "--learning_rate", "1e-3", "--dropout", "0.3",
             "--batchnorm", "torch", "--max_steps", "9", "--eval_freq", "3", "--quiet"]
    whole, resumed = run_cut_and_resume(train_mlp, flags, mlp_data, tmp_path, stop_step=3)
    assert resumed["test_accuracy"] == whole["test_accuracy"] and resumed["test_loss"] == whole["test_loss"]
    a, b = params_of(tmp_path / "whole"), params_of(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "whole" / "curves.csv").read_text() == (tmp_path / "cut" / "curves.csv").read_text()


def test_mlp_resume_via_cli_takes_flags_from_checkpoint(tmp_path, synthetic_cifar_dir):
    common = [*CPU, "--data_dir", str(synthetic_cifar_dir), "--quiet", "--eval_freq", "4"]
    assert train_mlp.main(common + ["--dnn_hidden_units", "16", "--max_steps", "8", "--out_dir",
                                    str(tmp_path / "whole")]) == 0
    assert train_mlp.main(common + ["--dnn_hidden_units", "16", "--max_steps", "4", "--out_dir",
                                    str(tmp_path / "short")]) == 0
    # Only --resume and the new horizon: --dnn_hidden_units 16 comes from the checkpoint.
    assert train_mlp.main(common + ["--resume", str(tmp_path / "short" / "checkpoint.pt"), "--max_steps", "8"]) == 0
    a, b = params_of(tmp_path / "whole"), params_of(tmp_path / "short")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [int(r["step"]) for r in read_curves(tmp_path / "short")] == [0, 4, 8]


@pytest.mark.parametrize("schedule", [
    ["--lr_schedule", "cosine"],
    ["--lr_schedule", "onecycle", "--optimizer", "momentum", "--nesterov", "--weight_decay", "1e-3"],
], ids=["adam-cosine", "nesterov-onecycle"])
def test_convnet_resume_matches_uninterrupted_run(tmp_path, conv_data, schedule):
    # Augmentation (torch RNG), the schedule (with one-cycle's momentum) and BatchNorm buffers must all be restored.
    flags = [*CPU, "--batch_size", "4", "--max_steps", "3", "--eval_freq", "2", "--augment", *schedule,
             "--learning_rate", "1e-3", "--quiet"]
    whole, resumed = run_cut_and_resume(train_convnet, flags, conv_data, tmp_path, stop_step=2)
    assert resumed["test_loss"] == whole["test_loss"]
    a, b = tcheckpoint.load_checkpoint(tmp_path / "whole"), tcheckpoint.load_checkpoint(tmp_path / "cut")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["scheduler"] == b["scheduler"] and a["scheduler"]["updates_done"] == 3


# --------------------------------------------------------------------------- augmentation
def test_augment_batch_crops_and_flips_each_image_independently():
    generator = torch.Generator().manual_seed(0)
    images = torch.arange(64 * 3 * 8 * 8, dtype=torch.float32).reshape(64, 3, 8, 8) + 1.0  # no zeros
    out = augment_batch(images, padding=2, generator=generator)
    assert out.shape == images.shape and out.dtype == images.dtype
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    found = set()
    for i in range(len(images)):
        matches = [(dy, dx, flip) for dy in range(5) for dx in range(5) for flip in (False, True)
                   if torch.equal(out[i], (lambda c: c.flip(-1) if flip else c)(padded[i, :, dy:dy + 8, dx:dx + 8]))]
        assert matches, f"image {i} is not a (flipped) crop of its padded input"
        found.add(matches[0])
    assert len(found) > 10  # offsets and flips differ between images of one batch
    assert any(flip for _, _, flip in found) and not all(flip for _, _, flip in found)
    with pytest.raises(ValueError, match="shape"):
        augment_batch(torch.zeros(3, 8, 8))


# --------------------------------------------------------------------------- torchrun
def run_torchrun_mlp(flags, cwd, n_processes=2):
    """``torchrun --nproc_per_node=n -m torch_models.train_mlp *flags`` (one thread each); the CompletedProcess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_processes}",
         "-m", "torch_models.train_mlp", *flags],
        capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


def test_torchrun_two_cpu_processes_write_outputs_once(tmp_path, synthetic_cifar_dir):
    out = tmp_path / "ddp"
    flags = [*CPU, "--data_dir", str(synthetic_cifar_dir), "--max_steps", "10", "--eval_freq", "5",
             "--batch_size", "100", "--learning_rate", "1e-3"]
    result = run_torchrun_mlp(flags + ["--out_dir", str(out)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("test accuracy") == 1  # rank 0 alone reports
    metrics = assert_outputs(out, steps=10, eval_steps=[0, 5, 10], validation=False)
    assert metrics["world_size"] == 2
    assert len(tcheckpoint.load_checkpoint(out)["rng"]["per_rank"]) == 2
    # Slicing the global batch: the same global batches and mean gradient as one process.
    single = train_mlp.train(train_mlp.build_parser().parse_args(flags + ["--quiet", "--out_dir",
                                                                          str(tmp_path / "one")]))
    assert metrics["test_loss"] == pytest.approx(single["test_loss"], rel=1e-4)
    a, b = params_of(out), params_of(tmp_path / "one")
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)


def test_torchrun_a_failed_write_on_rank_0_stops_every_rank(tmp_path, synthetic_cifar_dir):
    # Rank 0 cannot write its checkpoint (a folder is in the way); rank 1 must learn of it and
    # stop too, instead of waiting in the next collective until the process group times out.
    out = tmp_path / "ddp"
    (out / tcheckpoint.CHECKPOINT_NAME).mkdir(parents=True)
    flags = [*CPU, "--data_dir", str(synthetic_cifar_dir), "--max_steps", "10", "--eval_freq", "5",
             "--batch_size", "100", "--out_dir", str(out)]
    result = run_torchrun_mlp(flags, cwd=tmp_path)
    assert result.returncode != 0
    assert "another rank failed while writing the checkpoint of step 0" in result.stderr
    assert "IsADirectoryError" in result.stderr


def test_resume_on_another_device_type_reseeds_the_generators(tmp_path, mlp_data):
    # A checkpoint written on CUDA, resumed on the CPU (the other way round: test_torch_gpu.py):
    # the other device's saved stream cannot continue here, so the generators are reseeded from
    # --seed, the rank and the step, instead of replaying the stream a fresh run starts with.
    flags = [*CPU, "--dnn_hidden_units", "32", "--dropout", "0.5", "--max_steps", "4", "--eval_freq", "2",
             "--deterministic", "--quiet"]
    train_until(train_mlp, flags + ["--out_dir", str(tmp_path)], mlp_data, stop_step=2)
    checkpoint = tcheckpoint.load_checkpoint(tmp_path)
    checkpoint["rng"]["per_rank"][0]["cuda"] = torch.zeros(16, dtype=torch.uint8)  # as a GPU run saves it
    tcheckpoint.save_checkpoint(tmp_path / tcheckpoint.CHECKPOINT_NAME, checkpoint)
    with pytest.warns(UserWarning, match="written on CUDA, this run trains on CPU"):
        metrics = train_mlp.train(train_mlp.build_parser().parse_args(flags + ["--resume", str(tmp_path)]),
                                  data=mlp_data)
    assert torch.initial_seed() == rng.resume_seed(42, 0, 2)
    assert metrics["steps"] == 4 and metrics["deterministic"] is True
    assert not torch.are_deterministic_algorithms_enabled()  # --deterministic is undone after the run


class ShapeSpy(torch.nn.Module):
    """Linear(12 -> 3) recording each call's batch size, inference mode and autocast state."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(12, 3)
        self.calls = []

    def forward(self, x):
        self.calls.append((len(x), torch.is_inference_mode_enabled(), torch.is_autocast_enabled("cpu")))
        return self.linear(x)


def test_evaluate_batches_under_inference_mode_and_pads_only_for_static_shapes():
    torch.manual_seed(0)
    images, labels = torch.randn(13, 12), torch.randint(0, 3, (13,))
    eval_set = evaluation.EvalSet(images, labels, total=13)
    ctx = DistContext(torch.device("cpu"))
    model = ShapeSpy().train()
    with torch.no_grad():
        logits = model.linear(images)
    expected = (torch.nn.functional.cross_entropy(logits, labels).item(),
                (logits.argmax(dim=1) == labels).float().mean().item())
    ragged = evaluation.evaluate(model, eval_set, batch_size=5, ctx=ctx)
    assert [c[0] for c in model.calls] == [5, 5, 3] and all(c[1] and not c[2] for c in model.calls)
    model.calls.clear()
    padded = evaluation.evaluate(model, eval_set, batch_size=5, ctx=ctx, static_shapes=True)
    assert [c[0] for c in model.calls] == [5, 5, 5]  # one input shape: a compiled model never recompiles
    assert ragged == pytest.approx(expected, rel=1e-6) and padded == pytest.approx(expected, rel=1e-6)
    assert model.training  # put back in training mode
    model.calls.clear()
    low = evaluation.evaluate(model, eval_set, batch_size=100, ctx=ctx, autocast_dtype=torch.bfloat16)
    assert [c[0] for c in model.calls] == [13] and model.calls[0][2]  # the batch is capped at the split
    assert low == pytest.approx(expected, rel=0.05, abs=0.02)


def test_compile_traces_once_per_mode_and_times_compilation_apart(tmp_path, mlp_data, monkeypatch):
    # A counting dynamo backend instead of inductor: the same tracing and guards, no C++ build.
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append([tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)])
        return graph_module.forward

    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, **kwargs: compile_module(self, backend=counting_backend))
    torch.compiler.reset()
    config = TorchMLPConfig(device="cpu", max_steps=6, eval_freq=3, batch_size=50, eval_batch_size=64, quiet=True,
                            out_dir=tmp_path)
    from torch_models.mlp import MLP

    spec = TrainerSpec(name="train_mlp", input_shape=(3072,), build_model=lambda: MLP(3072, [16], 10),
                       build_optimizer=lambda model: torch.optim.SGD(model.parameters(), lr=1e-3),
                       compile_model=True)
    metrics = fit(config, spec, ctx=DistContext(torch.device("cpu")), data=mlp_data)
    torch.compiler.reset()
    # Evaluation (test 200 and validation 100 images in padded batches of 64) and training: one
    # graph each, shared by both splits and all 3 evaluations; a ragged batch would add one.
    assert len(graphs) == 2, graphs
    assert metrics["compile"] is True and metrics["compile_seconds"] > 0
    assert metrics["timed_steps"] == 5  # the first step (the compilation) is timed apart
    assert metrics["seconds_per_step"] == pytest.approx(metrics["train_seconds"] / 5)
    assert set(tcheckpoint.load_checkpoint(tmp_path)["model"]) == set(MLP(3072, [16], 10).state_dict())


# --------------------------------------------------------------------------- fastmlp.train's flags
def flag_defaults(parser) -> dict:
    """``{flag: default}`` of a parser's ``--flag`` options (whatever their Namespace names)."""
    return {option[2:]: action.default for action in flag_actions(parser).values() for option in action.option_strings
            if option.startswith("--") and not option.startswith("--no-") and option != "--help"}


def test_mlp_defaults_are_fastmlp_train_defaults():
    from fastmlp import train as fm_train

    numpy_defaults = flag_defaults(fm_train.build_parser())
    torch_defaults = flag_defaults(train_mlp.build_parser())
    shared = set(numpy_defaults) & set(torch_defaults)
    # Every optimisation and data flag of fastmlp.train exists here, with the same default.
    assert {"init", "optimizer", "momentum", "nesterov", "weight_decay", "lr_schedule", "warmup_steps",
            "preprocessing", "augment", "learning_rate", "max_steps", "batch_size", "dnn_hidden_units"} <= shared
    assert {k: torch_defaults[k] for k in shared} == {k: numpy_defaults[k] for k in shared}


def test_mlp_init_normal_is_the_course_init_and_others_differ(tmp_path, mlp_data):
    # The checkpoint written at step 0 (before any update) holds the initial weights of the default run.
    def stop_at_0(step, metrics):
        raise Interrupted

    with pytest.raises(Interrupted):
        train_mlp.train(train_mlp.build_parser().parse_args([*CPU, "--dnn_hidden_units", "100,50", "--quiet",
                                                             "--out_dir", str(tmp_path)]),
                        data=mlp_data, on_eval=stop_at_0)
    params = params_of(tmp_path)
    weights = [params[k] for k in params if k.endswith("weight")]
    biases = [params[k] for k in params if k.endswith("bias")]
    assert len(weights) == len(biases) == 3
    for w in weights:
        assert w.std().item() == pytest.approx(1e-4, rel=0.1) and abs(w.mean().item()) < 1e-5
    assert all(torch.count_nonzero(b) == 0 for b in biases)

    from torch_models.mlp import MLP

    torch.manual_seed(0)
    model = MLP(3072, [200], 10)
    initialize_parameters(model, "kaiming")
    first, last = model.layers[0], model.layers[-1]
    assert first.weight.std().item() == pytest.approx((2 / 3072) ** 0.5, rel=0.05)
    assert last.weight.std().item() == pytest.approx((2 / 200) ** 0.5, rel=0.1)
    assert torch.count_nonzero(first.bias) == 0
    initialize_parameters(model, "xavier")
    assert first.weight.std().item() == pytest.approx((2 / (3072 + 200)) ** 0.5, rel=0.05)
    torch.manual_seed(0)
    default = MLP(3072, [200], 10)
    initialize_parameters(default, "torch")  # PyTorch's own: uniform(+-1/sqrt(fan_in)), biases too
    assert default.layers[0].weight.abs().max().item() <= 3072 ** -0.5
    assert torch.count_nonzero(default.layers[0].bias) > 0
    with pytest.raises(ValueError, match=r"^init: expected one of \('normal', .*got 'uniform'"):
        initialize_parameters(default, "uniform")


def test_weight_decay_shrinks_weights_but_not_biases_or_batchnorm():
    from torch_models.mlp import MLP

    torch.manual_seed(0)
    model = MLP(12, [8], 3, batchnorm="torch")
    for p in model.parameters():
        torch.nn.init.constant_(p, 0.5)
    lr, decay = 0.1, 0.2
    optimizer = make_optimizer("momentum", parameter_groups(model, decay), lr, momentum=0.9, nesterov=True)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no loss gradient: only the decay can move a parameter
    optimizer.step()
    for name, p in model.named_parameters():
        if p.ndim == 2:  # Linear weights: w - lr * (1 + momentum) * decay * w with Nesterov
            expected = 0.5 - lr * (1 + 0.9) * decay * 0.5
            assert torch.allclose(p, torch.full_like(p, expected)), name
        else:  # biases, BatchNorm scale and shift
            assert torch.equal(p, torch.full_like(p, 0.5)), name
    assert len([p for p in model.parameters() if p.ndim == 2]) == 2


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_the_schedules_keep_the_rates_and_momenta_of_torchs_schedulers(name):
    # The ConvNet used to step OneCycleLR and CosineAnnealingLR; its schedules now come from
    # fastmlp.schedules with the same rates, and one-cycle still cycles the momentum (or beta1).
    from fastmlp.schedules import LearningRateSchedule
    from torch_models.optimizers import ScheduledHyperParameters

    model, total = torch.nn.Linear(4, 2), 40
    torch_schedulers = {"onecycle": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=total),
                        "cosine": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)}
    for kind, make_torch_scheduler in torch_schedulers.items():
        theirs = make_optimizer(name, parameter_groups(model, 0.0), 0.1)
        ours = make_optimizer(name, parameter_groups(model, 0.0), 0.1)
        torch_scheduler = make_torch_scheduler(theirs)
        scheduler = ScheduledHyperParameters(ours, LearningRateSchedule(0.1, total, kind), cycle_momentum=True)
        for step in range(1, total + 1):
            for a, b in zip(theirs.param_groups, ours.param_groups):
                assert b["lr"] == pytest.approx(a["lr"], rel=1e-9, abs=1e-13), (kind, step)
                key = "betas" if name == "adam" else "momentum"
                assert b[key] == pytest.approx(a[key], rel=1e-12), (kind, step)
            theirs.step(), ours.step()  # no gradients: nothing moves, but the schedulers expect it
            if step < total:
                torch_scheduler.step()
            scheduler.step()
    # Plain SGD stays plain (OneCycleLR used to give it a momentum of 0.85-0.95).
    plain = make_optimizer("sgd", parameter_groups(model, 0.0), 0.1)
    scheduler = ScheduledHyperParameters(plain, LearningRateSchedule(0.1, total, "onecycle"), cycle_momentum=True)
    scheduler.step()
    assert [group["momentum"] for group in plain.param_groups] == [0, 0]


def test_mlp_fastmlp_flags_end_to_end(tmp_path, synthetic_cifar_dir):
    from fastmlp.schedules import LearningRateSchedule

    out = tmp_path / "run"
    flags = [*CPU, "--data_dir", str(synthetic_cifar_dir), "--dnn_hidden_units", "64", "--init", "kaiming",
             "--optimizer", "momentum", "--momentum", "0.8", "--nesterov", "--learning_rate", "0.02",
             "--weight_decay", "1e-3", "--lr_schedule", "cosine", "--warmup_steps", "4",
             "--preprocessing", "standardize", "--max_steps", "30", "--eval_freq", "5", "--quiet"]
    assert train_mlp.main(flags + ["--out_dir", str(out)]) == 0
    metrics = assert_outputs(out, steps=30, eval_steps=[0, 5, 10, 15, 20, 25, 30], validation=False)
    assert metrics["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert metrics["flags"]["preprocessing"] == "standardize" and metrics["flags"]["init"] == "kaiming"
    # The learning rate of each step is fastmlp's schedule, in every parameter group.
    schedule = LearningRateSchedule(0.02, 30, "cosine", warmup_steps=4)
    assert [float(r["learning_rate"]) for r in read_curves(out)[1:]] == pytest.approx(
        [schedule(s) for s in range(5, 31, 5)], rel=1e-12)
    checkpoint = tcheckpoint.load_checkpoint(out)
    groups = checkpoint["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [1e-3, 0.0]
    assert all(g["momentum"] == 0.8 and g["nesterov"] for g in groups)
    assert groups[0]["lr"] == groups[1]["lr"] == pytest.approx(schedule(31))  # set for the next update
    assert checkpoint["scheduler"]["updates_done"] == 30

    # --augment: the DataSet crops and flips the training batches. The synthetic classes are
    # per-pixel noise templates, which a shift of even one pixel scrambles, so only the
    # outputs and the changed trajectory are checked here (real-data runs show the gain).
    augmented = tmp_path / "augmented"
    assert train_mlp.main(flags + ["--augment", "--out_dir", str(augmented)]) == 0
    metrics = assert_outputs(augmented, steps=30, eval_steps=[0, 5, 10, 15, 20, 25, 30], validation=False)
    assert metrics["flags"]["augment"] is True
    a, b = params_of(out), params_of(augmented)
    assert not torch.equal(a["layers.0.weight"], b["layers.0.weight"])
    assert float(read_curves(augmented)[0]["test_loss"]) == float(read_curves(out)[0]["test_loss"])  # same init


@pytest.mark.parametrize("flags, match", [
    (["--nesterov"], "--nesterov"),  # needs --optimizer momentum
    (["--optimizer", "momentum", "--momentum", "0", "--nesterov"], "--nesterov"),
])
def test_bad_fastmlp_flags_raise_value_error_naming_the_flag(mlp_data, flags, match):
    args = train_mlp.build_parser().parse_args(CPU + flags + ["--quiet"])
    with pytest.raises(ValueError, match=match):
        train_mlp.train(args, data=mlp_data)


@pytest.mark.parametrize("name, nesterov, match", [
    ("rmsprop", False, r"optimizer: expected one of \('sgd', 'momentum', 'adam'\), got 'rmsprop'"),
    ("adam", True, "nesterov: needs optimizer 'momentum' and momentum > 0, got optimizer 'adam'"),
])
def test_make_optimizer_refuses_what_fastmlp_refuses(name, nesterov, match):
    groups = parameter_groups(torch.nn.Linear(4, 2), 0.0)
    with pytest.raises(ValueError, match=match):
        make_optimizer(name, groups, 0.1, nesterov=nesterov)


def test_hand_built_namespace_is_checked_and_completed(tmp_path, mlp_data):
    args = train_mlp.build_parser().parse_args([*CPU, "--max_steps", "2", "--eval_freq", "2", "--quiet",
                                                "--out_dir", str(tmp_path)])
    for name, value, match in [("momentum", 1.5, "--momentum"), ("init", "uniform", "--init"),
                               ("lr_schedule", "linear", "--lr_schedule"), ("warmup_steps", -1, "--warmup_steps"),
                               ("dnn_hidden_units", "10,x", "--dnn_hidden_units")]:
        bad = argparse_copy(args, **{name: value})
        with pytest.raises(ValueError, match=match):
            train_mlp.train(bad, data=mlp_data)
    with pytest.raises(SystemExit):  # the same check at the command line
        train_mlp.build_parser().parse_args(["--momentum", "1.5"])
    # A Namespace from before these flags existed (e.g. a search's) gets their defaults.
    old = argparse_copy(args)
    for name in ("init", "momentum", "nesterov", "lr_schedule", "warmup_steps", "preprocessing", "augment"):
        delattr(old, name)
    metrics = train_mlp.train(old, data=mlp_data)
    assert metrics["flags"]["init"] == "normal" and metrics["flags"]["lr_schedule"] == "constant"


def argparse_copy(args, **changes):
    import argparse

    return argparse.Namespace(**{**vars(args), **changes})


def test_mlp_resume_matches_uninterrupted_run_with_fastmlp_flags(tmp_path, mlp_data):
    # Nesterov buffers, the warm-up + cosine schedule and the NumPy crop/flip draws must all
    # continue exactly; 9 steps of 200 on 900 images cross an epoch boundary after the cut.
    flags = [*CPU, "--dnn_hidden_units", "32", "--init", "kaiming", "--optimizer", "momentum", "--nesterov",
             "--learning_rate", "0.01", "--weight_decay", "1e-3", "--lr_schedule", "cosine",
             "--warmup_steps", "4", "--augment", "--max_steps", "9", "--eval_freq", "3", "--quiet"]
    whole, resumed = run_cut_and_resume(train_mlp, flags, mlp_data, tmp_path, stop_step=3)
    assert resumed["test_loss"] == whole["test_loss"] and resumed["test_accuracy"] == whole["test_accuracy"]
    a, b = tcheckpoint.load_checkpoint(tmp_path / "whole"), tcheckpoint.load_checkpoint(tmp_path / "cut")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    momentum_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    momentum_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert len(momentum_a) == 4 and all(torch.equal(x, y) for x, y in zip(momentum_a, momentum_b))
    assert (tmp_path / "whole" / "curves.csv").read_text() == (tmp_path / "cut" / "curves.csv").read_text()

    # Resuming with another --weight_decay: warned about, and it is this run's value that applies.
    with pytest.warns(UserWarning) as warned:
        extend = flags[:-5] + ["--max_steps", "12", "--eval_freq", "3", "--quiet", "--weight_decay", "0.05",
                               "--resume", str(tmp_path / "whole")]
        train_mlp.train(train_mlp.build_parser().parse_args(extend), data=mlp_data)
    messages = " ".join(str(w.message) for w in warned)
    assert "--weight_decay 0.001 -> 0.05" in messages and "keeps the horizon" in messages
    assert sum("max_steps" in str(w.message) for w in warned) == 1  # said once, not by the loop and the trainer
    extended = tcheckpoint.load_checkpoint(tmp_path / "whole")
    assert [g["weight_decay"] for g in extended["optimizer"]["param_groups"]] == [0.05, 0.0]
    # The cosine keeps the horizon the run was started with (the trainer's warning says so).
    assert extended["scheduler"]["total_steps"] == 9 and extended["scheduler"]["updates_done"] == 12
