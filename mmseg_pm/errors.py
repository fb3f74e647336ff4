"""The exceptions of mmseg_pm: one root, caught by the command-line tools.

Every error a user can cause by their input (files, options, configs, checkpoints, data)
derives from :class:`MMSegPMError`; ``mmseg_pm.utils.cli.run_cli`` prints it as one
``error: <message>`` line and exits with code 2. Anything else is a bug and keeps its
traceback. Classes that replace a built-in meaning also derive from it (``ValueError``), so
code that catches the built-in keeps working.
"""


class MMSegPMError(Exception):
    """Root of every mmseg_pm error that is the user's to fix (printed as one line)."""


class UserError(MMSegPMError):
    """Bad input from the user: a missing file, a wrong option, unusable data."""


class ConfigError(UserError, ValueError):
    """Bad settings: token-reduction or compression options, modes, spans, rates."""


class StructureError(MMSegPMError, ValueError):
    """An inconsistent compression structure (shapes, group indices, grid, span)."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used as asked."""


class CheckpointReadError(CheckpointError):
    """A local checkpoint file exists but cannot be read (truncated, corrupt, not torch)."""


class CheckpointFormatError(CheckpointError, ValueError):
    """The checkpoint's key layout is not recognised, not supported or inconsistent."""


class CheckpointMismatchError(CheckpointFormatError):
    """The checkpoint does not fit the model: missing / unexpected tensors or other shapes."""


class FixedTokenCountError(UserError, ValueError):
    """An input larger than the crop a fixed-token-count (compressed) model was built for."""


class DataError(UserError):
    """A dataset or annotation that cannot be used (missing, empty, wrong labels or size)."""


#: names of earlier releases, kept importable
PMStructureError = StructureError
PMConfigError = ConfigError

__all__ = [
    'MMSegPMError', 'UserError', 'ConfigError', 'StructureError', 'CheckpointError',
    'CheckpointReadError', 'CheckpointFormatError', 'CheckpointMismatchError',
    'FixedTokenCountError', 'DataError', 'PMStructureError', 'PMConfigError'
]
