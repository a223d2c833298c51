"""Errors that mean "bad input" (CLI exit code 2); each message names the fix.

They are defined next to the code that raises them; this module only gathers them.
"""

from fer_diag.capture import ActivationValueError, HookNameError
from fer_diag.data.sources import MissingCorpusError
from fer_diag.models import ModelNotInstalledError, UnknownModelError
from fer_diag.sae.loading import SAELoadError, SAEMatchError

#: Exceptions the CLI reports as bad input. ``ValueError`` covers empty / too-short
#: text sets and invalid settings (pydantic validation errors are ValueErrors).
USER_ERRORS: tuple[type[BaseException], ...] = (
    HookNameError,
    ActivationValueError,
    MissingCorpusError,
    ModelNotInstalledError,
    UnknownModelError,
    SAELoadError,
    SAEMatchError,
    ValueError,
)
