"""The ConvNet step benchmark's code path, on tiny batches (the timings themselves are not checked)."""
import json

import pytest

torch = pytest.importorskip("torch")

import convnet_step  # noqa: E402


def test_one_tiny_round_prints_every_contender_and_writes_json(tmp_path, capsys):
    out = tmp_path / "step.json"
    threads = torch.get_num_threads()
    try:
        assert convnet_step.main(["--batch_sizes", "2", "--rounds", "2", "--steps", "1", "--settle", "0",
                                  "--threads", "1", "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert all(f"{name} ms" in printed for name in convnet_step.CONTENDERS) and "| 2 |" in printed
    result = json.loads(out.read_text())["results"][0]
    assert result["batch_size"] == 2 and set(result["speedup"]) == set(convnet_step.CONTENDERS)
    assert result["speedup"][convnet_step.BASELINE] == 1.0
    assert all(len(times) == 2 and min(times) > 0 for times in result["rounds"].values())


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        convnet_step.main(["--batch_sizes", "1"])
