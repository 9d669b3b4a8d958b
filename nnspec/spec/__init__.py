"""The spec language: schema (pydantic models), file reading with positions, validation."""

from nnspec.spec.model import FORMAT_VERSION, SCHEMA_ID, Spec
from nnspec.spec.validate import load_spec, loads_spec, validate_document

__all__ = ["FORMAT_VERSION", "SCHEMA_ID", "Spec", "load_spec", "loads_spec", "validate_document"]
