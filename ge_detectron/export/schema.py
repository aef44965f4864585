"""detectron2's output schemas (``detectron2.export.flatten``) to and from JSON, so the side that runs an
exported file rebuilds the model's ``Instances`` from the file's flat outputs with detectron2's own code.
Only detectron2's schema classes are built from JSON, and a ``TensorWrapSchema`` may wrap only the
structures ``flatten_to_tuple`` wraps (``Boxes``, ``ROIMasks``): it instantiates its ``class_name``."""
import dataclasses

from detectron2.export.flatten import (DictSchema, IdentitySchema, InstancesSchema, ListSchema, Schema, TensorWrapSchema,
                                       TupleSchema)
from detectron2.structures import Boxes, ROIMasks
from detectron2.utils.registry import _convert_target_to_string

from .spec import SpecError, build_allowed

__all__ = ["SCHEMAS", "TENSOR_WRAPPERS", "schema_to_json", "schema_from_json"]

SCHEMAS = {_convert_target_to_string(c): c for c in (ListSchema, TupleSchema, IdentitySchema, DictSchema, InstancesSchema,
                                                      TensorWrapSchema)}
TENSOR_WRAPPERS = {_convert_target_to_string(c) for c in (Boxes, ROIMasks)}
# The type of every field of those schemas, checked before one is built: ListSchema.__call__ would fail on
# a wrong one only when the model runs.
_FIELD_CHECKS = {"schemas": lambda v: isinstance(v, list) and all(isinstance(s, Schema) for s in v),
                 "sizes": lambda v: isinstance(v, list) and all(isinstance(s, int) and s >= 0 for s in v),
                 "keys": lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v),
                 "class_name": lambda v: v in TENSOR_WRAPPERS}


def schema_to_json(schema):
    """A JSON-able dict of a Schema dataclass: its class and fields, nested schemas the same way."""
    fields = {}
    for field in dataclasses.fields(schema):
        value = getattr(schema, field.name)
        if isinstance(value, (list, tuple)):
            value = [schema_to_json(v) if isinstance(v, Schema) else v for v in value]
        fields[field.name] = value
    return {"class": _convert_target_to_string(type(schema)), "fields": fields}


def schema_from_json(data):
    """The Schema that ``schema_to_json`` described. Raises SpecError (naming the class) for a class outside
    SCHEMAS, a TensorWrapSchema of another class than TENSOR_WRAPPERS, or malformed fields."""
    fields = data.get("fields") if isinstance(data, dict) else None
    if isinstance(fields, dict):
        fields = {name: [schema_from_json(v) if isinstance(v, dict) and "class" in v else v for v in value]
                  if isinstance(value, list) else value for name, value in fields.items()}
        for name, value in fields.items():
            if name in _FIELD_CHECKS and not _FIELD_CHECKS[name](value):
                raise SpecError(f"the class {data.get('class')!r} has an invalid {name!r}: {str(value)[:80]}")
        data = {**data, "fields": fields}
    return build_allowed(data, SCHEMAS, "fields")
