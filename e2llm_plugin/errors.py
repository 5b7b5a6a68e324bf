"""The package's own errors. Every one is a ``ValueError`` so callers can catch bad input the usual way."""

import re

#: A lone surrogate: not Unicode (it comes from errors='surrogateescape' or cut UTF-16), and no tokenizer reads it.
SURROGATE = re.compile("[\ud800-\udfff]")


class E2LLMError(ValueError):
    """Base of every error this package raises on purpose (bad input, bad checkpoint, missing model)."""


class CheckpointError(E2LLMError):
    """A checkpoint directory is missing, incomplete, corrupt or does not fit the models it names."""


class DocumentError(E2LLMError):
    """A document cannot be read or holds no text."""


class MissingModelError(E2LLMError):
    """An embedded default model package is not installed; the message says how to install it."""


class MissingExtraError(E2LLMError):
    """An optional feature needs packages of an extra that is not installed; the message names the pip command."""


class ConfigError(E2LLMError):
    """A configuration value has the wrong type or is out of range; the message names the field."""


class UnreadableTextWarning(UserWarning):
    """Part of a document is text the encoder cannot read (its unknown token): the soft tokens carry little of it."""


def check_unicode(text: str, what: str, error: type[E2LLMError] = E2LLMError) -> None:
    """Refuse text holding a lone surrogate (invalid Unicode, which no tokenizer can read), saying where it is."""
    found = SURROGATE.search(text)
    if found:
        raise error(
            f"{what} holds a lone surrogate {found.group()!r} at character {found.start()}, which is not valid Unicode; "
            "decode the source with errors='replace' (or remove the character) and try again"
        )


class StoreError(E2LLMError):
    """The compressed-chunk store's file cannot be used (not this store's database, a newer schema, damaged, a folder)."""


class ContextOverflowError(E2LLMError):
    """A prompt does not fit the decoder's window (with the tokens to generate); the message says what to shorten."""
