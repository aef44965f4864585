"""The one error of an invalid plain argument, raised where the argument enters (a layer or a builder
function). It carries the argument's name, so the config layer can re-state it with the config key."""

__all__ = ["invalid_argument"]


def invalid_argument(argument, value, allowed, owner=""):
    """A ValueError saying that ``argument`` (its name) has the invalid ``value`` and what is ``allowed``,
    with those three as attributes; ``owner`` (a class name or "") prefixes the message:
    ``GatherExcite extent=6 is invalid: use 0 for a global gather ...``. A plain ValueError, so that callers
    that report ``type(e).__name__`` say "ValueError"."""
    error = ValueError(f"{owner + ' ' if owner else ''}{argument}={value!r} is invalid: {allowed}.")
    error.argument, error.value, error.allowed = argument, value, allowed
    return error

