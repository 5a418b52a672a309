"""The configuration reference (`docs/configuration.md`), generated from the config models
themselves so it cannot drift: `make docs` writes it, a test checks the committed file is
current. Every key with its type and default; exporters and processors by registered type.

Written by hand rather than from `model_json_schema()`: the JSON schema flattens our
annotated types (durations, byte sizes, secrets) into plain strings and numbers, and the
reader wants the YAML key paths, not `$defs` references."""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from sidecar.component import exporter_factories, processor_factories
from sidecar.config import Config

HEADER = """# Configuration reference

Generated from the config models by `make docs` (`sidecar/configref.py`); a test fails when
this file is not current. Every key has a default, so an empty file is a valid config.
Durations take `500ms`, `5s`, `2m`; sizes take `512KiB`, `64MiB`; secrets take
`${env:NAME}` or `${file:/path}`. `null` turns an optional section or listener off. The
README explains what each part does.
"""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        base = args[0]
        meta = " ".join(str(m) for m in args[1:])
        if "duration" in meta:
            return "duration"
        if "_size" in meta:
            return "size"
        if "_endpoint" in meta:
            return "host:port"
        if "_octal" in meta:
            return "file mode"
        return _type_name(base)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        text = " or ".join(names)
        return f"{text} or null" if type(None) in args else text
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (list, tuple, frozenset, set):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {_type_name(args[1])}" if len(args) == 2 else "map"
    if isinstance(annotation, type):
        if issubclass(annotation, SecretStr):
            return "secret"
        if issubclass(annotation, BaseModel):
            return "section"
        if issubclass(annotation, enum.Enum):
            return " \\| ".join(f"`{m.value}`" for m in annotation)
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
                "Path": "path"}.get(annotation.__name__, annotation.__name__)
    return str(annotation)


def _kind(field: FieldInfo) -> str:
    """Our annotated types are recognised by their validator (pydantic moves `Annotated`
    metadata off the annotation into `field.metadata`)."""
    for meta in field.metadata:
        func = getattr(meta, "func", None)
        name = getattr(func, "__name__", "")
        if name in _KINDS:
            return _KINDS[name]
    return _type_name(field.annotation)


_KINDS = {"_duration": "duration", "_size": "size", "_endpoint": "host:port",
          "_octal": "file mode"}


def _size(value: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= scale and value % scale == 0:
            return f"{value // scale}{unit}"
    return str(value)


def _duration(value: float) -> str:
    if value and value < 1:
        return f"{value * 1000:g}ms"
    return f"{value:g}s"


def _default(field: FieldInfo) -> str:
    kind = _kind(field)
    if field.default is not PydanticUndefined and isinstance(field.default, (int, float)) \
            and not isinstance(field.default, bool):
        if kind == "size":
            return f"`{_size(int(field.default))}`"
        if kind == "duration":
            return f"`{_duration(float(field.default))}`"
        if kind == "file mode":
            return f"`{field.default:04o}`"
    if field.default_factory is not None:
        try:
            value = field.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return ""
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return ""
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (dict, list, tuple)) and not value:
        return "`[]`" if not isinstance(value, dict) else "`{}`"
    if isinstance(value, Path):
        text = value.as_posix() if value.is_absolute() else f"./{value.as_posix()}"
    else:
        text = str(value)
    return f"`{text}`" if len(text) <= 60 else f"`{text[:57]}...`"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _rows(model: type[BaseModel], prefix: str,
          skip: frozenset[str] = frozenset()) -> Iterator[tuple[str, str, str]]:
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        path = f"{prefix}.{name}" if prefix else name
        nested = _model_of(field.annotation)
        is_map = typing.get_origin(field.annotation) is dict
        if nested is not None and not is_map:
            optional = type(None) in typing.get_args(field.annotation)
            if optional:
                yield path, "section or null", _default(field)
            yield from _rows(nested, path)
        else:
            yield path, _kind(field), _default(field)


def _table(rows: Iterator[tuple[str, str, str]]) -> list[str]:
    lines = ["| key | type | default |", "|---|---|---|"]
    lines.extend(f"| `{path}` | {kind} | {default} |" for path, kind, default in rows)
    return lines


def render() -> str:
    out = [HEADER]
    for section in Config.model_fields:
        if section in ("exporters", "processors"):
            continue
        out.append(f"## `{section}`\n")
        annotation = Config.model_fields[section].annotation
        model = _model_of(annotation)
        assert model is not None
        out.extend(_table(_rows(model, section)))
        out.append("")
    out.append("## `exporters`\n")
    out.append("Any number of named exporters (`exporters.<name>`), each with a `type`; "
               "`pipelines` routes signals to them.\n")
    for type_name, factory in sorted(exporter_factories().items()):
        out.append(f"### `type: {type_name}`\n")
        out.extend(_table(_rows(factory.config_type, "exporters.<name>",
                                frozenset({"type"}))))
        out.append("")
    out.append("## `processors`\n")
    out.append("Applied in this fixed order, whatever the YAML order.\n")
    for processor in processor_factories():
        out.append(f"### `processors.{processor.type_name}`\n")
        out.extend(_table(_rows(processor.config_type, f"processors.{processor.type_name}")))
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def main() -> None:
    import sys

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/configuration.md")
    target.write_text(render())


if __name__ == "__main__":
    main()
