"""The errors a serving raises, each one naming the value at fault and the fix.

Callers tell them apart by class and show ``str(error)`` to people as is:

- ``InvalidInput``: the request is wrong (empty text, unknown option); it fails
  alone and the caller should fix the request.
- ``ModelNotInstalled``: the weights are not on this machine and could not be
  fetched; the message says how to install them.
- ``ServingNotFound``: no serving is registered under that name; the message
  lists the known ones.
- ``ServingFailed``: the model itself failed on a batch; every item of that
  batch gets it.
- ``Overloaded``: the serving's queue is full (``max_queued``); nothing was
  queued, and ``retry_after`` says in how many seconds to try again.
"""


class ServingError(Exception):
    """Base class of every error raised by ``mlservices``.

    ``code`` is a stable, machine-readable identifier that front ends switch on.
    """

    code = "serving_error"


class InvalidInput(ServingError, ValueError):
    code = "invalid_input"


class ModelNotInstalled(ServingError):
    code = "model_not_installed"


class ServingNotFound(ServingError, LookupError):
    code = "unknown_serving"


class ServingFailed(ServingError):
    code = "serving_failed"


class Overloaded(ServingError):
    """Too many items are queued for a serving; retry in ``retry_after`` seconds (an int, at least 1)::

        raise Overloaded("sentiment is overloaded: ...; try again in 3 s", retry_after=3)
    """

    code = "overloaded"

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self):  # pickles (e.g. across processes) with its retry_after
        return type(self), (str(self), self.retry_after)


class IntegrityError(ServingError):
    """A weights file does not hash to the pinned sha256."""

    code = "integrity_error"
