"""An exported model's JSON spec is data: the classes it names (test-time augmentations, output schemas) are
looked up in an allow-list, never imported by name, and built only from their constructors' arguments."""
import inspect

__all__ = ["SpecError", "build_allowed"]


class SpecError(ValueError):
    """A spec entry naming a class outside the allow-list, or one that is malformed."""


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def build_allowed(entry, allowed, args_key):
    """``allowed[entry["class"]](**entry[args_key])``, ``allowed`` mapping the names a spec may use to classes.
    Raises SpecError naming the class unless the entry is ``{"class": name, args_key: {...}}`` with an
    allowed name and arguments its constructor takes."""
    if not isinstance(entry, dict) or not isinstance(entry.get("class"), str):
        raise SpecError(f"an entry is {_short(entry)}, not {{'class': ..., '{args_key}': {{...}}}}")
    name, args = entry["class"], entry.get(args_key)
    if name not in allowed:
        raise SpecError(f"it names the class {name!r}, which an exported model's spec may not name (allowed: "
                        f"{', '.join(sorted(n.rsplit('.', 1)[-1] for n in allowed))})")
    parameters = set(inspect.signature(allowed[name]).parameters)
    if not isinstance(args, dict) or not set(args) <= parameters:
        raise SpecError(f"the class {name!r} has {args_key} {_short(args)}, not a dict of its constructor's "
                        f"arguments ({', '.join(sorted(parameters))})")
    try:
        return allowed[name](**args)
    except (TypeError, ValueError, AssertionError) as e:
        raise SpecError(f"the class {name!r} cannot be built from {args_key} {_short(args)}: {e}") from None
