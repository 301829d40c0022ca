"""MAP's pieces: one prompt set per availability pattern, chosen per sample, in either prompt type."""

import pytest
import torch

import robustmm
from robustmm.availability import patterns
from robustmm.encoders import EncoderContext
from robustmm.contract import make_samples

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def image_text(tiny_encoders):
    return {"image": tiny_encoders["image"], "text": tiny_encoders["text"]}


def test_patterns_are_every_nonempty_subset_complete_first():
    assert patterns(["image", "text", "audio"]) == [
        ("image", "text", "audio"), ("image", "text"), ("image", "audio"), ("text", "audio"),
        ("image",), ("text",), ("audio",),
    ]
    context = EncoderContext({"image": torch.tensor([True, True, False]), "text": torch.tensor([True, False, True])})
    assert context.pattern_index(["image", "text"]).tolist() == [0, 1, 2]


@pytest.mark.parametrize("prompt_type", ["input", "attention"])
def test_each_sample_gets_the_prompts_of_its_pattern(image_text, prompt_type):
    model = robustmm.build_model(
        "map", encoders=image_text, num_classes=3, prompt_type=prompt_type, prompt_depth=2, prompt_length=3
    ).eval()
    chosen = []

    def probe(context):
        chosen.append(context.pattern_index(model.modalities))
        return torch.zeros(len(context), 1, 32)

    model.encoders["text"].insert_tokens(0, "probe", 1, probe, keep=False)
    samples = make_samples(3)
    samples[1]["image"] = None
    model(model.collate(samples))
    # The text encoder sees samples 0..2 with the patterns complete (0), text only (2), complete (0).
    assert chosen[0].tolist() == [0, 2, 0]
    # Changing a sample's pattern changes its encoding; changing another pattern's prompts does not.
    batch = model.collate(make_samples(2))
    before = model(batch).logits
    with torch.no_grad():
        model.prompts["text"][1].add_(1.0)  # the image-only pattern: no sample here has it
    torch.testing.assert_close(model(batch).logits, before)
    with torch.no_grad():
        model.prompts["text"][0].add_(1.0)
    assert not torch.allclose(model(batch).logits, before)


def test_input_prompts_accumulate_and_attention_prompts_do_not(image_text):
    lengths = {}
    for prompt_type in ("input", "attention"):
        model = robustmm.build_model(
            "map", encoders=image_text, num_classes=3, prompt_type=prompt_type, prompt_depth=2, prompt_length=3
        ).eval()
        batch = model.collate(make_samples(1))
        encoded = model.encode_present(batch, "image", batch.present["image"], output_hidden_states=True)
        lengths[prompt_type] = [h.shape[1] for h in encoded.hidden_states]
    tokens = 5  # CLS + 4 patches of the 32-pixel tiny ViT
    # What enters layer 0 (its prompts inserted), then each layer's output.
    assert lengths["input"] == [tokens + 3, tokens + 3, tokens + 6]
    assert lengths["attention"] == [tokens + 3, tokens, tokens]


def test_a_missing_modality_is_encoded_once_per_pattern(image_text):
    model = robustmm.build_model("map", encoders=image_text, num_classes=3, prompt_depth=1, prompt_length=2).eval()
    calls = []
    backbone = model.encoders["image"].backbone
    backbone.register_forward_hook(lambda module, args, output: calls.append(output.last_hidden_state.shape[0]))
    samples = make_samples(4)
    samples[1]["image"] = samples[3]["image"] = None
    model(model.collate(samples))
    assert calls == [2, 1]  # the two samples that have an image, then one placeholder for their shared pattern


def test_prompts_start_apart_and_options_are_checked(image_text):
    model = robustmm.build_model("map", encoders=image_text, num_classes=3, prompt_depth=2, prompt_length=4)
    prompts = model.prompts["image"]
    assert prompts.shape == (3, 2, 4, 32)
    assert [int(prompts[p, 0].sum(-1).argmax()) for p in range(3)] == [0, 1, 2]
    assert model.trainable_parameter_counts()["prompts"] == 2 * 3 * 2 * 4 * 32
    with pytest.raises(ValueError, match="prompt_type must be one of input, attention"):
        robustmm.build_model("map", encoders=image_text, num_classes=3, prompt_type="deep")
    assert robustmm.build_model("map", encoders=image_text, num_classes=3).prompts["text"].shape[1] == 2  # clamped


def test_the_head_is_maps_pooler_then_mlp_and_encoders_are_frozen_with_the_plain_head_an_option(image_text):
    model = robustmm.build_model("map", encoders=image_text, num_classes=3, prompt_depth=1, prompt_length=2)
    kinds = [type(layer) for layer in model.head]
    nn = torch.nn
    assert kinds == [nn.Linear, nn.Tanh, nn.Linear, nn.LayerNorm, nn.GELU, nn.Linear]
    d = 32
    assert [(layer.in_features, layer.out_features) for layer in model.head if isinstance(layer, torch.nn.Linear)] == [
        (d, d), (d, 2 * d), (2 * d, 3)
    ]
    counts = model.trainable_parameter_counts()
    assert set(counts) == {"prompts", "head", "total_trainable", "total"}  # MAP's: prompts, pooler and head
    out = model.train()(model.collate(make_samples(4)))
    torch.testing.assert_close(out.logits, model.head(out.fused))
    plain = robustmm.build_model("map", encoders=image_text, num_classes=3, prompt_depth=1, head="linear")
    assert isinstance(plain.head, torch.nn.Linear)
    with pytest.raises(ValueError, match="head must be one of map, linear"):
        robustmm.build_model("map", encoders=image_text, num_classes=3, head="mlp")


def test_an_encoder_called_on_its_own_reads_the_prompts_of_its_modality_alone(image_text):
    model = robustmm.build_model("map", encoders=image_text, num_classes=3, prompt_depth=1, prompt_length=2).eval()
    batch = model.collate([{"image": s["image"]} for s in make_samples(2)])
    alone = model.encoders["image"](batch.inputs["image"]).cls  # as the report's attention maps call it
    shown = {"image": torch.ones(2, dtype=torch.bool), "text": torch.zeros(2, dtype=torch.bool)}
    torch.testing.assert_close(alone, model.encoders["image"](batch.inputs["image"], EncoderContext(shown)).cls)
