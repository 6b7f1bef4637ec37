"""User-facing errors. Each names the file, key or value at fault; the CLI prints it and exits 2."""


class SonitorError(Exception):
    """Base of every error caused by the user's input rather than by a bug."""


class AudioError(SonitorError):
    """An audio file is missing, empty, corrupt or unreadable."""


class DataError(SonitorError):
    """A data set folder does not have the expected layout or names."""


class CheckpointError(SonitorError):
    """A model checkpoint does not match the model (missing/unexpected keys, wrong shapes)."""


class PackageError(SonitorError):
    """A model package is missing files, fails its checksums or has an unknown format."""


class ConfigError(SonitorError):
    """The configuration file is malformed or has unknown keys, wrong types or impossible values."""
