"""Small randomly initialised encoders saved in the Hugging Face layout, for tests and speed benchmarks.

They go through exactly the loading path of real checkpoints (`from_pretrained(path)` for model and processor),
so everything but the pretrained weights is exercised without a download.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = (
    "a an the of and with in on is this movie film food dish recipe photo picture image sound music red green blue "
    "yellow black white small large round square happy sad angry dog cat bird car house tree sweet salty spicy "
    "chocolate cake pasta salad soup comedy drama horror action love war night day good bad very"
).split()


def _size(hidden_size: int, num_layers: int, heads: int | None, intermediate_size: int | None) -> dict:
    return {
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads or max(1, hidden_size // 32),
        "intermediate_size": intermediate_size or hidden_size * 2,
    }


def save_tiny_encoder(
    kind: str,
    directory: str | Path,
    hidden_size: int = 32,
    num_layers: int = 2,
    heads: int | None = None,
    image_size: int = 32,
    patch_size: int = 16,
    seed: int = 0,
    family: str | None = None,
    intermediate_size: int | None = None,
    vocab_size: int | None = None,
    max_position_embeddings: int = 512,
) -> str:
    """Save a random encoder of `kind` (text: BERT, image: ViT or `family="clip"`, audio: AST) with its processor.

    `intermediate_size` defaults to twice the width. `vocab_size` (text) defaults to the tiny tokenizer's own
    vocabulary; a larger one (30522 for a BERT-base-sized model) only adds embedding rows that the tokenizer
    never produces ids for. `max_position_embeddings` (text) sets how many tokens the model takes."""
    import transformers as hf

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    size = _size(hidden_size, num_layers, heads, intermediate_size)
    if kind == "text":
        vocab = directory / "vocab.txt"
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
        hf.BertTokenizer(vocab=str(vocab)).save_pretrained(directory)
        vocab_size = vocab_size or len(WORDS) + 5
        config = hf.BertConfig(vocab_size=vocab_size, max_position_embeddings=max_position_embeddings, **size)
        model = hf.BertModel(config)
    elif kind == "image" and family == "clip":
        model = hf.CLIPVisionModel(hf.CLIPVisionConfig(image_size=image_size, patch_size=patch_size, **size))
        hf.CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=image_size).save_pretrained(directory)
    elif kind == "image":
        model = hf.ViTModel(hf.ViTConfig(image_size=image_size, patch_size=patch_size, **size))
        hf.ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(directory)
    elif kind == "audio":
        bins, frames = 32, 64
        model = hf.ASTModel(
            hf.ASTConfig(num_mel_bins=bins, max_length=frames, frequency_stride=16, time_stride=16, **size)
        )
        hf.ASTFeatureExtractor(num_mel_bins=bins, max_length=frames).save_pretrained(directory)
    else:
        raise ValueError(f"no tiny encoder for kind {kind!r} / family {family!r}")
    model.save_pretrained(directory)
    return str(directory)
