"""What a check before a tool's work raises, and how a tool says it: one line, exit status 1, no traceback."""
import contextlib
import sys

from ..data import DatasetError

__all__ = ["CHECK_ERRORS", "exit_on_check_error"]

# GEConfigError, NumClassesMismatchError, PredictError, ExportError and check_launch_args' errors are
# ValueErrors; a dataset that is not there or not usable is a DatasetError.
CHECK_ERRORS = (ValueError, DatasetError)


@contextlib.contextmanager
def exit_on_check_error(prefix="error"):
    """Turn a CHECK_ERRORS exception of the block into ``sys.exit("<prefix>: <message>")``."""
    try:
        yield
    except CHECK_ERRORS as e:
        sys.exit(f"{prefix}: {e}")
