"""The configuration's documentation, generated from where each setting is declared (the
docstrings in config.py): the commented example `config/cappuccino.yaml` and the JSON Schema
`docs/config.schema.json` for editors (YAML language servers read it). A test fails when the
committed files differ from what this generates; regenerate with `make config-docs`
(`python -m cappuccino_core.common.config_docs`).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import Config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "cappuccino.yaml"
SCHEMA = REPO / "docs" / "config.schema.json"
WIDTH = 96

HEADER = """\
# Cappuccino configuration: /etc/cappuccino/cappuccino.yaml
# Every key is optional; the value shown is the default. Unknown keys are errors.
# Check a file with:  cappuccino config check --config-dir DIR
# Generated from cappuccino_core/common/config.py (make config-docs): edit the docs there.
"""


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    doc: str
    hint: Any  # the declared type
    schema: dict  # the check's bounds in JSON Schema's words


@dataclass(frozen=True)
class Section:
    name: str
    doc: str
    settings: list[Setting]


def _docstrings(cls: type) -> dict[str, str]:
    """{field: the string literal right under its declaration} of a dataclass."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) \
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def sections() -> list[Section]:
    """Every section of cappuccino.yaml with its settings, in declaration order."""
    out = []
    hints = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        if section.metadata.get("internal"):
            continue
        cls = hints[section.name]
        docs, field_hints = _docstrings(cls), typing.get_type_hints(cls)
        settings = []
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            settings.append(Setting(f.name, default, docs.get(f.name, ""), field_hints[f.name],
                                    f.metadata.get("schema", {})))
        out.append(Section(section.name, inspect.cleandoc(cls.__doc__ or ""), settings))
    return out


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}" for line in textwrap.wrap(
        " ".join(text.split()), WIDTH - len(indent) - 2, break_on_hyphens=False)]


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip() \
        .removesuffix("...").strip()


def example_yaml() -> str:
    """The commented example configuration: every setting at its default, with its doc."""
    lines = HEADER.splitlines()
    for s in sections():
        lines += [""] + _comment(s.doc, "") + [f"{s.name}:"]
        for x in s.settings:
            lines += _comment(x.doc, "  ") + [f"  {x.name}: {_yaml_value(x.default)}"]
    return "\n".join(lines) + "\n"


def _type_schema(hint: Any) -> dict:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [_type_schema(a) for a in args if a is not type(None)]
        (one,) = kinds
        return one | {"type": [one["type"], "null"]}
    if typing.get_origin(hint) is list:
        return {"type": "array", "items": _type_schema(args[0])}
    return {"type": {str: "string", int: "integer", float: "number", bool: "boolean"}[hint]}


def json_schema() -> dict:
    """A JSON Schema (draft 2020-12) of cappuccino.yaml, for editors."""
    props = {}
    for s in sections():
        props[s.name] = {"type": "object", "description": " ".join(s.doc.split()),
                         "additionalProperties": False,
                         "properties": {x.name: {"description": " ".join(x.doc.split()),
                                                 "default": x.default}
                                        | _type_schema(x.hint) | x.schema
                                        for x in s.settings}}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "Cappuccino configuration (cappuccino.yaml)",
            "description": "Generated from cappuccino_core/common/config.py (make config-docs).",
            "type": "object", "additionalProperties": False, "properties": props}


def render_schema() -> str:
    return json.dumps(json_schema(), indent=2) + "\n"


def write() -> list[Path]:
    EXAMPLE.write_text(example_yaml())
    SCHEMA.write_text(render_schema())
    return [EXAMPLE, SCHEMA]


if __name__ == "__main__":
    for path in write():
        print(f"written: {path}")

