"""One hierarchy of user-facing errors.

Every error the engine raises on purpose derives from :class:`HistoDashError`. Each carries a
plain-language ``message`` (what went wrong, naming the file where there is one) and a ``hint``
(what the user can do about it). Pages show ``str(err)``; the CLI prints it and exits non-zero.
Anything that is *not* a ``HistoDashError`` is a bug: callers log its traceback and show a short
generic message instead.

Every user-facing error class of the engine is defined here (other modules import them), and so is
the one way work is stopped on request, :class:`Cancelled`. Code that catches ``HistoDashError`` to
turn a failure into a row or a message must let ``Cancelled`` through (``except Cancelled: raise``
first): a cancelled run is not a failed one.
"""

from __future__ import annotations


class HistoDashError(Exception):
    """Base class of every error meant to be shown to a user."""

    default_hint = ""

    def __init__(self, message: str, hint: str | None = None, *, path: str | None = None):
        self.message = message
        self.hint = self.default_hint if hint is None else hint
        self.path = path
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip() if self.hint else self.message


class UnsupportedFormatError(HistoDashError):
    """The file is readable but not of a kind HistoDash handles."""

    default_hint = "Supported tiles: JPEG, PNG, TIFF. Whole slides: any format OpenSlide reads (SVS, NDPI, tiled TIFF, …)."


class CorruptFileError(HistoDashError):
    """The file claims a supported format but cannot be decoded (truncated, damaged, empty)."""

    default_hint = "Re-export or re-upload the file; it may have been cut short."


class TooLargeError(HistoDashError):
    """The input exceeds a size or pixel-count limit (protects the server from decompression bombs)."""

    default_hint = "Split the image into smaller tiles, or ask your administrator to raise the limit."


class MissingMetadataError(HistoDashError):
    """Required metadata (e.g. microns per pixel) is absent."""

    default_hint = "Enter the value by hand."


class UnsafeArchiveError(HistoDashError):
    """An archive tries to write outside its folder or expands to an unreasonable size."""

    default_hint = "Zip the tiles again from a plain folder."


class InvalidInputError(HistoDashError):
    """A parameter, table or request is invalid (wrong column, bad number, …)."""


class ModelError(HistoDashError):
    """A model cannot be found, loaded or used."""


class IncompatibleModelError(ModelError):
    """A model's weights do not match its card or the requested architecture, or are unsafe to load."""

    default_hint = "Check the model card (input size, classes) or retrain/re-export the model."


class ModelNotFoundError(ModelError):
    """No model with that id is registered."""

    default_hint = "Run `python -m engine models` to list the registered models."


class MissingDependencyError(HistoDashError):
    """An optional package needed by the requested feature is not installed."""


class SlotTimeoutError(HistoDashError):
    """No inference slot became free in time (:mod:`engine.limits`)."""

    default_hint = "The server is busy with other users' work: try again in a minute."


class JobError(HistoDashError):
    """A background job failed or could not be started."""


class JobNotFoundError(JobError):
    """No job with that id."""

    default_hint = "Run `python -m engine jobs list` to see the jobs."


class Cancelled(HistoDashError):
    """The work was stopped because someone asked (a job's cancel, a page's stop, SIGTERM to a worker).

    Raised from inside long work (heatmap inference, training batches, queue waits) when its
    ``cancelled()`` check turns true; a job that raises it ends in state ``cancelled``, not ``failed``.
    What was finished before (cached tiles) is kept.
    """
