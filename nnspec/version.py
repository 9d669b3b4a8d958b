"""The package version, in a leaf module: code anywhere in nnspec can record it without
importing the package root (and pyproject.toml reads it from here)."""

__version__ = "0.1.0"
