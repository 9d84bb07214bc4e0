"""The torch trainers' run configurations (torch_models.config) and the runs that take them.

A bad value reads the same from the configuration, the command line and ``train()``; the
command lines are generated from the configurations; ``--resume`` reads its checkpoint
once; the optimizer builder refuses what it cannot build.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

torch = pytest.importorskip("torch")

from fastmlp import optim as fastmlp_optim  # noqa: E402
from fastmlp.cli import config_from_args, flag_actions  # noqa: E402
from fastmlp.data import get_cifar10  # noqa: E402
from torch_models import checkpoint as tcheckpoint  # noqa: E402
from torch_models import mlp_run, train_convnet, train_mlp  # noqa: E402
from torch_models.config import ConvNetConfig, TorchMLPConfig  # noqa: E402
from torch_models.optimizers import make_optimizer, parameter_groups  # noqa: E402

CPU = ["--device", "cpu", "--threads", "1"]


def cli_error(main, flag, text, capsys) -> str:
    """The message the command line prints for ``--flag text`` (exit 2), after its ``argument --flag: ``."""
    with pytest.raises(SystemExit) as exited:
        main([*CPU, f"--{flag}", text])
    assert exited.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1].split(f"error: argument --{flag}: ", 1)[-1]


@pytest.mark.parametrize("module, config", [(train_mlp, TorchMLPConfig), (train_convnet, ConvNetConfig)])
@pytest.mark.parametrize("name, value, text", [("batch_size", 0, "0"), ("momentum", 1.0, "1.0"),
                                               ("lr_schedule", "linear", "linear")])
def test_a_bad_value_reads_the_same_from_the_configuration_the_command_line_and_train(module, config, name, value,
                                                                                      text, capsys):
    with pytest.raises((TypeError, ValueError)) as made:
        config(**{name: value})
    prefix = f"{name}: "
    assert str(made.value).startswith(prefix)
    message = str(made.value)[len(prefix):]
    assert cli_error(module.main, name, text, capsys) == message
    with pytest.raises(type(made.value), match=f"^--{name}: "):
        module.train(argparse.Namespace(**{name: value}))
    with pytest.raises(type(made.value)) as from_train:
        module.train({name: value})
    assert str(from_train.value) == f"--{name}: {message}"


def test_a_setting_the_command_line_names_otherwise_is_named_as_the_caller_names_it():
    assert TorchMLPConfig.flag("hidden_units") == "dnn_hidden_units"
    with pytest.raises(ValueError, match="^hidden_units: expected positive integers"):
        TorchMLPConfig(hidden_units="64,0")
    with pytest.raises(ValueError, match="^--dnn_hidden_units: expected positive integers"):
        TorchMLPConfig.create({"dnn_hidden_units": "64,0"}, by_flag=True)
    with pytest.raises(ValueError, match="^--dnn_hidden_units: expected positive integers"):
        train_mlp.train(argparse.Namespace(dnn_hidden_units="64,0"))  # a Namespace built by hand, by flag name
    with pytest.raises(ValueError, match="^init: expected one of .*'torch'"):
        TorchMLPConfig(init="uniform")  # the torch MLP's init is the table entry torch_init


def test_joint_checks_refuse_nesterov_without_momentum_and_sizes_no_machine_holds():
    with pytest.raises(ValueError, match="^nesterov: needs optimizer 'momentum' and momentum > 0"):
        ConvNetConfig(nesterov=True)  # the ConvNet's default optimizer is Adam
    assert ConvNetConfig(optimizer="momentum", nesterov=True).nesterov is True
    with pytest.raises(ValueError, match="^batch_size 1000000000000: batches of that many rows need"):
        TorchMLPConfig(batch_size=10**12)
    with pytest.raises(ValueError, match="^--dnn_hidden_units '1000000000'"):
        TorchMLPConfig.create({"dnn_hidden_units": [10**9]}, by_flag=True)


def test_the_configurations_hold_the_course_defaults_and_fastmlps_names():
    mlp, conv = TorchMLPConfig(), ConvNetConfig()
    assert (mlp.hidden_units, mlp.learning_rate, mlp.max_steps, mlp.batch_size, mlp.eval_freq, mlp.optimizer) == (
        (100,), 2e-3, 1500, 200, 100, "sgd")
    assert (conv.learning_rate, conv.max_steps, conv.batch_size, conv.eval_freq, conv.optimizer) == (
        1e-4, 5000, 32, 500, "adam")
    assert conv.channels_last is None and ConvNetConfig(channels_last=0).channels_last is False
    with pytest.raises(TypeError, match="^channels_last: expected None or a bool, got 'yes'"):
        ConvNetConfig(channels_last="yes")
    with pytest.raises(dataclasses.FrozenInstanceError):
        mlp.batch_size = 1
    # The checkpoints' record: by flag name, as every version wrote it.
    assert mlp.as_flags()["dnn_hidden_units"] == [100] and "hidden_units" not in mlp.as_flags()


def test_the_command_lines_are_generated_from_the_configurations():
    for module, config in [(train_mlp, TorchMLPConfig), (train_convnet, ConvNetConfig)]:
        parser = module.build_parser()
        args = parser.parse_args([])
        assert config_from_args(config, args) == config()  # every flag's default is the setting's
        flags = {option for action in flag_actions(parser).values() for option in action.option_strings}
        assert {f"--{config.flag(name)}" for name in config.names()} <= flags
    parser = train_convnet.build_parser()
    assert parser.parse_args([]).channels_last is None
    assert parser.parse_args(["--no-channels_last"]).channels_last is False
    assert parser.parse_args(["--no-quiet", "--quiet"]).quiet is True  # every switch is --x/--no-x
    help_text = train_mlp.build_parser().format_help()
    assert "--optimizer {sgd,momentum,adam}" in help_text and "--resume PATH" in help_text


def test_make_optimizer_refuses_an_optimizer_fastmlp_has_and_torch_does_not(monkeypatch):
    # Was: any name that passed fastmlp's check and was neither adam nor momentum built plain SGD.
    monkeypatch.setitem(fastmlp_optim.REGISTRY, "lion", fastmlp_optim.REGISTRY["adam"])
    groups = parameter_groups(torch.nn.Linear(4, 2), 0.0)
    with pytest.raises(ValueError, match=r"^optimizer: expected one of \('sgd', 'momentum', 'adam'\).*got 'lion'"):
        make_optimizer("lion", groups, 0.1)
    with pytest.raises(ValueError, match="^optimizer: expected one of"):
        TorchMLPConfig(optimizer="lion")


def test_the_library_run_takes_a_configuration(tmp_path, synthetic_cifar_dir):
    data = get_cifar10(synthetic_cifar_dir, one_hot=False, flatten=True)
    config = TorchMLPConfig(device="cpu", threads=1, hidden_units=(8,), max_steps=2, eval_freq=2, quiet=True, out_dir=tmp_path)
    seen = []
    metrics = mlp_run.train(config, data=data, on_eval=lambda step, m: seen.append(step))
    assert seen == [0, 2] and metrics["steps"] == 2
    assert metrics["flags"]["dnn_hidden_units"] == [8] and metrics["flags"]["device"] == "cpu"
    assert json.loads((tmp_path / "metrics.json").read_text())["flags"] == metrics["flags"]


def test_resume_reads_the_checkpoint_once_and_merges_its_settings(tmp_path, synthetic_cifar_dir, monkeypatch):
    run = tmp_path / "run"
    assert train_mlp.main([*CPU, "--data_dir", str(synthetic_cifar_dir), "--dnn_hidden_units", "8", "--max_steps",
                           "2", "--eval_freq", "2", "--optimizer", "momentum", "--momentum", "0.5",
                           "--weight_decay", "0.01", "--quiet", "--out_dir", str(run)]) == 0
    saved = tcheckpoint.load_checkpoint(run)
    assert set(saved["flags"]) == {TorchMLPConfig.flag(name) for name in TorchMLPConfig.names()}
    reads = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: reads.append(args[0]) or load(*args, **kwargs))
    with pytest.warns(UserWarning, match="--weight_decay 0.01 -> 0.02"):
        assert train_mlp.main(["--resume", str(run), "--max_steps", "4", "--weight_decay", "0.02", "--quiet",
                               "--threads", "1"]) == 0
    assert len(reads) == 1, reads  # was read twice: for the flags, then again by train()
    monkeypatch.setattr(torch, "load", load)
    resumed = tcheckpoint.load_checkpoint(run)
    assert resumed["step"] == 4 and resumed["flags"]["dnn_hidden_units"] == [8]
    groups = resumed["optimizer"]["param_groups"]
    # The checkpoint's momentum (not given again) and this invocation's weight decay, once each.
    assert [g["momentum"] for g in groups] == [0.5, 0.5]
    assert [g["weight_decay"] for g in groups] == [0.02, 0.0]
