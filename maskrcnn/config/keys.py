"""How a config key is declared: ``key(default, *checks, resume=...)`` beside its section.

A section is a frozen dataclass deriving from ``Section``; each field is declared once with its
type (the annotation), its default, its checks and whether ``--resume`` may change it.
``Section.validate`` runs ``check_keys`` (the declared checks, in field order) and then the
section's ``check()`` (rules between its keys). Sections validate when built, so a config file,
``--set``, a thresholds file, a checkpoint's saved config and ``dataclasses.replace`` all get the
same checks; the training-only sections (``solver``, ``train``) validate where training starts, so
a config that only evaluates or predicts need not hold a schedule that could train.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

from maskrcnn.errors import UserError


class ConfigError(UserError, ValueError):
    """A bad configuration file, key or value; the message names the key and what is wrong."""


# A check takes the dotted key and the value and returns the error message, or None when the value is fine.
Check = Callable[[str, Any], Optional[str]]


def rule(ok: Callable[[Any], bool], message: str) -> Check:
    """A check from a predicate and a message template: ``{key}`` the dotted key, ``{v}`` the value,
    ``{vl}`` the value as a list (tuples print as YAML writes them)."""

    def check(name: str, value: Any) -> Optional[str]:
        if ok(value):
            return None
        return message.format(key=name, v=value, vl=list(value) if isinstance(value, tuple) else value)

    return check


def one_of(choices: Sequence[Any], message: str) -> Check:
    """The value is one of ``choices``; ``message`` may use ``{choices}`` (comma-separated)."""
    return rule(lambda v: v in choices, message.replace("{choices}", ", ".join(map(str, choices))))


def positive_list(name: str, value: Sequence[float]) -> Optional[str]:
    """A non-empty list of finite numbers > 0."""
    if len(value) == 0:
        return f"{name} is empty; give at least one value"
    for k, v in enumerate(value):
        if not (math.isfinite(v) and v > 0):
            return f"{name}[{k}] must be a finite number > 0, got {v!r}"
    return None


def key(default: Any, *checks: Check, resume: Optional[bool] = None) -> Any:
    """A config key: its default, its checks and whether ``--resume`` may change it (None: the
    section's ``RESUME``). The type is the field's annotation."""
    return dataclasses.field(default=default, metadata={"checks": checks, "resume": resume})


def section(cls: type, resume: Optional[bool] = None) -> Any:
    """A nested section; ``resume`` (when given) replaces the nested section's own ``RESUME``."""
    return dataclasses.field(default_factory=cls, metadata={"resume": resume})


class Section:
    """Base of the config sections: ``PREFIX`` is the section's dotted name (``model.anchors``),
    ``RESUME`` whether ``--resume`` may change its keys by default and ``CHECK_WHEN_BUILT`` whether
    ``validate()`` runs on construction (else where the section is used, e.g. by the trainer)."""

    PREFIX: ClassVar[str] = ""
    RESUME: ClassVar[bool] = False
    CHECK_WHEN_BUILT: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.CHECK_WHEN_BUILT:
            self.validate()

    def validate(self) -> None:
        """ConfigError naming the key for the first value the declared checks or ``check()`` refuse."""
        check_keys(self)
        self.check()

    def check(self) -> None:
        """Rules between this section's keys (ConfigError naming them); none by default."""


def check_keys(obj: Section) -> None:
    """Run the declared checks of every field of ``obj``; ConfigError with the first failure."""
    for f in dataclasses.fields(obj):
        for check in f.metadata.get("checks", ()):
            message = check(f"{obj.PREFIX}.{f.name}", getattr(obj, f.name))
            if message:
                raise ConfigError(message)


def resume_policy(cls: type, prefix: str = "", inherited: Optional[bool] = None) -> Dict[str, bool]:
    """``{dotted key: whether --resume may change it}`` for every leaf key of section class ``cls``."""
    default = cls.RESUME if inherited is None else inherited
    out: Dict[str, bool] = {}
    for f in dataclasses.fields(cls):
        name = f"{prefix}.{f.name}" if prefix else f.name
        resume = f.metadata.get("resume")
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            out.update(resume_policy(sub, name, resume))
        else:
            out[name] = default if resume is None else resume
    return out


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(saved: Dict[str, Any], current: Dict[str, Any]) -> List[Tuple[str, Any, Any]]:
    """``(key, saved value, current value)`` for every flattened key whose value differs (keys
    only one side has, from an older or newer version of the config, are left out)."""
    old, new = flatten(saved), flatten(current)
    return [(k, old[k], new[k]) for k in sorted(new) if k in old and old[k] != new[k]]
