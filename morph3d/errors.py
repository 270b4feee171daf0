"""One exception type for every user-facing failure.

The CLI turns a `Morph3dError` into a one-line message and a non-zero exit code; anything
else is a bug and keeps its traceback.
"""


class Morph3dError(Exception):
    """A failure caused by the user's input or environment, explained in one line."""


class ModelError(Morph3dError):
    """A morphable-model file is missing, corrupt or of the wrong format."""


class InputError(Morph3dError):
    """An input file (photo, video, manifest) cannot be used."""
