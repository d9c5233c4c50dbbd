"""Typed program configs: frozen dataclasses read from YAML, ``key=value`` overrides and flags.

A program's settings are one frozen dataclass of nested sections (levanter's ``TrainLmConfig``
style), e.g. ``BaseTrainConfig(data=..., tokenizer=TokenizerSettings(...), train=...)``.
:func:`load` reads one from a YAML file, applies ``a.b=value`` overrides and the parsed flags
(named like the fields they set), and checks it once against the field annotations
(:func:`from_dict`): an unknown key (with a "did you mean" suggestion), a value of the wrong type,
or a missing required key is a ValueError naming the key. Checks of meaning (ranges, choices)
stay in each dataclass's ``__post_init__``.

Resuming: fields marked :func:`free_on_resume` (how often a run logs, evaluates and saves, where
it writes, how it lays itself out) may differ between a checkpoint and the run continuing it;
:func:`resume_view` is the rest, :func:`differences` names what changed between two of them. A
setting added after a checkpoint was made is missing from its view; it counts as the field's
default (:func:`resume_defaults`), so a new setting's default must keep the behaviour before it.

``USER_ERRORS`` are the exceptions a program reports as ``error: ...`` (bad input) rather than
as a traceback, and :class:`InputError` the exit a program raises for bad input itself;
:func:`run_cli` runs a program's ``main`` and gives both ``error: ...`` on stderr and exit status
2, as a bad command line does (:class:`ArgumentParser`: argparse's, its error one line). This
module knows no program: it imports nothing from ``train`` or ``infer``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import signal
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import yaml

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError)
BAD_INPUT_EXIT_CODE = 2  # argparse's, for every bad-input exit
INTERRUPTED_EXIT_CODE = 128 + signal.SIGINT  # 130: the shell's code for Ctrl-C
FREE_ON_RESUME = "free_on_resume"  # field metadata flag, see free_on_resume()
ConfigT = TypeVar("ConfigT")


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose bad-command-line exit is one line, ``error: ...`` (naming
    ``--help``) and status 2, as every other bad input of the programs, rather than the whole
    usage block first."""

    def error(self, message: str):
        self.exit(BAD_INPUT_EXIT_CODE, f"error: {message} (see {self.prog} --help)\n")


class InputError(SystemExit):
    """A program's exit on bad input: ``str()`` is the message (``error: ...``), the exit status
    ``BAD_INPUT_EXIT_CODE``; :func:`run_cli` prints the message."""

    def __init__(self, message: str):
        super().__init__(BAD_INPUT_EXIT_CODE)
        self.message = message

    def __str__(self) -> str:
        return self.message


def run_cli(main: Callable[[], Any]) -> int:
    """Run a program's ``main`` and return its exit status: bad input (``InputError``, or one of
    ``USER_ERRORS``: a ValueError, missing files, unwritable outputs) prints ``error: ...`` and
    gives 2; Ctrl-C outside a train loop (or a second one inside it) prints ``interrupted`` and
    gives 130; otherwise ``main``'s own status when it returns an int, else 0."""
    try:
        status = main()
    except InputError as e:
        print(e.message, file=sys.stderr)
        return BAD_INPUT_EXIT_CODE
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return BAD_INPUT_EXIT_CODE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    return status if isinstance(status, int) else 0


def free_on_resume(default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that may change when a run resumes from a checkpoint: cadence (how
    often to log, evaluate, save; how many checkpoints to keep) or where and how the run executes
    (paths, memory layout), never what it computes. Without ``default`` the field is required."""
    return dataclasses.field(default=default, metadata={FREE_ON_RESUME: True})


def load_yaml(path: str) -> dict[str, Any]:
    """Read a YAML config file into a dict (empty file -> {}); a missing file is a
    FileNotFoundError naming it, one that cannot be read or is not YAML a ValueError."""
    try:
        with open(path) as f:
            return yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path}: no such file") from None
    except OSError as e:
        raise ValueError(f"config file {path}: {e.strerror or e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {path} is not valid YAML: {_one_line(e)}") from None


def _one_line(error: Exception) -> str:
    """A YAML error's message on one line."""
    return " ".join(str(error).split())


def apply_overrides(values: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(
                f"override {item!r}: the value is not valid YAML: {_one_line(e)}"
            ) from None
        node = values
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p!r} is not a section")
        node[leaf] = value
    return values


def flag_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The parsed flags that set fields of dataclass ``cls``, as a nested dict: each attribute
    of ``args`` named like a field (at any depth of sections) and not None."""
    values: dict[str, Any] = {}
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        section = _section_type(hints[f.name])
        if section is not None:
            nested = flag_values(args, section)
            if nested:
                values[f.name] = nested
        elif getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
    return values


def merge(values: dict[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    """``updates`` (a nested dict) written over ``values`` in place, section by section; a
    section that is not a mapping in ``values`` is left as it is (for :func:`from_dict` to
    report)."""
    for key, value in updates.items():
        if not isinstance(value, Mapping):
            values[key] = value
        elif isinstance(values.setdefault(key, {}), dict):
            merge(values[key], value)
    return values


def load(
    cls: type[ConfigT],
    path: str | None,
    *,
    overrides: Iterable[str] = (),
    args: argparse.Namespace | None = None,
    sections: Iterable[str] | None = None,
) -> ConfigT:
    """A ``cls`` config: YAML file ``path`` (None: no file; only its top-level keys in
    ``sections`` when given; the others belong to other programs), then the ``a.b=value``
    ``overrides``, then the flags in ``args`` named like fields (:func:`flag_values`), checked
    by :func:`from_dict`."""
    values = {} if path is None else load_yaml(path)
    if not isinstance(values, dict):
        raise ValueError(f"config {path} is not a mapping of keys")
    if sections is not None:
        values = {k: v for k, v in values.items() if k in set(sections)}
    apply_overrides(values, overrides)
    if args is not None:
        merge(values, flag_values(args, cls))
    return from_dict(cls, values)


def from_dict(cls: type[ConfigT], values: Mapping[str, Any], where: str = "") -> ConfigT:
    """Dataclass ``cls`` from a nested mapping, checked against its field annotations.

    Raises a ValueError naming the first unknown key (with the closest known one), value of the
    wrong type or missing required key; ``where`` prefixes key names (``'train.'``). Accepted:
    ``int``, ``float`` (an int, or a string like ``1e-3``, which YAML does not read as a number,
    becomes a float), ``str``, ``bool``, ``dict``, ``tuple[X, ...]`` (a list), ``X | None`` and
    nested dataclasses (a section of keys).
    """
    if not isinstance(values, Mapping):
        raise ValueError(
            f"config key {where.rstrip('.')!r} must be a section of keys, got {values!r}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _field_types(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = (
                f"did you mean {where}{close[0]}?"
                if close
                else f"the keys here are {', '.join(where + k for k in fields)}"
            )
            raise ValueError(f"unknown config key {where + str(key)!r}; {hint}")
        kwargs[key] = _typed(value, hints[key], f"{where}{key}")
    missing = [name for name, f in fields.items() if name not in kwargs and _required(f)]
    if missing:
        raise ValueError(f"the config is missing {', '.join(where + k for k in missing)}")
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain JSON-shaped data: sections as dicts, tuples as lists."""
    return _plain(dataclasses.asdict(config))


def _resumable(config: Any):
    """``(field, value)`` for each field of ``config`` not marked :func:`free_on_resume`."""
    for f in dataclasses.fields(config):
        if not f.metadata.get(FREE_ON_RESUME):
            yield f, getattr(config, f.name)


def resume_view(config: Any) -> dict[str, Any]:
    """What a checkpoint must agree with to be resumed: ``config`` as :func:`to_dict` gives it,
    less the fields marked :func:`free_on_resume` (in every section)."""
    return {
        f.name: resume_view(value) if dataclasses.is_dataclass(value) else _plain(value)
        for f, value in _resumable(config)
    }


def resume_defaults(config: Any) -> dict[str, Any]:
    """The defaults of the fields :func:`resume_view` gives (those that have one), shaped like
    it: what a checkpoint made before a setting existed ran with."""
    view = {}
    for f, value in _resumable(config):
        if dataclasses.is_dataclass(value):
            view[f.name] = resume_defaults(value)
        elif f.default is not dataclasses.MISSING:
            view[f.name] = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            view[f.name] = _plain(f.default_factory())
    return view


def differences(
    saved: Mapping[str, Any],
    now: Mapping[str, Any],
    where: str = "",
    defaults: Mapping[str, Any] | None = None,
) -> list[str]:
    """``key: saved -> now`` for each setting that differs between two config dicts (nested
    sections as ``a.b``; a key only one of them has shows as ``unset``). A key ``saved`` lacks
    counts as its value in ``defaults`` (:func:`resume_defaults`) where that has one: a
    checkpoint from before the setting existed."""
    defaults = defaults or {}
    saved = {**{k: v for k, v in defaults.items() if k in now}, **saved}
    changes = []
    for key in sorted(set(saved) | set(now), key=str):
        old, new = saved.get(key), now.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            inner = defaults.get(key)
            changes += differences(
                old, new, f"{where}{key}.", inner if isinstance(inner, Mapping) else None
            )
        elif key not in saved or key not in now or old != new:
            before, after = (repr(d[key]) if key in d else "unset" for d in (saved, now))
            changes.append(f"{where}{key}: {before} -> {after}")
    return changes


def subset(cls: type, name: str, exclude: Iterable[str], doc: str = "") -> type:
    """A frozen dataclass ``name`` with the fields of dataclass ``cls`` (types, defaults) but
    those in ``exclude``: the part of a config a program reads from its file, e.g. a model's
    architecture without the vocabulary size its tokenizer decides."""
    hints, skip = _field_types(cls), set(exclude)
    specs = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = (
            {}
            if _required(f)
            else {"default": f.default}
            if f.default is not dataclasses.MISSING
            else {"default_factory": f.default_factory}
        )
        specs.append((f.name, hints[f.name], dataclasses.field(**default, metadata=f.metadata)))
    made = dataclasses.make_dataclass(name, specs, frozen=True, kw_only=True)
    made.__doc__ = doc or f"The fields of {cls.__name__} but {', '.join(sorted(skip))}."
    made.__module__ = cls.__module__
    return made


# ----------------------------------------------------------------------------- type checks


def _field_types(cls: type) -> dict[str, Any]:
    """Field name -> annotation, evaluated (the modules use ``from __future__ import
    annotations``, so annotations are strings until resolved)."""
    return typing.get_type_hints(cls)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _options(tp: Any) -> tuple[Any, ...]:
    """The members of a union annotation (``int | None`` -> ``(int, NoneType)``), else (tp,)."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return typing.get_args(tp)
    return (tp,)


def _section_type(tp: Any) -> type | None:
    """The dataclass a field annotated ``tp`` holds as a section, if any."""
    return next((t for t in _options(tp) if dataclasses.is_dataclass(t)), None)


def _typed(value: Any, tp: Any, name: str) -> Any:
    """``value`` as a field annotated ``tp`` holds it; a ValueError naming key ``name`` if it
    has the wrong type."""
    options = _options(tp)
    if value is None and type(None) in options:
        return None
    section = _section_type(tp)
    if section is not None:
        if not isinstance(value, Mapping):
            raise ValueError(f"config key {name!r} must be a section of keys, got {value!r}")
        return from_dict(section, value, f"{name}.")
    for option in options:
        accepted, converted = _scalar(value, option, name)
        if accepted:
            return converted
    names = " or ".join(_type_name(t) for t in options)
    raise ValueError(f"config key {name!r} must be {names}, got {value!r}")


def _scalar(value: Any, tp: Any, name: str) -> tuple[bool, Any]:
    """``(True, converted)`` if ``value`` fits the non-union annotation ``tp``, else (False, _)."""
    origin = typing.get_origin(tp) or tp
    if origin is tuple and isinstance(value, (list, tuple)):
        item = typing.get_args(tp)[0] if typing.get_args(tp) else Any
        if item is Any:
            return True, tuple(value)
        return True, tuple(_typed(v, item, f"{name}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, str):
        try:
            return True, float(value)
        except ValueError:
            return False, None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return True, float(value)
    if isinstance(value, bool) and tp is not bool:
        return False, None
    if origin in (int, float, str, bool, dict, list) and isinstance(value, origin):
        return True, value
    return tp is Any, value


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if tp is float:
        return "float or int"
    origin = typing.get_origin(tp) or tp
    return "list" if origin is tuple else getattr(origin, "__name__", str(origin))


def _plain(value: Any) -> Any:
    """JSON-shaped: tuples as lists, recursively."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
