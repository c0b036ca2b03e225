"""The project's error types: each says what is wrong and how to fix it."""


class SeamError(Exception):
    """Base class for errors that the command line reports without a traceback."""


class ConfigError(SeamError, ValueError):
    """A config value or a model config.json that seam_jax cannot use."""
