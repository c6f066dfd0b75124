"""Loading: YAML files (with their ``base:`` chain), dicts and ``--set`` overrides -> a checked ``Config``.

- ``base: other.yaml`` (a path relative to the file) is loaded first and overridden key by key,
  recursively (mappings merge, lists and other values replace); a chain that comes back to a file
  is an error naming the chain.
- An unknown key is an error that suggests the nearest valid key (``did you mean
  solver.max_iter?``: the same name in another section, else the closest by ``difflib``) and lists
  the valid keys at that level; a value of the wrong type is an error naming the key.
- Keys that older versions wrote (``RETIRED_KEYS``) are dropped from files and saved checkpoint
  configs, with a warning when they held a non-default value.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import typing
import warnings
from typing import Any, Dict, Optional, Sequence

import yaml

from maskrcnn.config.keys import ConfigError
from maskrcnn.config.sections import Config
from maskrcnn.config.yamlfile import load_yaml, read_yaml_mapping


def config_keys(cls=None, prefix: str = "") -> list:
    """Every dotted leaf key of ``cls`` (default: ``Config``), e.g. ``solver.max_iter``."""
    cls = Config if cls is None else cls
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        out += config_keys(hints[f.name], key) if dataclasses.is_dataclass(hints[f.name]) else [key]
    return out


def suggest_key(key: str, valid: Sequence[str]) -> Optional[str]:
    """The valid key nearest to ``key``: one with the same last name (``train.max_iter`` ->
    ``solver.max_iter``), else the closest by ``difflib`` (``solver.lrr`` -> ``solver.lr``), or None."""
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in valid if k.rsplit(".", 1)[-1] == leaf]
    if same_leaf:
        return difflib.get_close_matches(key, same_leaf, n=1, cutoff=0.0)[0]
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return close[0]
    close = difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1] for k in valid], n=1, cutoff=0.75)
    return next((k for k in valid if close and k.rsplit(".", 1)[-1] == close[0]), None)


def did_you_mean(key: str, valid: Sequence[str]) -> str:
    """`` (did you mean X?)`` for the nearest valid key, or an empty string."""
    near = suggest_key(key, valid)
    return f" (did you mean {near}?)" if near else ""


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return build_section(tp, value, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def build_section(cls, values: Dict[str, Any], prefix: str = ""):
    """An instance of section class ``cls`` from a plain dict (its declared checks run on construction);
    ConfigError naming the key for an unknown key or a value of the wrong type."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
        full = f"{prefix}.{k}" if prefix else k
        if k not in names:
            hint = did_you_mean(full, config_keys())
            raise ConfigError(f"unknown config key '{full}'{hint}; valid keys here: {', '.join(names)}")
        kwargs[k] = _coerce(v, hints[k], full)
    return cls(**kwargs)


def merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """``base`` with ``over`` on top: mappings merge key by key at every depth, other values (lists
    included) replace."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def read_with_bases(path: str, seen: Sequence[str] = ()) -> Dict[str, Any]:
    """The mapping of config file ``path`` merged over its ``base:`` file's (a path relative to
    ``path``), recursively; ConfigError for a chain that comes back to a file or a missing base."""
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: circular 'base:' chain ({' -> '.join(list(seen) + [path])})")
    data = read_yaml_mapping(path, allow_empty=False)
    base = data.pop("base", None)
    if base is None or base == "":
        return data
    if not isinstance(base, str):
        raise ConfigError(f"base: must name one YAML file, got {base!r} ({path})")
    base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
    if not os.path.isfile(base_path):
        raise ConfigError(f"base file not found: {base_path} (the 'base:' of {path})")
    return merge(read_with_bases(base_path, list(seen) + [path]), data)


def parse_overrides(overrides: Sequence[str]) -> Dict[str, Any]:
    """``["a.b=1", "c=[1,2]"]`` -> nested dict, values parsed as YAML."""
    out: Dict[str, Any] = {}
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override")
        node[parts[-1]] = value
    return out


def reject_repeated_keys(overrides: Sequence[str], where: str = "--set") -> None:
    """ConfigError naming the key when a user's ``key=value`` list sets one key twice (the later would
    win without a word). Scripts that layer their own defaults under the user's call
    ``parse_overrides`` directly, where the last one wins by design."""
    seen = set()
    for item in overrides or ():
        key = item.split("=", 1)[0].strip()
        if key in seen:
            raise ConfigError(f"{where}: the key {key!r} is given twice; give it once")
        seen.add(key)


def to_dict(cfg) -> Dict[str, Any]:
    """Plain nested dict (tuples as lists) for saving next to checkpoints."""

    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


# Keys that older versions wrote and that no longer exist: (default, why). Files and checkpoints
# holding them still load; the key is dropped, with a warning when it held another value.
RETIRED_KEYS = {
    "model.mask_head.mask_threshold": (
        0.5, "it reached only MaskRCNN.predict, never post-processing; test.mask_thresh binarises masks"),
}


def _drop_retired(values: Dict[str, Any], source: str) -> Dict[str, Any]:
    values = copy.deepcopy(values)
    for key, (default, why) in RETIRED_KEYS.items():
        *parents, leaf = key.split(".")
        node = values
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            value = node.pop(leaf)
            if value != default:
                warnings.warn(f"{source}: {key}={value!r} is ignored: {why}", UserWarning, stacklevel=3)
    return values


def from_dict(values: Dict[str, Any], overrides: Sequence[str] = (), source: str = "saved config") -> Config:
    """A Config from a plain dict (e.g. a checkpoint's ``config``), then ``key=value`` overrides."""
    if not isinstance(values, dict):
        raise ConfigError(f"the config must be a mapping of sections (model, data, ...), got {type(values).__name__} "
                          f"{str(values)[:40]!r} ({source})")
    return build_section(Config, merge(_drop_retired(values, source), parse_overrides(overrides)))


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> Config:
    """Load ``path`` (with its ``base:`` chain) and apply ``key=value`` overrides."""
    return from_dict(read_with_bases(path) if path else {}, overrides, source=path or "config")


def dump_config(cfg: Config, path: str) -> None:
    """Write the resolved config as YAML (atomically)."""
    from maskrcnn.fileio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


