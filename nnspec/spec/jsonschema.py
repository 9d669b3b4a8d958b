"""The JSON Schema (draft 2020-12) of spec files, for editors and other tools.

pydantic describes the canonical form of each kind; the file format also
accepts the shorthands (``relu``, ``leaky_relu: 0.02``, ``dropout: {p: 0.2}``),
so every field that holds a kind points at a ``<Kind>Forms`` definition built
here that accepts all four forms.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from nnspec.spec.kinds import KindsOf
from nnspec.spec.layers import LAYERS
from nnspec.spec.model import SCHEMA_ID, Spec
from nnspec.spec import search, training

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _families() -> list[KindsOf]:
    """Every family of kinds, found through the markers on the annotated unions."""
    markers = [LAYERS]
    unions = (training.LossSpec, training.OptimizerSpec, training.ScheduleKind, training.AugmentSpec, training.InitScheme,
              search.Distribution)
    for union in unions:
        markers += [m for m in union.__metadata__ if isinstance(m, KindsOf)]
    return markers


def _forms(family: KindsOf, defs: dict[str, Any]) -> dict[str, Any]:
    """anyOf: the bare name, ``name: main-argument``, ``name: {fields}``, and the canonical mapping."""
    forms: list[dict[str, Any]] = []
    for kind, cls in family.registry.items():
        own = defs[cls.__name__]
        fields = {k: v for k, v in own.get("properties", {}).items() if k != "type"}
        required = [f for f in own.get("required", []) if f != "type"]
        if not required:
            forms.append({"const": kind})
        inner = [{"type": "null"}, {"type": "object", "properties": fields, "additionalProperties": False}]
        if cls.main is not None:
            inner.insert(1, fields[cls.main])
        forms.append(
            {
                "type": "object",
                "properties": {kind: {"anyOf": inner}, **fields},
                "required": [kind],
                "additionalProperties": False,
            }
        )
        forms.append({"$ref": f"#/$defs/{cls.__name__}", "required": ["type"]})
    return {"description": f"a {family.what}, in any of its written forms", "anyOf": forms}


def spec_json_schema() -> dict[str, Any]:
    families = _families()
    models = [Spec] + [cls for family in families for cls in family.registry.values()]
    _, top = models_json_schema([(m, "validation") for m in models], ref_template="#/$defs/{model}")
    defs: dict[str, Any] = top["$defs"]
    root = defs.pop(Spec.__name__)
    for family in families:
        defs[family.schema_name] = _forms(family, defs)
    # A file that `extends` another is partial: its required keys may come from the base.
    required = root.pop("required", [])
    root["if"] = {"required": ["extends"]}
    root["else"] = {"required": required}
    return {"$schema": DIALECT, "$id": SCHEMA_ID, **root, "$defs": dict(sorted(defs.items()))}
