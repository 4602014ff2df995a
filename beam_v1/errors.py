"""The exception types users of beam-v1 catch.

Every message names the cause and what is available, in one paragraph, so the
command line can print it as is (exit status 2, no traceback).
"""

from __future__ import annotations


class BeamV1Error(Exception):
    """Base class of every error beam-v1 raises on purpose."""


class ModelFileError(BeamV1Error):
    """The SavedModel or one of its files is missing, empty or corrupt."""


class TagsNotFoundError(BeamV1Error):
    """No MetaGraph carries the requested tag set."""


class SignatureNotFoundError(BeamV1Error):
    """The signature key (or an output key) is not in the MetaGraph."""


class MissingOpsError(BeamV1Error):
    """The graph uses ops this TensorFlow does not register or has no CPU kernel for."""

    def __init__(self, message: str, missing: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.missing = missing or {}


class FeedError(BeamV1Error, ValueError):
    """A value fed to a signature input has the wrong key, dtype or shape."""


class SchemaError(BeamV1Error, ValueError):
    """The input data cannot feed the signature (missing column, unconvertible type, name clash)."""


class UnsafeModelError(BeamV1Error):
    """The graph uses ops that touch files, processes or Python, or assets outside the model."""

    def __init__(self, message: str, findings: list | None = None):
        super().__init__(message)
        self.findings = findings or []  # beam_v1.model.audit.Finding
