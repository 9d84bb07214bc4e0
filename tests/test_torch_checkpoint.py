"""``checkpoint.pt`` is data (issue #11): ``--resume`` runs no code from the file, and a file
that is not one of ours (hostile, foreign, truncated, corrupt, an earlier format) is one
``error:`` line and exit status 2, never a traceback."""
from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch_models import train_convnet, train_mlp  # noqa: E402
from torch_models.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


class CreatesAFile:
    """Unpickling this calls ``pathlib.Path.touch(path)``: a stand-in for any code a pickle can run."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.path),)


def hostile_checkpoint(folder: Path) -> tuple[Path, Path]:
    """A checkpoint.pt that looks like ours but creates ``folder/marker`` when unpickled; (file, marker)."""
    marker = folder / "marker"
    path = folder / "run" / "checkpoint.pt"
    path.parent.mkdir(parents=True)
    torch.save({"format": CHECKPOINT_FORMAT, "trainer": "train_mlp", "step": 1, "flags": {"seed": 1},
                "payload": CreatesAFile(marker)}, path)
    return path, marker


@pytest.fixture(scope="module")
def real_checkpoint(synthetic_cifar_dir, tmp_path_factory) -> Path:
    """A genuine train_mlp checkpoint.pt of one step."""
    out = tmp_path_factory.mktemp("real") / "run"
    assert train_mlp.main(["--device", "cpu", "--data_dir", str(synthetic_cifar_dir), "--max_steps", "1",
                           "--eval_freq", "1", "--dnn_hidden_units", "8", "--quiet", "--out_dir", str(out)]) == 0
    return out / "checkpoint.pt"


def resume_exit(main, path: Path, data_dir: Path, capsys) -> tuple[int, str]:
    """``main([... --resume path])``'s exit status and stderr (argparse reports a bad checkpoint)."""
    with pytest.raises(SystemExit) as exited:
        main(["--device", "cpu", "--data_dir", str(data_dir), "--quiet", "--resume", str(path)])
    return exited.value.code, capsys.readouterr().err


def test_the_hostile_file_does_run_code_when_unpickled_unsafely(tmp_path):
    # The control for the next tests: this file really creates the marker if loaded the old way.
    path, marker = hostile_checkpoint(tmp_path)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_hostile_checkpoint_is_refused_unread_by_the_command_line(tmp_path, synthetic_cifar_dir):
    path, marker = hostile_checkpoint(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1"}
    # 300 s: a child importing torch on a loaded 2-core box took over 120 s (the test then failed by timeout).
    result = subprocess.run([sys.executable, "-m", "torch_models.train_mlp", "--device", "cpu", "--data_dir",
                             str(synthetic_cifar_dir), "--quiet", "--resume", str(path.parent)],
                            capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "error: --resume:" in result.stderr and "could run code" in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("trainer", [train_mlp, train_convnet])
def test_a_hostile_checkpoint_is_refused_unread_by_main_and_train(tmp_path, synthetic_cifar_dir, trainer, capsys):
    path, marker = hostile_checkpoint(tmp_path)
    code, err = resume_exit(trainer.main, path, synthetic_cifar_dir, capsys)
    assert code == 2 and "could run code" in err and "Traceback" not in err
    # The data set decides the network's input shape, so train() reads the data first; the
    # checkpoint is then refused before the model is built from it.
    args = trainer.build_parser().parse_args(["--device", "cpu", "--quiet", "--resume", str(path),
                                              "--data_dir", str(synthetic_cifar_dir)])
    with pytest.raises(ValueError, match="^--resume: .* holds Python objects other than tensors"):
        trainer.train(args)
    assert not marker.exists()


def truncated(real: Path, folder: Path) -> Path:
    path = folder / "truncated.pt"
    path.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    return path


def corrupt(real: Path, folder: Path) -> Path:
    """The archive intact, its pickle overwritten with garbage."""
    path = folder / "corrupt.pt"
    shutil.copy(real, path)
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data.pkl"))
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 30 + len(info.filename.encode()) + len(info.extra))
        f.write(b"\xff\x00\x13" * (info.file_size // 3))
    return path


def foreign(folder: Path) -> Path:
    path = folder / "weights.pt"
    torch.save({"weight": torch.zeros(3, 2), "bias": torch.zeros(3)}, path)  # a valid torch file, not ours
    return path


def whole_module(folder: Path) -> Path:
    path = folder / "module.pt"
    torch.save(torch.nn.Linear(2, 3), path)  # a pickled nn.Module: classes, not data
    return path


def format_one(folder: Path) -> Path:
    path = folder / "format1.pt"
    torch.save({"format": "torch_models.checkpoint/1", "trainer": "train_mlp",
                "rng": {"numpy": np.random.get_state()}}, path)  # format 1 held NumPy objects
    return path


def not_an_archive(folder: Path) -> Path:
    path = folder / "notes.pt"
    path.write_text("step,loss\n1,2.3\n")
    return path


def ours_but_incomplete(folder: Path) -> Path:
    path = folder / "incomplete.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "trainer": "train_mlp", "step": 3}, path)
    return path


@pytest.mark.parametrize("make, message", [
    (lambda real, folder: truncated(real, folder), "not a torch archive"),
    (lambda real, folder: corrupt(real, folder), "cannot be read as a torch checkpoint"),
    (lambda real, folder: foreign(folder), "is not a torch_models checkpoint of format"),
    (lambda real, folder: whole_module(folder), "holds Python objects other than tensors"),
    (lambda real, folder: format_one(folder), "checkpoints of torch_models format 1"),
    (lambda real, folder: not_an_archive(folder), "not a torch archive"),
    (lambda real, folder: ours_but_incomplete(folder), "entry 'flags' is missing"),
], ids=["truncated", "corrupt", "foreign", "pickled-module", "format-1", "text", "incomplete"])
def test_a_file_that_is_not_our_checkpoint_is_one_error_line_and_exit_2(
        tmp_path, real_checkpoint, synthetic_cifar_dir, make, message, capsys):
    path = make(real_checkpoint, tmp_path)
    with pytest.raises(ValueError, match=message):
        load_checkpoint(path)
    code, err = resume_exit(train_mlp.main, path, synthetic_cifar_dir, capsys)
    assert code == 2 and "Traceback" not in err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and "--resume" in error_lines[0] and message in error_lines[0], err


def test_a_written_checkpoint_is_tensors_and_plain_data(real_checkpoint):
    state = torch.load(real_checkpoint, weights_only=True)  # what --resume does: no code runs
    assert state["format"] == CHECKPOINT_FORMAT and state["trainer"] == "train_mlp"
    assert state["train_data"]["permutation"].dtype == torch.int64
    assert state["rng"]["numpy"]["keys"].shape == (624,) and state["rng"]["python"]["internal"].shape == (625,)
    assert state["precision"]["amp"] is False  # the precision as applied is recorded


def test_saving_refuses_anything_but_tensors_and_plain_data(tmp_path):
    for bad, where in [({"step": np.int64(3)}, "['step']"), ({"rng": {"keys": np.zeros(3)}}, "['rng']['keys']"),
                       ({"flags": {"data_dir": pathlib.Path("x")}}, "['flags']['data_dir']")]:
        with pytest.raises(TypeError, match=rf"checkpoint entry {re.escape(where)} is a "):
            save_checkpoint(tmp_path / "c.pt", bad)
    assert not (tmp_path / "c.pt").exists()
