"""`amoe params [SECTION ...]`: every key of params.yaml with its type, default and meaning, read from the config
models' `Field(description=...)` (the one place a parameter is documented), and the did-you-mean of unknown names."""

from __future__ import annotations

import difflib
import json
import shutil
import textwrap
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from amoe_core.config.params import Params
from amoe_core.errors import ConfigError

_BOUNDS = {annotated_types.Ge: ("ge", ">="), annotated_types.Gt: ("gt", ">"), annotated_types.Le: ("le", "<="),
           annotated_types.Lt: ("lt", "<")}  # fmt: skip


def nearest(name: str, choices: typing.Iterable[str]) -> str | None:
    """The closest of `choices` to a mistyped `name`, or None when nothing is close."""
    near = difflib.get_close_matches(name, list(choices), n=1)
    return near[0] if near else None


def type_name(ann: Any) -> str:
    """A short readable type: `int`, `path | None`, `list[int]`, `auto|jpg|png`."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    if ann is type(None):
        return "null"  # as params.yaml spells it
    if ann is Path:
        return "path"
    return getattr(ann, "__name__", str(ann))


def _model_in(ann: Any) -> type[BaseModel] | None:
    """The model a field holds, directly or as list items (`teachers`, `evaluate.datasets`)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for a in typing.get_args(ann):
        inner = _model_in(a)
        if inner is not None:
            return inner
    return None


def rows(model: type[BaseModel], prefix: str, default: Any) -> Iterator[tuple[str, str, str, str]]:
    """(dotted key, type, default, description) for every field under `model`; nested models are expanded, list items
    as `key.<i>.field` (the `-S` spelling, e.g. teachers.0.kind)."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        if isinstance(default, dict):
            value = default.get(name)
        else:  # a list item's field: its own default
            value = None if field.is_required() else to_jsonable_python(field.get_default(call_default_factory=True))
        bounds = [f"{sign}{getattr(m, attr)}" for m in field.metadata for attr, sign in [_BOUNDS.get(type(m), ("", ""))]
                  if attr]  # fmt: skip
        kind = type_name(field.annotation) + (f" ({', '.join(bounds)})" if bounds else "")
        desc = field.description or ""
        inner = _model_in(field.annotation)
        if inner is not None and isinstance(value, dict):
            yield key, kind, "", desc
            yield from rows(inner, f"{key}.", value)
        elif inner is not None:  # a list of models, or an optional model left out (None)
            many = typing.get_origin(field.annotation) is list
            shown = (
                f"[{len(value)} items]"
                if isinstance(value, list)
                else "required"
                if value is None and field.is_required()
                else json.dumps(value)
            )
            yield key, kind, shown, desc
            yield from rows(inner, f"{key}.<i>." if many else f"{key}.", None)
        else:
            yield key, kind, "required" if value is None and field.is_required() else json.dumps(value), desc


def sections() -> list[str]:
    return list(Params.model_fields)


def describe(names: list[str] | None = None, width: int | None = None) -> str:
    """The text of `amoe params`: one aligned table per section (all when `names` is empty), headed by the section's
    meaning; types, defaults and descriptions wrapped to `width` (the terminal's, else 120)."""
    known = sections()
    for name in names or []:
        if name not in known:
            near = nearest(name, known)
            hint = f"did you mean {near!r}? " if near else ""
            raise ConfigError(f"unknown params section {name!r}; {hint}sections: {', '.join(known)}")
    width = width or shutil.get_terminal_size((120, 24)).columns
    table = list(rows(Params, "", Params().model_dump(mode="json")))
    blocks = []
    for section in names or known:
        block = [r for r in table if r[0].split(".")[0] == section]
        if len(block) > 1:  # a section: its own row is the heading
            blocks.append(f"{section}: {block[0][3]}\n" + _table(block[1:], width))
        else:
            blocks.append(_table(block, width))
    return "\n\n".join(blocks)


def _table(block: list[tuple[str, str, str, str]], width: int) -> str:
    key_w = max(len(r[0]) for r in block)
    type_w = min(max(len(r[1]) for r in block), 24)
    # the default column gives way (down to 12) before the description gets narrower than 40
    default_w = min(max(len(r[2]) for r in block), 30, max(12, width - key_w - type_w - 8 - 40))
    desc_w = max(width - key_w - type_w - default_w - 8, 30)  # 2 indent + 3 gaps of 2
    lines = []
    for key, kind, default, desc in block:
        cols = [
            [key],
            _wrap(kind, type_w),
            _wrap(default, default_w),
            textwrap.wrap(desc, desc_w, break_on_hyphens=False),
        ]
        for i in range(max(len(c) for c in cols)):
            k, t, d, s = (c[i] if i < len(c) else "" for c in cols)
            lines.append(f"  {k:<{key_w}}  {t:<{type_w}}  {d:<{default_w}}  {s}".rstrip())
    return "\n".join(lines)


def _wrap(text: str, width: int) -> list[str]:
    """A type or default cut into `width`-wide pieces at spaces where it has them, else anywhere (JSON, paths)."""
    return textwrap.wrap(text, width, break_on_hyphens=False) or [""]
