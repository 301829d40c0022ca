"""The built-in dataset readers, one file each; importing this package registers them."""

from . import mmimdb  # noqa: F401
