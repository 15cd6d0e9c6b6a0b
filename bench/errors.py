"""The harness's exceptions: each one names the file, key or value at fault."""


class BenchError(Exception):
    """Base of every error the CLI reports as a one-line message instead of a traceback."""


class ConfigError(BenchError):
    """bench.toml or a CLI flag is malformed: the message names the file and the dotted key."""


class UnknownNameError(BenchError, KeyError):
    """An unknown method, dataset or backbone name (the message suggests close matches)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class WeightsNotFoundError(BenchError):
    """A backbone's weights are neither in the local cache nor at the configured path."""


class CorruptResultError(BenchError):
    """A result.json or scores.npz exists but does not validate."""


class NewerRecordError(CorruptResultError):
    """A result.json written by a newer harness (higher ``schema_version``) that this version cannot read: it is
    not corrupt, and is never moved or rerun; upgrade bench to read it."""


class OrphanedRunError(BenchError):
    """A run whose suite is gone (its lock was dropped): it stops before writing anything more."""


class TrainingDivergedError(BenchError):
    """The loss became NaN or infinite: the trial stops with this status."""


class DiskFullError(BenchError, OSError):
    """No space left on the device a file is written to: the message names the file (and what was needed). An
    ``OSError`` with ``errno.ENOSPC``, so code that handles I/O errors handles it too."""

    def __init__(self, message: str) -> None:
        import errno

        super().__init__(message)
        self.errno = errno.ENOSPC


class DeviceUnavailableError(BenchError):
    """The run must use a device (CUDA it asked for, or a GPU Ray gave it) that this node does not have."""


class GPUOutOfMemoryError(BenchError):
    """A run ran out of GPU memory: the message names the method, batch size, device and GPU share."""
