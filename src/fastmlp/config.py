"""A run's settings as one typed value: a frozen dataclass, checked once, when it is made.

A trainer family declares its settings as a subclass of :class:`RunConfig`, each field
made by :func:`setting`: its default, the constraint that checks it (an entry of
:data:`fastmlp.hyperparams.CONSTRAINTS`, or a :class:`~fastmlp.hyperparams.Constraint`
of its own), its help text and, where the command line calls it otherwise (the
course's ``--dnn_hidden_units``), its flag. Then

- the library reads one name per setting (``config.hidden_units``) and never a flag;
- a bad value is refused when the configuration is made, with the table's message,
  named as the caller names it: ``hidden_units: expected ...`` from the library,
  ``--dnn_hidden_units: expected ...`` from a command line (:meth:`RunConfig.create`);
- a command line is generated from the fields (``fastmlp.cli.add_config_arguments``),
  so only command-line modules know about flags.

Checks that join several settings (the optimizer with Nesterov momentum, sizes against
the machine's memory) are a subclass's :meth:`RunConfig.check_together`.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from typing import Any, Callable, Iterator, Mapping

from fastmlp.hyperparams import CAST_TO_DTYPE, Constraint, check, check_in_dtype

__all__ = ["RunConfig", "setting"]

# What a message calls a setting while a configuration is being made (see RunConfig.create).
_LABEL: contextvars.ContextVar[Callable[[str], str]] = contextvars.ContextVar("fastmlp_config_label", default=str)


def setting(default: Any, *, check: str | Constraint | None = None, help: str = "", flag: str | None = None,
            group: str = "run", path: bool = False, metavar: str | None = None) -> Any:
    """One field of a :class:`RunConfig`.

    Parameters
    ----------
    default
        The value when none is given (immutable: a tuple for a list of widths).
    check : str or Constraint, optional
        The entry of :data:`fastmlp.hyperparams.CONSTRAINTS` (or a constraint) that
        checks the value and gives its canonical form; None for no check.
    help : str
        What the setting does, for the command line's ``--help``.
    flag : str, optional
        The command line's name for it where that differs from the field's name.
    group : str
        The heading it is listed under in ``--help``.
    path : bool
        A file or folder (or None): kept as ``str`` (``os.fspath``), not checked.
    metavar : str, optional
        What ``--help`` calls the flag's value (default: the flag in capitals, or its choices).
    """
    return dataclasses.field(default=default, metadata={"check": check, "help": help, "flag": flag,
                                                        "group": group, "path": path, "metavar": metavar})


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Base of every trainer family's settings: subclasses only declare fields (:func:`setting`).

    Made directly (``FamilyConfig(batch_size=64)``, names as the library calls
    them) or with :meth:`create` (from a mapping, with a command line's labels);
    :meth:`replace` makes a changed copy, checked again.

    Raises
    ------
    TypeError, ValueError
        On construction, for the first bad value: ``"<label>: expected <what>, got <value>"``.
    """

    def __post_init__(self) -> None:
        label = _LABEL.get()
        values = {}
        for spec in dataclasses.fields(self):
            value, rule = getattr(self, spec.name), spec.metadata.get("check")
            if spec.metadata.get("path"):
                value = _path(value, label(spec.name))
            elif rule is not None:
                value = check(rule, value, label=label(spec.name))
            values[spec.name] = tuple(value) if isinstance(value, list) else value
        if "dtype" in values:  # the kernels use these numbers in the model's floating-point type
            for name in CAST_TO_DTYPE:
                if name in values:
                    check_in_dtype(name, values[name], values["dtype"], label=label(name))
        self.check_together(values, label)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def check_together(self, values: dict[str, Any], label: Callable[[str], str]) -> None:
        """Checks joining several settings (``values``: each one checked, by field name); raise to refuse."""

    # -- making one -----------------------------------------------------------

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The settings' names, in declaration order."""
        return tuple(spec.name for spec in dataclasses.fields(cls))

    @classmethod
    def flag(cls, name: str) -> str:
        """The command line's name of setting ``name`` (without ``--``)."""
        return _field(cls, name).metadata.get("flag") or name

    @classmethod
    def settings_of(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values``' settings by field name: each read by its field name or its flag, the flag winning.

        For what names settings by flag (a checkpoint's record, a Namespace built by
        hand) or by both (a parsed command line some key of which was then set by
        flag). Names of no setting are left out.
        """
        found = {}
        for name in cls.names():
            for key in (name, cls.flag(name)):
                if key in values:
                    found[name] = values[key]
        return found

    @classmethod
    def create(cls, values: Mapping[str, Any], *, by_flag: bool = False,
               label: Callable[[str], str] | None = None) -> "RunConfig":
        """A configuration from ``values``; the settings it does not name keep their defaults.

        Parameters
        ----------
        values : mapping
            Settings by field name, or by flag name with ``by_flag`` (a checkpoint's
            saved flags, a parsed command line).
        by_flag : bool
            Keys are the command line's names (:meth:`flag`).
        label : callable, optional
            What a message calls a setting, from its field name. Default: the field
            name, or ``--<flag>`` with ``by_flag``.

        Raises
        ------
        ValueError
            For a key that names no setting (the valid names are listed), or a bad value.
        TypeError
            For a value of the wrong type.
        """
        rename = {cls.flag(name): name for name in cls.names()} if by_flag else {name: name for name in cls.names()}
        if label is None:
            label = (lambda name: f"--{cls.flag(name)}") if by_flag else str
        unknown = sorted(set(values) - set(rename))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown setting(s) {unknown}; expected some of {sorted(rename)}")
        with _labelled(label):
            return cls(**{rename[key]: value for key, value in values.items()})

    def replace(self, **changes: Any) -> "RunConfig":
        """A copy with ``changes`` (by field name), checked again."""
        return dataclasses.replace(self, **changes)

    # -- reading one ------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        """``{field name: value}`` (lists of widths as lists), e.g. for metrics.json."""
        return {name: _plain(getattr(self, name)) for name in self.names()}

    def as_flags(self) -> dict[str, Any]:
        """``{flag name: value}``: what checkpoints record, so runs of every version read alike."""
        return {self.flag(name): value for name, value in self.as_dict().items()}


def _path(value: Any, label: str) -> str | None:
    if value is None:
        return None
    try:
        return os.fsdecode(value)
    except TypeError:
        raise TypeError(f"{label}: expected a path (str or os.PathLike) or None, got {value!r}") from None


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _field(cls: type, name: str) -> dataclasses.Field:
    for spec in dataclasses.fields(cls):
        if spec.name == name:
            return spec
    raise ValueError(f"{cls.__name__}: no setting named {name!r}")


@contextlib.contextmanager
def _labelled(label: Callable[[str], str]) -> Iterator[None]:
    token = _LABEL.set(label)
    try:
        yield
    finally:
        _LABEL.reset(token)

