"""Typed configuration: YAML -> dotted command-line overrides -> a (nested) dataclass.

Every job has one config dataclass; this module turns a YAML file plus ``key.sub=value`` overrides into it:

    cfg = load_config(PretrainConfig, "configs/pretrain/tiny.yaml", ["optim.lr=3e-4", "scaling.num_workers=2"])

Rules: unknown keys fail at once naming the dotted key (and the file); values are type-checked against the
field annotations (``int``, ``float``, ``bool``, ``str``, ``Literal``, enums, ``X | None``, ``list``/``tuple``/
``dict`` of those, nested dataclasses); each dataclass' ``__post_init__`` then checks ranges.
Override values are parsed as YAML scalars (``true``, ``3``, ``[128, 512]``); floats such as ``1e-4`` are accepted.

A section may name a YAML file instead of spelling it out (``model: configs/model/tiny.yaml``, or the override
``model=configs/model/tiny.yaml``; relative to the working directory, like every path in a config). The file holds
the section itself, or a job config with the section under the same key (``model=configs/pretrain/tiny.yaml``
takes that run's model); later overrides reach into it (``model.n_blocks=3``). An override may also index a list
the file leaves at its default (``stages.0.max_epochs=2`` on a config with no ``stages``): the default list is
copied in first, then changed.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be loaded; the message names the file and the dotted key."""


SEED_MAX = 2**32 - 1
"""The largest seed numpy's and Optuna's RandomState take (fine-tuning and campaigns seed them)."""


def check_seed(value: int, key: str = "seed") -> None:
    check_range(key, value, 0, SEED_MAX)


def check_range(key: str, value: float, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False) -> None:  # fmt: skip
    """A ValueError naming ``key`` unless ``value`` is a finite number within [low, high] (open ends where asked):
    every numeric config field is checked when the config is built, before any worker starts."""
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (isinstance(value, int) or math.isfinite(value))
    )
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else (f"> {low}" if low_open else f">= {low}")
        hi = "" if high is None else (f"< {high}" if high_open else f"<= {high}")
        raise ConfigError(f"{key} must be a finite number {' and '.join(x for x in (lo, hi) if x)}, got {value!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


_SCALARS = (bool, int, float, str)


def _convert_scalar(value: Any, tp: type, key: str) -> Any:
    """bool, int, float (YAML 1.1 reads '1e-4' as a string) and str, strictly: no bool for an int."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        try:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                return float(value)  # YAML 1.1 reads '1e-4' as a string
        except ValueError:
            pass
        except OverflowError:
            raise ConfigError(f"{key}: {str(value)[:20]}... is too large for a number") from None
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if value is None:  # `key=`, `key=null`, `key:` with nothing: YAML's empty value is the empty string here
            return ""
        hint = ""
        if isinstance(value, bool | int | float | datetime.date):  # (an override keeps its text: apply_overrides)
            hint = (" (YAML reads yes/no/on/off/true/false as booleans, digits as numbers and 2024-01-01 as a date: "
                    "quote it, 'yes')")  # fmt: skip
        raise ConfigError(f"{key}: expected a string, got {value!r}{hint}")
    raise ConfigError(f"{key}: unsupported type {tp!r}")


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} does not fit {_type_name(tp)} ({'; '.join(errors)})")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _convert_section(value, tp, key)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{key}: {value!r} is not one of {[m.value for m in tp]}") from None
    if tp in _SCALARS:
        return _convert_scalar(value, tp, key)
    if origin in (list, Sequence, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        vt = args[1] if args else Any
        return {str(k): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def _convert_section(value: Any, tp: type, key: str) -> Any:
    """A nested config: a mapping, or a YAML file of one (errors then name the file too)."""
    if not _is_yaml_path(value):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__} (or a YAML file of one), got "
                              f"{type(value).__name__} {value!r}")  # fmt: skip
        return _build(tp, value, key)
    section = read_section(value, key)
    try:
        return _build(tp, section, key)
    except ConfigError as e:
        raise ConfigError(f"{key}={value}: {e}") from None


def _build(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            raise ConfigError(f"unknown key {key!r} (fields of {cls.__name__}: {', '.join(fields)})")
        kwargs[k] = _convert(v, hints[k], key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> (["optim", "lr"], 3e-4 parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value (e.g. optim.lr=3e-4)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], cls: type | None = None) -> dict[str, Any]:
    """Apply dotted overrides to a nested dict (in place; returned for convenience).

    A numeric part indexes a list that the file already has, or, given the config class ``cls``, the field's
    default list: ``stages.0.lr=3e-3``. Given ``cls``, a string field (or one of a set of strings) takes the
    override's text as it is (``task.positive_label=yes`` is ``"yes"``, not YAML's ``true``; ``run_name=2024`` and
    ``run_name=2024-01-01`` are strings, not a number and a date; ``deepspeed.bf16=false`` is ``"false"``).
    A key of a linked config (a string field naming another config file, with a sibling ``<field>_overrides``
    list, such as a tune config's ``finetune``) is appended to that list: ``finetune.task.train=s3://b/t.csv``
    adds ``task.train=s3://b/t.csv`` after the list's own entries, which it thereby overrides.
    """
    linked: dict[str, list[str]] = {}  # added to their lists after every override, so that none replaces them
    for text in overrides:
        path, value = parse_override(text)
        if cls is not None and len(path) > 1 and (link := linked_overrides_field(cls, path[0])):
            linked.setdefault(link, []).append(f"{'.'.join(path[1:])}={text.split('=', 1)[1].strip()}")
            continue
        if cls is not None and len(path) > 1 and typing.get_origin(_type_at(cls, path[:1])) is dict:
            path = _dotted_dict_key(data.get(path[0]), path, value)
        if (
            cls is not None
            and isinstance(value, bool | int | float | datetime.date)
            and _takes_text(_type_at(cls, path))
        ):
            value = text.split("=", 1)[1].strip()
        set_dotted(data, path, value, text, cls)
    for link, entries in linked.items():
        assert cls is not None  # linked is only filled given cls
        current = data.get(link)
        if current is None:
            current = _default_at(cls, [link])
        if not isinstance(current, list):
            raise ConfigError(f"{link} must be a list to take {entries}, got {current!r}")
        data[link] = [*current, *entries]
    return data


def _dotted_dict_key(mapping: Any, path: list[str], value: Any) -> list[str]:
    """For a mapping field whose keys hold dots (a tune config's ``space``: ``stages.0.lr``): ``space.stages.0.lr.high``
    sets the entry ``high`` of the key ``stages.0.lr`` when that key exists (the longest existing key wins), and
    ``space.stages.1.batch_size={type: choice, ...}`` (a whole mapping) adds the key ``stages.1.batch_size``."""
    rest = path[1:]
    keys = set(mapping) if isinstance(mapping, dict) else set()
    for n in range(len(rest), 0, -1):
        if ".".join(rest[:n]) in keys:
            return [path[0], ".".join(rest[:n]), *rest[n:]]
    if isinstance(value, dict):
        return [path[0], ".".join(rest)]
    raise ConfigError(f"override {'.'.join(path)}: {path[0]} has no key {'.'.join(rest[:-1]) or rest[0]!r} to change "
                      f"(its keys: {', '.join(sorted(keys)) or 'none'}); a new one is given whole: "
                      f"{path[0]}.KEY={{type: ..., low: ..., high: ...}}")  # fmt: skip


def _takes_text(tp: Any) -> bool:
    """A string field, or one of a fixed set of strings (``Literal["auto", "true", "false"]``)."""
    return tp is str or (typing.get_origin(tp) is Literal and all(isinstance(a, str) for a in typing.get_args(tp)))


def linked_overrides_field(cls: type, name: str) -> str | None:
    """``<name>_overrides`` when ``cls`` links another config file through its string field ``name`` (the file's
    overrides being that list of strings), else None."""
    link = f"{name}_overrides"
    if _type_at(cls, [name]) is str and typing.get_origin(_type_at(cls, [link])) is list:
        return link
    return None


def _type_at(cls: type, path: Sequence[str]) -> Any:
    """The declared type of the config field at a dotted path of ``cls`` (``X | None`` as ``X``), or None."""

    def bare(tp: Any) -> Any:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1 else tp

    tp: Any = cls
    for part in path:
        tp = bare(tp)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            tp = typing.get_type_hints(tp).get(part)
        elif typing.get_origin(tp) in (list, tuple, Sequence) and part.isdigit():
            tp = (typing.get_args(tp) or (Any,))[0]
        else:
            return None
    return bare(tp)


def set_dotted(data: dict[str, Any], path: Sequence[str], value: Any, what: str = "", cls: type | None = None) -> None:
    """``data[path] = value``, making sections on the way: a section named by a YAML file is read in; a list the
    data lacks is the default of ``cls``'s field at that place (when ``cls`` is given and has one)."""
    what = what or ".".join(path)
    node: Any = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {what!r}: {part!r} is not an index of the {len(node)}-item list "
                                  f"{'.'.join(path[:i])!r}")  # fmt: skip
            if last:
                node[int(part)] = value
                break
            key: Any = int(part)
        else:
            if last:
                node[part] = value
                break
            if part not in node and cls is not None:
                default = _default_at(cls, path[: i + 1])
                if isinstance(default, list):
                    node[part] = default
            key = part
            node.setdefault(part, {})
        if _is_yaml_path(node[key]):
            node[key] = read_section(node[key], ".".join(path[: i + 1]))
        if not isinstance(node[key], dict | list):
            raise ConfigError(f"override {what!r}: {part!r} is a value, not a section")
        node = node[key]


_NO_DEFAULT = object()


def _default_at(cls: type, path: Sequence[str]) -> Any:
    """The default value (as plain data) of the config field at a dotted path of ``cls``, or ``_NO_DEFAULT``."""
    tp: Any = cls
    value: Any = _NO_DEFAULT
    for part in path:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
            tp = args[0]  # X | None
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            field = next((f for f in dataclasses.fields(tp) if f.name == part), None)
            if field is None:
                return _NO_DEFAULT
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                value = getattr(value, part)
            elif field.default is not dataclasses.MISSING:
                value = field.default
            elif field.default_factory is not dataclasses.MISSING:
                try:
                    value = field.default_factory()
                except (TypeError, ValueError):
                    return _NO_DEFAULT
            else:
                return _NO_DEFAULT
            tp = typing.get_type_hints(tp)[part]
        elif isinstance(value, list | tuple) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
            tp = (typing.get_args(tp) or (Any,))[0]
        else:
            return _NO_DEFAULT
    return to_dict(value) if value is not _NO_DEFAULT else _NO_DEFAULT


def _is_yaml_path(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower().endswith((".yaml", ".yml"))


def read_section(path: str, key: str) -> dict[str, Any]:
    """A config section given as a YAML file: the file's own top level, or its ``key``'s last part when the file is
    a job config with that section (``model: configs/pretrain/tiny.yaml`` takes that job's model)."""
    name = key.rsplit(".", 1)[-1]
    try:
        data = read_yaml(path)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None
    if isinstance(data.get(name), dict):
        return data[name]
    return data


_MERGE = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would keep the last one silently). Keys
    are compared as written (tag and text), when the mapping is composed: before merge keys (``<<: *anchor``, whose
    entries a mapping may override) are expanded."""

    def compose_mapping_node(self, anchor: Any) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)  # type: ignore[no-untyped-call]
        seen: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE:
                continue
            key, line = (key_node.tag, key_node.value), key_node.start_mark.line + 1
            if key in seen:
                raise yaml.composer.ComposerError(None, None, f"key {key_node.value!r} given twice (lines {seen[key]} "
                                                  f"and {line}); keep one", key_node.start_mark)  # fmt: skip
            seen[key] = line
        return node


def read_yaml(path: str | Path) -> dict[str, Any]:
    from pbp.data.records import RecordError, decode_text

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.load(decode_text(p.read_bytes(), p), Loader=_UniqueKeyLoader)
    except RecordError as e:
        raise ConfigError(str(e)) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping, got {type(data).__name__}")
    return data


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    return _build(cls, data)


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = (), *, section: str | None = None
) -> T:
    """Load ``cls`` from a YAML file (or defaults when ``path`` is None) plus dotted overrides.

    ``section``: when the file has this top-level key, the config is read from it (so a model config can be read
    out of a job config: ``load_config(ModelConfig, "configs/pretrain/tiny.yaml", section="model")``).
    """
    data = read_yaml(path) if path is not None else {}
    if section is not None and section in data:
        data = data[section] or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: section {section!r} must be a mapping")
    data = apply_overrides(data, overrides, cls)
    try:
        return _build(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as plain YAML/JSON-friendly data (enums as values, tuples as lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
