"""Named exceptions. Every user mistake raises a subclass of :class:`EditStoreError`.

The CLI maps :class:`EditStoreError` to a one-line message and exit code 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class EditStoreError(Exception):
    """Base of every error editstore raises on purpose."""

    exit_code = 2


class StoreNotFoundError(EditStoreError):
    """No store at the given path, and none found walking up from the working directory."""


class StoreExistsError(EditStoreError):
    """``init`` was asked to create a store where one already exists."""


class StoreFormatError(EditStoreError):
    """The store was written by a newer (or unknown) on-disk format version."""


class BaseModelError(EditStoreError):
    """The base checkpoint is missing, is not a Hugging Face directory, or has changed."""


class InvalidDeltaError(EditStoreError):
    """A delta file is malformed or does not fit the store's base model."""


class SchemaError(EditStoreError):
    """A JSON document does not validate against its schema."""


class RevisionError(EditStoreError):
    """A revision string does not name exactly one commit or edit."""


class UnknownRevisionError(RevisionError):
    """Nothing matches the revision."""


class AmbiguousRevisionError(RevisionError):
    """A hex prefix matches more than one object."""


class RefError(EditStoreError):
    """A branch or tag operation is not allowed (exists, missing, current branch, bad name)."""


class NotInTreeError(EditStoreError):
    """Reverting an edit (or commit) whose edits are not in the current tree."""


class OutputDirError(EditStoreError):
    """An output path (``--out``, ``--peft``, a store to create) is not an empty or missing directory, or cannot
    be written."""


class CorruptObjectError(EditStoreError):
    """An object's bytes do not hash to its name, or it cannot be parsed."""


class LockTimeoutError(EditStoreError):
    """Another process held the writer lock for too long."""


class SubjectNotInPromptError(EditStoreError):
    """An edit request's subject does not occur in its prompt."""


class DeviceError(EditStoreError):
    """The requested device is not available (e.g. ``cuda`` without a GPU)."""


class HeadMovedError(EditStoreError):
    """Another writer committed while an edit was being computed on the previous HEAD."""


class HparamsError(EditStoreError):
    """Hyperparameters that do not fit the base (a layer or module it does not have)."""


class MissingStatsError(EditStoreError):
    """An edit needs second-moment statistics and there is no corpus to compute them from."""


class ConfigError(EditStoreError):
    """An unknown configuration key or a value it does not take."""


class UnknownWorldError(EditStoreError, ValueError):
    """A fact world size or architecture that editstore has no world for."""


class InputError(EditStoreError):
    """An input file or argument that cannot be read or parsed (see :mod:`editstore.core.inputs`)."""


class RemoteError(EditStoreError):
    """A remote cannot be used: a bad URL, missing credentials or bucket, an unreachable server, another base."""


class NonFastForwardError(EditStoreError):
    """A push would drop commits the remote has (or another push moved the branch first): fetch first."""

