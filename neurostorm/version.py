"""The package version (one place: the wheel's metadata and every record a run writes read it)."""

__version__ = "0.1.0"
