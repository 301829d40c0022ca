"""Every supported text and vision family is read at its own pooled token: the class feature depends on the input
and equals the family's `pooler_output`, or the documented choice (`encoders.POOLING_BY_MODEL_TYPE`)."""

import pytest
import torch
import transformers as hf

from robustmm.adapters import AdapterConfig
from robustmm.encoders import EncoderConfig, ModalityEncoder

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
VISION = dict(SIZE, image_size=32, patch_size=16)


def pooled(output):
    return output.pooler_output


def class_token(output):
    return output.last_hidden_state[:, 0]


def class_and_distillation(output):
    return output.last_hidden_state[:, :2].mean(1)


FAMILIES = {
    "bert": ("text", lambda: hf.BertModel(hf.BertConfig(vocab_size=100, **SIZE)), class_token),
    "distilbert": (
        "text", lambda: hf.DistilBertModel(hf.DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2,
                                                               hidden_dim=64)), class_token,
    ),
    "clip_text": (
        "text", lambda: hf.CLIPTextModel(hf.CLIPTextConfig(vocab_size=100, bos_token_id=98, eos_token_id=99,
                                                           pad_token_id=0, **SIZE)), pooled,
    ),
    "siglip_text": (  # a text tower alone does not load through AutoModel: the tower of a whole SigLIP checkpoint
        "text", lambda: hf.SiglipModel(hf.SiglipConfig(
            text_config=dict(vocab_size=100, bos_token_id=98, eos_token_id=99, pad_token_id=0, **SIZE),
            vision_config=VISION)), lambda output: output.pooler_output,
    ),
    "clip_text_of_clip": (
        "text", lambda: hf.CLIPModel(hf.CLIPConfig(
            text_config=dict(vocab_size=100, bos_token_id=98, eos_token_id=99, pad_token_id=0, **SIZE),
            vision_config=VISION)), pooled,
    ),
    "vit": ("image", lambda: hf.ViTModel(hf.ViTConfig(**VISION)), class_token),
    "clip_vision": ("image", lambda: hf.CLIPVisionModel(hf.CLIPVisionConfig(**VISION)), pooled),
    "siglip_vision": ("image", lambda: hf.SiglipVisionModel(hf.SiglipVisionConfig(**VISION)), pooled),
    "deit": ("image", lambda: hf.DeiTModel(hf.DeiTConfig(**VISION)), class_and_distillation),
    "beit": ("image", lambda: hf.BeitModel(hf.BeitConfig(**VISION)), pooled),
    "dinov2": ("image", lambda: hf.Dinov2Model(hf.Dinov2Config(**VISION)), pooled),
    "ast": (
        "audio", lambda: hf.ASTModel(hf.ASTConfig(num_mel_bins=32, max_length=64, frequency_stride=16,
                                                  time_stride=16, **SIZE)), pooled,
    ),
}


def inputs_of(kind, variant):
    generator = torch.Generator().manual_seed(variant)
    if kind == "text":  # start token 98, words, end token 99, padding 0; two texts of different lengths
        words = [[5, 6, 7], [9, 4, 12, 30, 8]][variant]
        ids = torch.tensor([[98, *words, 99] + [0] * (6 - len(words))] * 2)
        ids[1, 1] = 40
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}
    if kind == "image":
        return {"pixel_values": torch.randn(2, 3, 32, 32, generator=generator)}
    return {"input_values": torch.randn(2, 64, 32, generator=generator)}


@pytest.mark.parametrize("family", FAMILIES)
def test_the_class_feature_is_the_familys_own_pooled_output_and_depends_on_the_input(family, tmp_path):
    kind, make, expected = FAMILIES[family]
    torch.manual_seed(0)
    model = make().eval()
    model.save_pretrained(tmp_path)
    encoder = ModalityEncoder(kind, EncoderConfig(str(tmp_path), kind=kind), AdapterConfig(type="none")).eval()
    with torch.no_grad():
        features = [encoder(inputs_of(kind, variant)).cls for variant in (0, 1)]
        tower = getattr(model, "text_model", model) if kind == "text" else model
        torch.testing.assert_close(features[0], expected(tower(**inputs_of(kind, 0))))
    assert (features[0] - features[1]).abs().max() > 1e-4  # another input, another feature
    assert (features[0][0] - features[0][1]).abs().max() > 1e-4  # and per sample
