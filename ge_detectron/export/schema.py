"""detectron2's output schemas (``detectron2.export.flatten``) to and from JSON, so the side that runs an
exported file rebuilds the model's ``Instances`` from the file's flat outputs with detectron2's own code."""
import dataclasses

from detectron2.export.flatten import Schema
from detectron2.utils.registry import _convert_target_to_string, locate

__all__ = ["schema_to_json", "schema_from_json"]


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
    """The Schema that ``schema_to_json`` described."""
    fields = {}
    for name, value in data["fields"].items():
        if isinstance(value, list):
            value = [schema_from_json(v) if isinstance(v, dict) and "class" in v else v for v in value]
        fields[name] = value
    return locate(data["class"])(**fields)
