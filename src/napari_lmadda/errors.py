"""The project's own error types.

Every problem a user can cause (a bad file, a bad folder, a bad option) is raised as a
subclass of :class:`LmaddaError` with a message that names the file and the problem, so the
CLI and the napari widgets can show it as one clear sentence instead of a traceback.
"""

from __future__ import annotations

__all__ = [
    "LmaddaError",
    "ImageReadError",
    "CheckpointError",
    "ConfigError",
    "EmptyFolderError",
    "OutputExistsError",
    "OutputWriteError",
]


class LmaddaError(Exception):
    """Base class of every error the project raises on purpose."""


class ImageReadError(LmaddaError):
    """An image file cannot be read or does not hold a usable image."""


class EmptyFolderError(LmaddaError):
    """A folder holds no readable image."""


class CheckpointError(LmaddaError):
    """A model file is not a checkpoint this project can load."""


class ConfigError(LmaddaError, ValueError):
    """An option or hyper-parameter is out of its valid range."""


class OutputExistsError(LmaddaError, FileExistsError):
    """An output file already exists and overwriting was not asked for."""


class OutputWriteError(LmaddaError, OSError):
    """An output file cannot be written (missing or read-only folder, full disk, ...)."""
