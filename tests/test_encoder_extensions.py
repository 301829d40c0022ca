"""Encoder extensions by hooks: prefix tokens, tokens inserted at a layer (kept or for that layer only), layer
edits, per-layer outputs, and the attention mask extended for all of them."""

import pytest
import torch

from robustmm.adapters import AdapterConfig
from robustmm.encoders import EncoderConfig, EncoderContext, ModalityEncoder
from robustmm.processing import PROCESSORS

pytestmark = pytest.mark.usefixtures("one_thread")


def fixed(count, seed):
    tokens = torch.randn(count, 32, generator=torch.Generator().manual_seed(seed))
    return lambda context: tokens.expand(len(context), -1, -1)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_inserted_tokens_see_no_padding_and_sit_where_they_are_said_to(tiny_encoders, attention):
    encoder = ModalityEncoder("text", EncoderConfig(tiny_encoders["text"]), AdapterConfig()).eval()
    encoder.backbone.get_base_model().config._attn_implementation = attention
    encoder.add_prefix("prefix", 2, fixed(2, 0))
    encoder.insert_tokens(1, "temporary", 1, fixed(1, 1), keep=False)  # registered first, still dropped correctly
    encoder.insert_tokens(1, "deep", 3, fixed(3, 2))
    seen = []

    def edit(hidden, context):
        seen.append(encoder.token_slice("prefix"))
        hidden = hidden.clone()
        hidden[:, encoder.token_slice("prefix")] += 1.0
        return hidden

    encoder.add_layer_edit(1, edit)
    process = PROCESSORS["text"](tiny_encoders["text"])
    with torch.no_grad():
        both = encoder(process(["a dog", "the red cat sits on the house"], ["x", "y"]), output_hidden_states=True)
        alone = encoder(process(["a dog"], ["x"]), output_hidden_states=True)
    assert seen[0] == slice(0, 2)  # at layer 1's entry, before that layer's insertions
    assert {k: tuple(v.shape) for k, v in both.prefix.items()} == {"deep": (2, 3, 32), "prefix": (2, 2, 32)}
    tokens = both.hidden_states[0].shape[1]
    assert [h.shape[1] for h in both.hidden_states] == [tokens, tokens, tokens + 3]
    torch.testing.assert_close(both.cls[0], alone.cls[0], atol=1e-5, rtol=1e-5)
    for name in ("deep", "prefix"):
        torch.testing.assert_close(both.prefix[name][0], alone.prefix[name][0], atol=1e-5, rtol=1e-5)


def test_layers_after_an_insertion_get_the_widened_mask_too(tmp_path):
    from robustmm.tiny import save_tiny_encoder

    path = save_tiny_encoder("text", tmp_path / "deep", num_layers=4)
    encoder = ModalityEncoder("text", EncoderConfig(path), AdapterConfig()).eval()
    encoder.insert_tokens(0, "early", 2, fixed(2, 0))
    process = PROCESSORS["text"](path)
    with torch.no_grad():
        both = encoder(process(["a dog", "the red cat sits on the house"], ["x", "y"]))
        alone = encoder(process(["a dog"], ["x"]))
    torch.testing.assert_close(both.cls[0], alone.cls[0], atol=1e-5, rtol=1e-5)


def test_the_order_of_registration_at_one_layer_does_not_matter(tiny_encoders):
    outputs = []
    for temporary_first in (True, False):
        encoder = ModalityEncoder("text", EncoderConfig(tiny_encoders["text"]), AdapterConfig()).eval()
        insertions = [("temporary", 1, fixed(1, 1), False), ("deep", 3, fixed(3, 2), True)]
        for name, count, provider, keep in insertions if temporary_first else insertions[::-1]:
            encoder.insert_tokens(1, name, count, provider, keep=keep)
        with torch.no_grad():
            outputs.append(encoder(PROCESSORS["text"](tiny_encoders["text"])(["a red dog"], ["x"])))
    torch.testing.assert_close(outputs[0].cls, outputs[1].cls)
    torch.testing.assert_close(outputs[0].prefix["deep"], outputs[1].prefix["deep"])


def test_providers_receive_each_rows_pattern_and_wrong_shapes_are_named(tiny_encoders):
    encoder = ModalityEncoder("image", EncoderConfig(tiny_encoders["image"]), AdapterConfig()).eval()
    patterns = []

    def provider(context):
        patterns.append(context.pattern_index(["image", "text"]))
        return torch.zeros(len(context), 1, 32)

    encoder.add_prefix("p", 1, provider)
    pixels = {"pixel_values": torch.zeros(3, 3, 32, 32)}
    context = EncoderContext({"image": torch.tensor([True, True, True]), "text": torch.tensor([True, False, True])})
    encoder(pixels, context)
    assert patterns[0].tolist() == [0, 1, 0]
    encoder.add_prefix("bad", 2, lambda context: torch.zeros(len(context), 1, 32))
    with pytest.raises(ValueError, match="token segment 'bad' gave shape \\[3, 1, 32\\], expected \\[3, 2, 32\\]"):
        encoder(pixels, context)
    with pytest.raises(ValueError, match="layer 5 does not exist; the encoder has 2"):
        encoder.add_layer_edit(5, lambda hidden, context: hidden)
