"""Errors that mean "bad input": the message names the fix, and the CLI exits with code 2.

Every user error is a :class:`FerDiagError`. Anything else escaping fer-diag is a bug:
the CLI shows its traceback and exits with code 1. This module imports nothing from
the rest of the package, so every module can import it. Most classes also derive from
the built-in exception that was raised before (``ValueError``, ``KeyError``,
``FileNotFoundError``, ``ImportError``), so existing ``except`` clauses keep working.

Errors that belong to one module stay defined there (each a ``FerDiagError``):
``fer_diag.capture.HookNameError`` / ``ActivationValueError``,
``fer_diag.data.sources.MissingCorpusError``,
``fer_diag.models.ModelNotInstalledError`` / ``UnknownModelError``,
``fer_diag.sae.loading.SAELoadError`` / ``SAEMatchError``.
"""

from __future__ import annotations


class FerDiagError(Exception):
    """Base class of every user error (bad input, missing install); the message names the fix."""


class BadInputError(FerDiagError, ValueError):
    """An argument, a file or a setting that fer-diag cannot use."""


class ConfigError(BadInputError):
    """A setting out of range or inconsistent with the model (e.g. a window longer than its context)."""


class TextSetError(BadInputError):
    """A text set that cannot be audited: empty, too short, or mixing label kinds."""


class InputFileError(BadInputError):
    """A user file or folder that cannot be used (not text, not writable…)."""


class MissingFileError(InputFileError, FileNotFoundError):
    """A user file that does not exist or is not a file."""


class HookKindError(BadInputError):
    """A hook whose activations are not one vector per token position (attention patterns, scores)."""


#: Exceptions the CLI reports as bad input (exit code 2, no traceback).
USER_ERRORS: tuple[type[BaseException], ...] = (FerDiagError,)
