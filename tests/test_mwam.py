"""MWAM's pieces: the patch-DCT frequency ratio, the weight that favours the weaker branch, the gradient editing,
and nothing at inference."""

import lightning as L
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


def test_weight_moves_toward_the_weaker_branch_and_gradient_apply_scales_its_gradients_once(tiny_encoders):
    plain = two_branches(tiny_encoders).train()
    weighted = two_branches(tiny_encoders, mwam=True, mwam_mode="gradient", mwam_apply="gradient").train()
    batch = plain.collate(branch_samples())
    grads = {}
    for name, model in (("plain", plain), ("weighted", weighted)):
        model(batch).loss.backward()
        for part in model.hooks():
            part.on_before_optimizer_step(torch.optim.SGD(model.optimizer_groups(0.1, 0.0), lr=0.1))
        grads[name] = {m: [p.grad.clone() for p in model.modality_parameters(m)] for m in model.modalities}
    photo, sketch = weighted.plugins["mwam"].weights.tolist()
    assert photo < 1 < sketch
    for m, k in (("photo", photo), ("sketch", sketch)):
        for before, after in zip(grads["plain"][m], grads["weighted"][m]):
            torch.testing.assert_close(after, k * before)
    head = dict(weighted.named_parameters())["head.weight"].grad
    torch.testing.assert_close(head, dict(plain.named_parameters())["head.weight"].grad)  # shared: untouched


def distance_moved(model, samples, **train_options):
    before = {m: [p.detach().clone() for p in model.modality_parameters(m)] for m in model.modalities}
    robustmm.train(model, samples, epochs=1, batch_size=4, lr=1e-2, warmup_epochs=0, progress_bar=False,
                   **train_options)
    return {m: sum((p.detach() - b).norm() ** 2 for p, b in zip(model.modality_parameters(m), before[m])) ** 0.5
            for m in model.modalities}


def test_under_adamw_a_modality_held_at_half_weight_moves_half_as_far(tiny_encoders):
    samples = branch_samples(24)
    held = {}
    for k in (0.5, 1.0):  # alpha - beta * sigmoid(...) with beta -> 0: K held at alpha whatever the data
        model = two_branches(tiny_encoders, mwam=True, mwam_mode="gradient", mwam_alpha=k, mwam_beta=1e-9)
        held[k] = distance_moved(model, samples)
    for m in ("photo", "sketch"):
        assert float(held[0.5][m] / held[1.0][m]) == pytest.approx(0.5, abs=0.08)


def test_sgd_with_momentum_is_an_option_of_training(tiny_encoders):
    model = two_branches(tiny_encoders, mwam=True, mwam_mode="gradient", mwam_alpha=0.5, mwam_beta=1e-9)
    moved = distance_moved(model, branch_samples(8), optimizer="sgd", momentum=0.9)
    assert all(float(d) > 0 for d in moved.values())
    with pytest.raises(ValueError, match="optimizer must be one of adamw, sgd"):
        robustmm.TrainConfig(optimizer="adam")


def test_with_accumulation_k_is_decided_once_per_optimizer_step_from_all_its_micro_batches(tiny_encoders,
                                                                                          monkeypatch):
    from robustmm.methods import mwam

    seen = []
    monkeypatch.setattr(mwam, "reduce_across_ranks", lambda statistics: seen.append(statistics.clone()) or statistics)
    model = two_branches(tiny_encoders, mwam=True, mwam_mode="gradient")
    robustmm.train(model, branch_samples(8), epochs=1, batch_size=2, accumulate_grad_batches=2, lr=1e-2,
                   warmup_epochs=0, progress_bar=False)
    assert len(seen) == 2  # 4 micro-batches, 2 optimizer steps
    assert all(statistics[1].tolist() == [4.0, 4.0] for statistics in seen)  # each step: 2 x 2 samples, per branch


def label_from_one_branch(n=24):
    """The photo alone decides the label (its colour); the sketch is noise that says nothing about it."""
    rng = np.random.default_rng(1)
    colours = [(200, 40, 40), (40, 40, 200)]
    ramp = np.linspace(0, 40, 32, dtype=np.uint8)[None, :, None]
    samples = []
    for i in range(n):
        photo = np.clip(np.full((32, 32, 3), colours[i % 2], dtype=np.uint8) + ramp, 0, 255).astype(np.uint8)
        noise = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        samples.append({"photo": Image.fromarray(photo), "sketch": Image.fromarray(noise), "label": i % 2})
    return samples


def test_where_one_modality_decides_the_label_its_k_is_below_one_and_the_others_above(tiny_encoders):
    model = two_branches(tiny_encoders, mwam=True)
    logged = {}

    class Logs(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_index):
            logged.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/mwam")})

    robustmm.train(model, label_from_one_branch(), epochs=1, batch_size=8, lr=1e-2, warmup_epochs=0,
                   progress_bar=False, callbacks=[Logs()])
    photo, sketch = model.plugins["mwam"].weights.tolist()
    assert photo < 1 < sketch
    assert logged["train/mwam_k_photo"] == pytest.approx(photo)
    assert logged["train/mwam_k_sketch"] == pytest.approx(sketch)
    assert logged["train/mwam_ratio_photo"] > logged["train/mwam_ratio_sketch"]


def test_text_frm_is_bounded_in_length_and_repetition(tiny_encoders):
    model = robustmm.build_model("dropout", encoders={"text": tiny_encoders["text"], "image": tiny_encoders["image"]},
                                 num_classes=2, mwam=True)
    plugin = model.plugins["mwam"]
    sentence = "a red dog with a small cat in the house"
    texts = ["a red dog", sentence, " ".join([sentence] * 2), " ".join([sentence] * 4), "dog " * 40]
    frm = [float(plugin.frm(model.collate([{"text": t, "label": 0}]), "text", torch.ones(1, dtype=torch.bool)))
           for t in texts]
    *lengths, repeated = frm
    assert max(lengths) / min(lengths) < 2.5  # eq. 4's sum: 561 for 3 words, 401 for 40 (and 90 for 20)
    assert repeated < 8 / 0.1 * 4  # eq. 4: 8e5; each of the 4 band terms is bounded by 8 / frm_floor


def test_a_modality_not_yet_seen_has_k_one_and_stays_out_of_the_mean(tiny_encoders):
    model = two_branches(tiny_encoders, mwam=True, mwam_mode="gradient")
    plugin = model.train().plugins["mwam"]
    samples = [{**s, "sketch": None} for s in branch_samples()]
    model(model.collate(samples))
    plugin.update()
    photo, sketch = plugin.weights.tolist()
    assert sketch == 1.0 and photo == pytest.approx(float(modality_weight(torch.tensor(1.0))), abs=1e-4)


def test_loss_mode_adds_weighted_auxiliary_heads_and_inference_is_untouched(tiny_encoders, tmp_path):
    plain = two_branches(tiny_encoders)
    weighted = two_branches(tiny_encoders, mwam=True, mwam_mode="loss")
    assert weighted.trainable_parameter_counts()["mwam"] == 2 * (32 * 2 + 2)
    batch = plain.collate(branch_samples())
    out = weighted.train()(batch)
    assert set(out.losses) == {"mwam_photo", "mwam_sketch"}
    assert out.loss_weights["mwam_photo"] == 1.0  # the K of the step before: none yet
    weighted.plugins["mwam"].update()
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
    with pytest.raises(ValueError, match="mwam_mode must be one of gradient, loss, hybrid"):
        two_branches(tiny_encoders, mwam=True, mwam_mode="both")
    with pytest.raises(ValueError, match="mwam_mode set without the plug-in: add mwam=true"):
        two_branches(tiny_encoders, mwam_mode="loss")


def _rank_weights(rank, world, encoder, init, out):
    """One DDP rank: its own samples, then one optimizer step's K (written for the parent to compare)."""
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = robustmm.build_model("baseline", encoders={"photo": encoder, "sketch": encoder}, num_classes=2,
                                     mwam=True, mwam_mode="gradient").train()
        samples = branch_samples(4) if rank == 0 else label_from_one_branch(4)
        model(model.collate(samples))
        model.plugins["mwam"].update()
        torch.save(model.plugins["mwam"].weights.clone(), f"{out}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_every_ddp_rank_decides_the_same_k_from_the_statistics_of_all_ranks(tiny_encoders, tmp_path):
    import torch.multiprocessing as mp

    init = f"file://{tmp_path}/rendezvous"
    mp.start_processes(_rank_weights, args=(2, tiny_encoders["image"], init, str(tmp_path)), nprocs=2,
                       start_method="fork")  # forked: the ranks need not import the libraries again
    first, second = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    torch.testing.assert_close(first, second)
    alone = {}
    for rank, samples in enumerate((branch_samples(4), label_from_one_branch(4))):  # without the reduction
        model = two_branches(tiny_encoders, mwam=True, mwam_mode="gradient").train()
        model(model.collate(samples))
        model.plugins["mwam"].update()
        alone[rank] = model.plugins["mwam"].weights.clone()
    assert not torch.allclose(alone[0], alone[1])
