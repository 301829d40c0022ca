"""The built-in dataset readers, one file each; importing this package registers them."""

from . import ave, crema_d, food101, generic, hateful_memes, kinetics_sounds, mmimdb, synthetic  # noqa: F401
