"""Every error this toolkit raises on purpose, in one place.

Each class carries the CLI exit code and the HTTP status it maps to, so the command line
(`python -m converters`) and the BentoML service (`service.py`) report the same failure the same way:

- ``InvalidArgument`` and its subclasses: the user's input is wrong (exit 2, HTTP 4xx). The message
  names the field or path, the bad value and, where there is one, the fix.
- ``CheckFailed``: the input was fine but a check on the result failed, e.g. parity (exit 1).
- ``Unavailable``: a backend (Triton) is down or too slow (exit 1, HTTP 503).
"""

from __future__ import annotations


class ToolkitError(Exception):
    """Base of every deliberate error. ``str(err)`` is the one line shown to the user."""

    exit_code: int = 1
    http_status: int = 500


class InvalidArgument(ToolkitError):
    """Bad input from the user: a flag, a path, a request field."""

    exit_code = 2
    http_status = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(InvalidArgument):
    """A named thing (file, model, version, class) does not exist."""

    http_status = 404


class UnsafeInput(InvalidArgument):
    """Refused for safety: an untrusted pickle, a model name that escapes the repository."""

    http_status = 400


class PayloadTooLarge(InvalidArgument):
    """A request body or batch over the configured limit."""

    http_status = 413


class UnsupportedMediaType(InvalidArgument):
    """A request body in a format the service does not take (its Content-Type)."""

    http_status = 415


class MissingDependency(ToolkitError):
    """An optional capability (TensorRT, a GPU, a tool binary) is not present on this machine."""

    exit_code = 2
    http_status = 501


class CheckFailed(ToolkitError):
    """A validation of a produced artifact failed (parity, int8 gate, config round trip)."""

    exit_code = 1
    http_status = 422


class PublishError(ToolkitError):
    """Writing to the model repository failed; the repository is left as it was."""

    exit_code = 1
    http_status = 500


class Unavailable(ToolkitError):
    """A backend is down, not ready, or did not answer in time."""

    exit_code = 1
    http_status = 503

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
