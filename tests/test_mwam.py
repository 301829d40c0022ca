"""MWAM's pieces: the patch-DCT frequency ratio, the weight that favours the weaker branch, the gradient editing,
and nothing at inference."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.fft import dctn

import robustmm
from robustmm.methods.mwam import frequency_ratio, modality_weight, patch_dct

pytestmark = pytest.mark.usefixtures("one_thread")


def test_frequency_ratio_matches_a_direct_dct_of_each_patch():
    images = torch.randn(2, 3, 16, 24, dtype=torch.float64)
    coefficients = patch_dct(images, 8)
    assert coefficients.shape == (2, 3, 2, 3, 8, 8)
    expected = np.zeros(2)
    for n in range(2):
        for c in range(3):
            for i in range(2):
                for j in range(3):
                    block = dctn(images[n, c, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8].numpy(), norm="ortho")
                    np.testing.assert_allclose(coefficients[n, c, i, j].numpy(), block, atol=1e-10)
                    low, high = block[:2, :2], block[6:, 6:][::-1, ::-1]
                    expected[n] += np.abs(low / (high + 1e-6)).sum()
    np.testing.assert_allclose(frequency_ratio(images).numpy(), expected, rtol=1e-5)


def test_the_dominant_modality_gets_the_lower_weight():
    weights = modality_weight(torch.tensor([2.0, 0.2]))  # T_m: a dominant and a weak modality
    assert weights[0] < 1 < weights[1]
    assert 0.5 < float(weights.min()) and float(weights.max()) < 1.5


def two_branches(tiny_encoders, **options):
    encoders = {"photo": tiny_encoders["image"], "sketch": tiny_encoders["image"]}
    return robustmm.build_model("baseline", encoders=encoders, num_classes=2, seed=3, adapter_dropout=0.0, **options)


def branch_samples(n=4):
    rng = np.random.default_rng(0)
    smooth = Image.new("RGB", (32, 32), (120, 60, 200))  # all low frequency: a high FRM, the dominant branch
    return [
        {"photo": smooth, "sketch": Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)), "label": i % 2}
        for i in range(n)
    ]


def test_weight_moves_toward_the_weaker_branch_and_scales_its_gradients(tiny_encoders):
    plain = two_branches(tiny_encoders).train()
    weighted = two_branches(tiny_encoders, mwam=True, mwam_mode="gradient", mwam_scale="none").train()
    batch = plain.collate(branch_samples())
    grads = {}
    for name, model in (("plain", plain), ("weighted", weighted)):
        model(batch).loss.backward()
        for part in model.hooks():
            part.on_after_backward()
        grads[name] = {m: [p.grad.clone() for p in model.modality_parameters(m)] for m in model.modalities}
    photo, sketch = weighted.plugins["mwam"].weights.tolist()
    assert photo < 1 < sketch
    for m, k in (("photo", photo), ("sketch", sketch)):
        for before, after in zip(grads["plain"][m], grads["weighted"][m]):
            torch.testing.assert_close(after, k * before)
    head = dict(weighted.named_parameters())["head.weight"].grad
    torch.testing.assert_close(head, dict(plain.named_parameters())["head.weight"].grad)  # shared: untouched


def test_loss_mode_adds_weighted_auxiliary_heads_and_inference_is_untouched(tiny_encoders, tmp_path):
    plain = two_branches(tiny_encoders)
    weighted = two_branches(tiny_encoders, mwam=True, mwam_mode="loss", mwam_scale_steps=2)
    assert weighted.trainable_parameter_counts()["mwam"] == 2 * (32 * 2 + 2)
    batch = plain.collate(branch_samples())
    out = weighted.train()(batch)
    assert set(out.losses) == {"mwam_photo", "mwam_sketch"}
    assert out.loss_weights["mwam_photo"] == pytest.approx(float(weighted.plugins["mwam"].weights[0]))
    torch.testing.assert_close(out.loss, out.task_loss + sum(out.loss_weights[n] * out.losses[n] for n in out.losses))
    # Detached at inference: the same logits as the method alone, no auxiliary loss, no bank update.
    bank = weighted.plugins["mwam"].bank.clone()
    evaluated = weighted.eval()(batch)
    torch.testing.assert_close(evaluated.logits, plain.eval()(batch).logits)
    assert evaluated.losses == {}
    torch.testing.assert_close(weighted.plugins["mwam"].bank, bank)
    # The bank is state: it is saved with the weights.
    weighted.save_pretrained(tmp_path / "m")
    loaded = robustmm.load_model(tmp_path / "m")
    torch.testing.assert_close(loaded.plugins["mwam"].bank, bank)
    assert loaded.plugins["mwam"].bank.abs().sum() > 0


def test_text_and_audio_are_read_as_one_channel_maps(tiny_encoders):
    encoders = {"text": tiny_encoders["text"], "audio": tiny_encoders["audio"]}
    model = robustmm.build_model("dropout", encoders=encoders, num_classes=2, mwam=True).train()
    samples = [
        {"text": "a red dog", "audio": np.sin(np.arange(8000) * 0.05 * (i + 1)).astype(np.float32), "label": i % 2}
        for i in range(3)
    ]
    batch = model.collate(samples)
    plugin = model.plugins["mwam"]
    text = plugin.input_map(batch, "text", torch.ones(3, dtype=torch.bool))
    audio = plugin.input_map(batch, "audio", torch.ones(3, dtype=torch.bool))
    assert text.shape[:2] == (3, 1) and text.shape[-1] == 32 and audio.shape[:2] == (3, 1)
    out = model(batch)
    assert torch.isfinite(out.loss) and torch.isfinite(plugin.weights).all()


def test_options_are_checked(tiny_encoders):
    with pytest.raises(ValueError, match="mwam mode must be one of gradient, loss, hybrid"):
        two_branches(tiny_encoders, mwam=True, mwam_mode="both")
    with pytest.raises(ValueError, match="mwam_mode set without the plug-in: add mwam=true"):
        two_branches(tiny_encoders, mwam_mode="loss")
