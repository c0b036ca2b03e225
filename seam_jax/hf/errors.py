"""Errors of the Hugging Face import and export."""

from seam_jax.errors import SeamError


class ConversionError(SeamError, ValueError):
    """A checkpoint that cannot be read or written: the message names the file and the fix."""
