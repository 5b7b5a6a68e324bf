"""The package's own errors. Every one is a ``ValueError`` so callers can catch bad input the usual way."""


class E2LLMError(ValueError):
    """Base of every error this package raises on purpose (bad input, bad checkpoint, missing model)."""


class CheckpointError(E2LLMError):
    """A checkpoint directory is missing, incomplete, corrupt or does not fit the models it names."""


class DocumentError(E2LLMError):
    """A document cannot be read or holds no text."""


class MissingModelError(E2LLMError):
    """An embedded default model package is not installed; the message says how to install it."""


class ConfigError(E2LLMError):
    """A configuration value has the wrong type or is out of range; the message names the field."""
