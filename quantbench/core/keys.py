"""Config keys declared once: a dataclass field's type (its annotation), default, rules and
description, and what is generated from them: the checks of a value read from TOML with their
error messages, and the key's JSON schema. Suite (suite.py) declares its keys with `key`;
cli/reference.py writes the docs table and suites/suite.schema.json from the same metadata.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field

from quantbench.core.errors import UserError


def key(default, doc: str, *, choices: tuple = (), ge: float | None = None, gt: float | None = None,
         multiple_of: int | None = None, pattern: str = "", unique: bool = False, non_empty: bool = False,
         fix: str = "", mismatch: str = ""):
    """Returns a dataclass field: its default, its one-line description and what it accepts.

    The checks and their messages (`check_type`, `check_rules`), the docs' key table and the JSON
    schema (`field_schema`) are generated from this metadata; the key's type is its annotation
    (TYPES). A rule applies to the value, or to each item of a list:
    choices (allowed values), ge/gt (least value, inclusive/exclusive), multiple_of, pattern (a
    regex the whole string matches); unique and non_empty apply to the list. `fix` ends the
    message of a failed rule; `mismatch` is the whole message of a failed pattern, formatted with
    key, bad (the failing items) and first. tests/test_docs.py fails on a key without a doc.
    """
    meta = {"doc": doc, "choices": tuple(choices), "ge": ge, "gt": gt, "multiple_of": multiple_of,
            "pattern": pattern, "unique": unique, "non_empty": non_empty, "fix": fix, "mismatch": mismatch}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _list_of(item):
    return lambda v: isinstance(v, list) and all(item(x) for x in v)


@dataclass(frozen=True)
class Type:
    """How one annotation of a field reads in TOML: its name in the docs, in an error
    message, in JSON schema, and the check of a value tomllib gives."""
    toml: str
    want: str
    json: dict
    ok: object  # value -> bool


TYPES = {  # an annotation `A | B` accepts either part
    "str": Type("string", "a string", {"type": "string"}, lambda v: isinstance(v, str)),
    "int": Type("integer", "an integer", {"type": "integer"}, _is_int),
    "float": Type("number", "a number", {"type": "number"}, _is_num),
    "bool": Type("boolean", "true or false", {"type": "boolean"}, lambda v: isinstance(v, bool)),
    "tuple[str, ...]": Type("list of string", "a list of strings",
                            {"type": "array", "items": {"type": "string"}}, _list_of(lambda x: isinstance(x, str))),
    "tuple[int, ...]": Type("list of integer", "a list of integers",
                            {"type": "array", "items": {"type": "integer"}}, _list_of(_is_int)),
    "dict[str, str]": Type("table of string", "a table of strings",
                           {"type": "object", "additionalProperties": {"type": "string"}},
                           lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values())),
    "dict[str, dict]": Type("table of tables", 'a table of tables, e.g. [{key}."shape:llama-3.2-1b"] '
                            'formats = ["bf16"]', {"type": "object", "additionalProperties": {"type": "object"}},
                            lambda v: isinstance(v, dict) and all(isinstance(x, dict) for x in v.values())),
}


def types_of(f: dataclasses.Field) -> list[Type]:
    """Returns the Types a field accepts, from its annotation."""
    return [TYPES[part.strip()] for part in str(f.type).split("|")]


def check_type(where: str, f: dataclasses.Field, value) -> None:
    """Raises UserError unless value (as tomllib reads it) has the type of field f."""
    types = types_of(f)
    if not any(t.ok(value) for t in types):
        # a list is told what its items should be, a scalar every type it may take
        shaped = [t for t in types if t.json["type"] == "array" and isinstance(value, list)] or types
        want = " or ".join(t.want for t in shaped).format(key=f.name)
        raise UserError(f"{where}: key '{f.name}' must be {want}, got {value!r}")


def _either(choices) -> str:
    return ", ".join(map(str, choices[:-1])) + f" or {choices[-1]}" if len(choices) > 1 else str(choices[0])


def check_rules(where: str, key: str, value, meta) -> None:
    """Raises UserError when value breaks a rule declared on its field (`key`)."""
    many = isinstance(value, tuple)
    items, shown = (value, list(value)) if many else ((value,), value)
    fix = f"; {meta['fix']}" if meta.get("fix") else ""
    if meta.get("non_empty") and many and not value:
        raise UserError(f"{where}: {key} is empty{fix}")
    if meta.get("unique") and many:
        dup = sorted({x for x in value if value.count(x) > 1})
        if dup:
            raise UserError(f"{where}: {key} lists {', '.join(map(str, dup))} twice; list each once")
    if meta.get("choices"):
        bad = [x for x in items if x not in meta["choices"]]
        if bad:
            raise UserError(f"{where}: {key} {bad if many else repr(bad[0])} unknown; use {_either(meta['choices'])}")
    if meta.get("pattern"):
        bad = [x for x in items if not re.fullmatch(meta["pattern"], x)]
        if bad:
            said = meta["mismatch"].format(key=key, bad=bad, first=bad[0]) if meta["mismatch"] else \
                f"{key} {bad} do not match the pattern {meta['pattern']}{fix}"
            raise UserError(f"{where}: {said}")
    for rule, op, broken in (("ge", ">=", lambda x, b: x < b), ("gt", ">", lambda x, b: not x > b)):
        b = meta.get(rule)
        if b is not None and any(broken(x, b) for x in items):
            raise UserError(f"{where}: {key} must be {op} {b}, got {shown}{fix}")
    m = meta.get("multiple_of")
    if m and any(x % m for x in items):
        raise UserError(f"{where}: {key} must be {'even' if m == 2 else f'a multiple of {m}'}, got {shown}{fix}")


def default_of(f: dataclasses.Field):
    """Returns a field's default value."""
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def field_schema(f: dataclasses.Field) -> dict:
    """Returns the JSON schema (draft-04) of one key: its type, rules, default and description."""
    meta = f.metadata
    rules = {}
    if meta["choices"]:
        rules["enum"] = list(meta["choices"])
    if meta["pattern"]:
        rules["pattern"] = f"^(?:{meta['pattern']})$"  # JSON schema patterns search; fullmatch here
    if meta["ge"] is not None:
        rules["minimum"] = meta["ge"]
    if meta["gt"] is not None:  # draft-04's form; draft-06 on would say exclusiveMinimum: gt
        rules.update(minimum=meta["gt"], exclusiveMinimum=True)
    if meta["multiple_of"]:
        rules["multipleOf"] = meta["multiple_of"]
    parts = []
    for t in types_of(f):
        part = json.loads(json.dumps(t.json))
        if part["type"] == "array":
            part["items"].update(rules)
            part.update({"uniqueItems": True} if meta["unique"] else {})
            part.update({"minItems": 1} if meta["non_empty"] else {})
        elif part["type"] != "object":
            part.update(rules)
        parts.append(part)
    out = parts[0] if len(parts) == 1 else {"anyOf": parts}
    return {**out, "default": json.loads(json.dumps(default_of(f), default=list)), "description": meta["doc"]}
