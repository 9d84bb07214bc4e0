"""``python -m fastmlp``: point to the command-line entry points (each has its own ``--help``)."""
from __future__ import annotations

import sys

COMMANDS = (
    ("python -m fastmlp.train", "train the NumPy/Cython MLP on CIFAR-10 (the course's defaults)"),
    ("python -m fastmlp.search", "hyper-parameter search over fastmlp.train"),
    ("python -m torch_models.train_mlp", "the same MLP in PyTorch (needs the 'torch' extra)"),
    ("python -m torch_models.train_convnet", "the course's ConvNet in PyTorch (needs the 'torch' extra)"),
)


def usage() -> str:
    from fastmlp import __version__

    width = max(len(command) for command, _ in COMMANDS)
    lines = [f"fastmlp {__version__}: fast manual-backprop MLPs. Commands:", ""]
    lines += [f"  {command:<{width}}  {what}" for command, what in COMMANDS]
    lines += ["", "Run a command with --help for its flags, e.g. `python -m fastmlp.train --help`."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the list of commands; exit status 0 for no arguments or -h/--help, else 2."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] not in ("-h", "--help"):
        print(f"python -m fastmlp takes no arguments (got {' '.join(argv)!r}).\n", file=sys.stderr)
        print(usage(), file=sys.stderr)
        return 2
    print(usage())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
