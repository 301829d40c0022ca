"""The terminal belongs to our own progress bars and tables: no weight-loading bars, no library chatter."""

from __future__ import annotations

import os


def quiet_libraries() -> None:
    """Silence transformers' and Lightning's progress bars, tips and warnings in this process. Called by the
    processes that load models, not at import, so that `--help` loads neither library."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    import warnings

    import lightning.pytorch  # noqa: F401  (its import sets its loggers to INFO: import it before quieting them)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", module="transformers")
    warnings.filterwarnings("ignore", module="lightning")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
