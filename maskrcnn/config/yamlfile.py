"""YAML as the package reads it: one loader (``load_yaml``) with YAML 1.1's rules except that a
number in exponent form without a dot (``1e-4``, ``5E3``, ``-2.5e-3``) is a float, as YAML 1.2 and
Python read it; files (``read_yaml_mapping``) also refuse a key written twice in one mapping."""
from __future__ import annotations

import os
import re
from typing import Any, Dict

import yaml

from maskrcnn.config.keys import ConfigError


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose floats also match the exponent form without a dot (``1e-4``)."""


# YAML 1.1's float pattern (PyYAML's resolver) with the dot made optional before an exponent.
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)
_Loader.yaml_implicit_resolvers = {k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:float"]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load_yaml(stream) -> Any:
    """Parse YAML text (or a file object) with the package's loader: ``yaml.safe_load`` plus
    exponent floats without a dot (``1e-4``, ``1E3``) read as floats."""
    return yaml.load(stream, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass



class _UniqueKeyLoader(_Loader):
    """The package's loader (``_Loader``: exponent floats) that also refuses a key written twice in
    one mapping (plain YAML keeps the last one silently: a second ``model:`` section would replace
    the first)."""

    def construct_mapping(self, node, deep=False):
        seen: Dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.setdefault(key, line)
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                continue
            if first != line:
                raise ConfigError(f"the key {key!r} is written twice, on lines {first} and {line}: "
                                  f"keep one ({key_node.start_mark.name})")
        return super().construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping)


def read_yaml_mapping(path: str, kind: str = "config", missing: type = ConfigError,
                      allow_empty: bool = True) -> Dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file gives ``{}``, or with ``allow_empty=False``
    a ConfigError: a config file that holds nothing is a mistake, not "all defaults").

    Raises ``missing`` ("<kind> file not found: <path>") for a missing file, and ConfigError naming
    the file for invalid YAML, a key written twice in one mapping, or a top level that is not a mapping.
    """
    if os.path.isdir(path):
        raise ConfigError(f"{kind} file expected, got a folder ({path})")
    if not os.path.isfile(path):
        raise missing(f"{kind} file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.load(f, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
        except UnicodeDecodeError:
            raise ConfigError(f"not a text (YAML) file: {kind} files are YAML ({path})") from None
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            line = f" line {where.line + 1}" if where is not None else ""
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"not valid YAML: {what} ({path}{line})") from None
    if data is None:
        if not allow_empty:
            raise ConfigError(f"the {kind} file is empty (or only comments): give at least one section ({path})")
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data

