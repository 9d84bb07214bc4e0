"""``checkpoint.npz``: the whole state of a ``fastmlp.train`` run, for ``--resume``.

One ``.npz`` written atomically (no pickles: ``np.load(allow_pickle=False)`` reads
it), with the keys

- ``model/<name>``: the MLP's ``state_dict()``; ``optim/<name>``: the optimizer's;
- ``data/...``: the arrays of the training ``DataSet.get_state()`` (batch order);
- ``rng/keys``: NumPy's global MT19937 state (the ``--augment`` draws);
- ``meta``: a 0-d string array holding JSON: ``format``, ``step``, ``network``
  (the MLP's :meth:`~fastmlp.MLP.network_settings`, e.g. its activation; absent
  in older checkpoints, whose networks were all ReLU), the non-array parts of the
  data and RNG states, and what the loop records (``flags``, ``rows`` of the
  curves, ``wall_seconds``).

Format tag ``"fastmlp.checkpoint/1"``; checkpoints written before the tag became a
string (``format: 1``) have the same layout and are read as well.
"""
from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fastmlp.atomic import atomic_savez, json_text
from fastmlp.runlog import resolve_checkpoint

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "load_checkpoint", "resolve_checkpoint_path", "save_checkpoint"]

CHECKPOINT_NAME = "checkpoint.npz"
CHECKPOINT_FORMAT = "fastmlp.checkpoint/1"
# The tags of the same layout that this version reads (1: before the tag was a string).
READABLE_FORMATS = (CHECKPOINT_FORMAT, 1)


def resolve_checkpoint_path(path: str | Path) -> Path:
    """``path`` itself if it is a file, ``path/checkpoint.npz`` if it is a run folder (FileNotFoundError if neither)."""
    return resolve_checkpoint(path, CHECKPOINT_NAME)


def _split_state(state: Any, prefix: str, arrays: dict[str, np.ndarray]) -> Any:
    """Move the arrays of a nested state dict into ``arrays`` (keys ``prefix/a/b``); return the JSON-able rest."""
    if isinstance(state, Mapping):
        return {str(k): _split_state(v, f"{prefix}/{k}", arrays) for k, v in state.items()}
    if isinstance(state, np.ndarray):
        arrays[prefix] = state
        return {"__array__": prefix}
    if isinstance(state, np.generic):
        return state.item()
    if isinstance(state, (list, tuple)):
        return [_split_state(v, f"{prefix}/{i}", arrays) for i, v in enumerate(state)]
    return state


def _join_state(state: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """Inverse of :func:`_split_state`."""
    if isinstance(state, dict):
        if set(state) == {"__array__"}:
            return arrays[state["__array__"]]
        return {k: _join_state(v, arrays) for k, v in state.items()}
    if isinstance(state, list):
        return [_join_state(v, arrays) for v in state]
    return state


def save_checkpoint(path: str | Path, *, model, optimizer, step: int, data_state: Mapping[str, Any],
                    meta: Mapping[str, Any]) -> None:
    """Write the full training state to ``path`` (``.npz``) atomically.

    Parameters
    ----------
    path : path
        Usually ``<out_dir>/checkpoint.npz``.
    model, optimizer
        A :class:`fastmlp.MLP` and its ``fastmlp.optim`` optimizer (their ``state_dict()``).
    step : int
        Updates made.
    data_state : mapping
        The training ``DataSet.get_state()``.
    meta : mapping
        JSON-able extras stored in ``meta`` (the loop's ``flags``, ``rows``, ``wall_seconds``).
    """
    arrays: dict[str, np.ndarray] = {}
    arrays.update({f"model/{k}": v for k, v in model.state_dict().items()})
    arrays.update({f"optim/{k}": np.asarray(v) for k, v in optimizer.state_dict().items()})
    data_json = _split_state(dict(data_state), "data", arrays)
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    arrays["rng/keys"] = keys
    full_meta = {
        "format": CHECKPOINT_FORMAT,
        "step": int(step),
        "network": model.network_settings(),
        "data_state": data_json,
        "numpy_rng": {"name": name, "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(cached_gaussian)},
        **meta,
    }
    arrays["meta"] = np.array(json_text(full_meta))  # strict JSON: a NaN would be null
    atomic_savez(path, **arrays)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` at ``path``, read without pickles and with bounded memory.

    Members must be stored uncompressed (as :func:`save_checkpoint` writes them), hold
    no Python objects, and be exactly as long as their headers say: a small hostile
    file can neither unpickle code nor unpack into a huge array.
    """
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            _check_member(archive, info)
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _check_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"member {info.filename!r} is compressed; checkpoints are written uncompressed")
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"member {info.filename!r}: .npy format {version} is not one fastmlp writes")
        if dtype.hasobject:
            raise ValueError(f"member {info.filename!r} holds Python objects (pickles are never loaded)")
        declared = f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if declared != info.file_size:
        raise ValueError(f"member {info.filename!r}: its header declares {declared} bytes, it has {info.file_size}")


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(what)


def _check_layout(meta: Any, arrays: Mapping[str, np.ndarray]) -> None:
    """The parts :func:`load_checkpoint` and ``--resume`` read, with the types they need."""
    _require(isinstance(meta, dict), "'meta' is not a JSON object")
    _require(meta.get("format") in READABLE_FORMATS,
             f"checkpoint format {meta.get('format')!r} is not one this version of fastmlp reads "
             f"({CHECKPOINT_FORMAT!r})")
    step = meta.get("step")
    _require(isinstance(step, int) and not isinstance(step, bool) and step >= 0, f"'step' is {step!r}")
    rng = meta.get("numpy_rng")
    _require(isinstance(rng, dict) and {"name", "pos", "has_gauss", "cached_gaussian"} <= set(rng),
             "no NumPy RNG state ('numpy_rng')")
    keys = arrays.get("rng/keys")
    _require(keys is not None and keys.shape == (624,) and keys.dtype == np.uint32, "no MT19937 keys ('rng/keys')")
    _require(isinstance(meta.get("data_state"), dict), "no batch-order state ('data_state')")
    _require(isinstance(meta.get("flags", {}), dict), "'flags' is not a JSON object")
    rows = meta.get("rows", [])
    _require(isinstance(rows, list) and all(isinstance(r, dict) and isinstance(r.get("step"), int) for r in rows),
             "'rows' is not a list of curve rows")
    _require(isinstance(meta.get("wall_seconds", 0.0), (int, float)), "'wall_seconds' is not a number")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``path``: the file or its run folder).

    Returns
    -------
    dict
        ``path`` (the file), ``meta`` (dict: ``step``, ``flags``, ``rows``, ...), ``model``
        and ``optim`` (dicts of arrays, for ``load_state_dict``), ``data_state`` (for
        ``DataSet.set_state``), ``numpy_rng`` (for ``np.random.set_state``).

    Raises
    ------
    FileNotFoundError, ValueError
        If ``path`` is missing, or is not a fastmlp checkpoint of a format this version
        reads: a truncated or corrupt file, another program's ``.npz``, a member holding
        pickled objects (never unpickled) all give a ValueError naming the file.
    """
    path = resolve_checkpoint_path(path)
    try:
        arrays = _read_arrays(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
        raise ValueError(f"{str(path)!r} is not a readable .npz checkpoint: {exc}") from None
    try:
        _require("meta" in arrays, "no 'meta' entry")
        try:
            meta = json.loads(str(arrays.pop("meta")))
        except ValueError:
            _require(False, "'meta' is not JSON")
        _check_layout(meta, arrays)
        rng = meta.pop("numpy_rng")
        data_state = _join_state(meta.pop("data_state"), arrays)
    except (ValueError, KeyError, TypeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise ValueError(f"{str(path)!r} is not a fastmlp checkpoint this version reads: {message}") from None
    return {
        "path": path,
        "meta": meta,
        "model": {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")},
        "optim": {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")},
        "data_state": data_state,
        "numpy_rng": (rng["name"], arrays["rng/keys"], rng["pos"], rng["has_gauss"], rng["cached_gaussian"]),
    }
