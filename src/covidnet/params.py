"""Read ``params.yaml``: the one source of truth for every stage parameter.

``params.yaml`` holds one section per stage plus ``profile`` (a name) and ``profiles``
(named overrides). :func:`load_params` deep-merges ``profiles[profile]`` over the sections,
so ``dvc exp run --set-param profile=paper`` switches every stage to the paper's
configuration at once. Each stage reads its own section into a frozen dataclass with
:func:`section`, which rejects unknown and missing keys with the file and the field named.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from covidnet.errors import CovidnetError

log = logging.getLogger(__name__)

#: The params file every command reads by default (``--params``), relative to the working folder.
DEFAULT_PARAMS = Path("params.yaml")

T = TypeVar("T")


class ParamsError(CovidnetError, ValueError):
    """A ``params.yaml`` value is missing, unknown or of the wrong type."""


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def params_file(path: Path | str = DEFAULT_PARAMS) -> Path:
    """The params file to read: ``path``, except that the default ``params.yaml``, when the working
    folder has none, is the copy shipped inside the package (the repository's own file, with its
    CPU-sized default profile), so an installed wheel runs from any folder."""
    path = Path(path)
    if path.is_file() or path != DEFAULT_PARAMS:
        return path
    packaged = Path(str(resources.files("covidnet") / "params.yaml"))
    if packaged.is_file():
        log.info("no %s in %s: using the params shipped with the package (%s)", path, Path.cwd(), packaged)
        return packaged
    return path


def load_params(path: Path | str = DEFAULT_PARAMS, profile: str | None = None, source: str | None = None
                ) -> dict[str, Any]:
    """Load ``params.yaml`` and apply the selected profile's overrides.

    Args:
        path: the params file (:func:`params_file` resolves the default).
        profile: overrides the file's own ``profile`` key when given.
        source: how errors name the file (default: its path).

    Returns:
        The merged parameters, with ``profile`` set to the profile applied and
        ``_source`` set to the file path (for error messages).
    """
    path = params_file(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the repository root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    profiles = raw.pop("profiles", {}) or {}
    name = profile or raw.get("profile") or "default"
    if name not in ("default", *profiles):
        known = ", ".join(["default", *profiles])
        raise ParamsError(f"{path}: profile {name!r} is not defined under 'profiles' (known: {known})")
    merged = _deep_merge(raw, profiles.get(name, {}) or {})
    merged["profile"] = name
    merged["_source"] = source or str(path)
    return merged


def override(params: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Merged params with ``{section: {key: value}}`` laid over them; ``None`` values are skipped
    (a pipeline parameter left unset keeps the file's value). ``params`` is not changed."""
    out = dict(params)
    for name, values in overrides.items():
        kept = {k: v for k, v in values.items() if v is not None}
        if kept:
            out[name] = {**out.get(name, {}), **kept}
    return out


def profile_name(params: dict[str, Any]) -> str:
    """The profile :func:`load_params` applied (``default`` when none)."""
    return str(params.get("profile") or "default")


def is_synthetic(params: dict[str, Any]) -> bool:
    """Whether the cohort is the synthetic one (``data.source: synthetic``); everything computed on it says so."""
    return params.get("data", {}).get("source") == "synthetic"


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ParamsError as exc:
                errors.append(str(exc))
        raise ParamsError(errors[0] if errors else f"{where}: got {value!r}")
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        converted = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(converted) if origin is tuple else converted
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ParamsError(f"{where}: expected a string, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str):
            raise ParamsError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    return value


def _build(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, dict):
        raise ParamsError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ParamsError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ParamsError(f"{where}.{name}: required key is missing")
    try:
        return cls(**kwargs)
    except ParamsError:
        raise
    except (ValueError, TypeError) as exc:  # a range check of the section's dataclass
        raise ParamsError(str(exc)) from None


def section(params: dict[str, Any], name: str, cls: type[T]) -> T:
    """Build the dataclass ``cls`` from section ``name`` of merged params.

    Raises:
        ParamsError: naming the params file and the dotted key, e.g.
            ``params.yaml: preprocess.depth: expected an integer, got 'x'``.
    """
    source = params.get("_source", "params.yaml")
    if name not in params:
        raise ParamsError(f"{source}: section {name!r} is missing")
    try:
        return _build(cls, params[name], name)
    except ParamsError as exc:
        raise ParamsError(f"{source}: {exc}") from None
