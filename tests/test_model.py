"""The model over real `transformers` encoders: adapters, proxy tokens, skipping missing encoders, saving, training."""

import csv

import pytest
import torch
from PIL import Image

import robustmm
from robustmm.encoders import EncoderOutput
from robustmm.adapters import matched_modules
from robustmm.contract import StopBeforeEpoch, make_samples
from robustmm.training import evaluate, train


@pytest.fixture
def image_text(tiny_encoders):
    return {"image": tiny_encoders["image"], "text": tiny_encoders["text"]}


def count_calls(model):
    """Record the batch size of every call of each encoder's backbone."""
    calls = {m: [] for m in model.modalities}
    for modality, encoder in model.encoders.items():
        encoder.backbone.register_forward_hook(
            lambda module, args, kwargs, output, m=modality: calls[m].append(output.last_hidden_state.shape[0]),
            with_kwargs=True,
        )
    return calls


def test_fused_feature_follows_eq5_for_every_pattern(image_text):
    model = robustmm.build_model("cmpt", encoders=image_text, num_classes=3).eval()
    samples = make_samples(3)
    samples[1]["image"] = None
    samples[2]["text"] = None
    out = model(model.collate(samples))
    c, p = out.features.cls, out.features.extras["proxies"]
    torch.testing.assert_close(out.fused[0], c["image"][0] + c["text"][0])
    torch.testing.assert_close(out.fused[1], c["text"][1] + p["text", "image"][1])
    torch.testing.assert_close(out.fused[2], c["image"][2] + p["image", "text"][2])
    # rows of samples that lack a modality are zero
    assert c["image"][1].abs().sum() == 0 and p["image", "text"][1].abs().sum() == 0
    assert c["text"][2].abs().sum() == 0
    torch.testing.assert_close(out.logits, model.head(out.fused))


def test_only_adapters_proxies_and_head_train(image_text):
    model = robustmm.build_model("cmpt", encoders=image_text, num_classes=3)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("proxies.") or n.startswith("head.") for n in trainable), trainable
    counts = model.trainable_parameter_counts()
    # rank 1 on query, key, value, attention output of 2 layers of width 32: 2 * 4 * (32 + 32) per encoder
    assert counts["adapters.image"] == counts["adapters.text"] == 2 * 4 * 64
    assert counts["proxies"] == 2 * 32
    assert counts["head"] == 32 * 3 + 3
    lora_layers = {n.rsplit(".lora_", 1)[0] for n in trainable if "lora_" in n}
    assert len(lora_layers) == 16
    assert not any("intermediate" in n or "mlp" in n or "pooler" in n or n.endswith("output.dense") and "attention" not in n
                   for n in lora_layers)


@pytest.mark.parametrize(
    "key,count",
    [("text", 8), ("image", 8), ("audio", 8), ("clip", 8)],
)
def test_default_targets_are_the_four_attention_projections(tiny_encoders, key, count):
    from transformers import AutoModel

    from robustmm.adapters import ATTENTION_PROJECTIONS

    backbone = AutoModel.from_pretrained(tiny_encoders[key])
    names = matched_modules(backbone, ATTENTION_PROJECTIONS)
    assert len(names) == count  # 2 layers x (q, k, v, out)
    assert not any("mlp" in n or "intermediate" in n or n.endswith("layer.0.output.dense") for n in names)


def test_missing_modality_encoder_is_not_run(image_text):
    model = robustmm.build_model("cmpt", encoders=image_text, num_classes=3).eval()
    calls = count_calls(model)
    samples = make_samples(5)
    for i in (1, 3):
        samples[i]["text"] = None
    model(model.collate(samples))
    assert calls == {"image": [5], "text": [3]}
    for s in samples:
        s["text"] = None
    calls["image"].clear(), calls["text"].clear()
    model(model.collate(samples))
    assert calls == {"image": [5], "text": []}


def test_baseline_encodes_the_placeholder_once_per_step(image_text):
    model = robustmm.build_model("baseline", encoders=image_text, num_classes=3).eval()
    calls = count_calls(model)
    samples = make_samples(4)
    for s in samples[:3]:
        s["image"] = None
    out = model(model.collate(samples))
    assert calls == {"image": [1, 1], "text": [4]}  # the one real image, then the placeholder once
    placeholder = model.encode_placeholder("image", torch.device("cpu"))
    torch.testing.assert_close(out.fused[0], out.features.cls["text"][0] + placeholder)


@pytest.mark.parametrize("choice, value", [("zeros", 0.0), ("ones", 1.0)])
def test_image_and_audio_placeholders_can_be_normalized_zeros_or_ones(tiny_encoders, choice, value):
    encoders = {"image": tiny_encoders["image"], "audio": tiny_encoders["audio"], "text": tiny_encoders["text"]}
    black = robustmm.build_model("dropout", encoders=encoders, num_classes=3)
    chosen = robustmm.build_model("dropout", encoders=encoders, num_classes=3, placeholder=choice,
                                  audio_placeholder=choice)
    for modality, key in (("image", "pixel_values"), ("audio", "input_values")):
        inputs = chosen.placeholder_inputs(modality)[key]
        assert inputs.shape == black.placeholder_inputs(modality)[key].shape and bool((inputs == value).all())
    torch.testing.assert_close(black.placeholder_inputs("text"), chosen.placeholder_inputs("text"))  # always ""
    assert not bool((black.placeholder_inputs("image")["pixel_values"] == value).all())  # black is neither
    with pytest.raises(ValueError, match="placeholder must be one of black, zeros, ones"):
        robustmm.build_model("baseline", encoders=encoders, num_classes=3, placeholder="grey")


@pytest.mark.parametrize("method", ["baseline", "cmpt"])
def test_layernorm_fusion_makes_predictions_blind_to_an_encoders_scale(image_text, method):
    samples = make_samples(4)
    samples[1]["image"], samples[2]["text"] = None, None
    outputs = {}
    for norm in ("none", "layernorm"):
        model = robustmm.build_model(method, encoders=image_text, num_classes=3, fusion_norm=norm).eval()
        batch = model.collate(samples)
        plain = model(batch)
        encoder = model.encoders["image"]
        forward = encoder.forward
        def louder(*args, **kwargs):  # an encoder 5x louder
            out = forward(*args, **kwargs)
            return EncoderOutput(5.0 * out.cls, {name: 5.0 * t for name, t in out.prefix.items()})

        encoder.forward = louder
        outputs[norm] = plain, model(batch)
    plain, louder = outputs["layernorm"]
    torch.testing.assert_close(plain.logits, louder.logits, atol=1e-4, rtol=1e-4)
    rows = plain.availability.present["image"]
    torch.testing.assert_close(plain.features.cls["image"][rows].std(-1, unbiased=False), torch.ones(int(rows.sum())), atol=1e-3, rtol=0)
    assert not plain.features.cls["image"][~rows].any()  # a missing modality stays a zero row
    plain, louder = outputs["none"]
    assert not torch.allclose(plain.logits, louder.logits, atol=1e-3)


def test_sample_without_any_modality_is_an_error_naming_it(image_text):
    model = robustmm.build_model("cmpt", encoders=image_text, num_classes=3)
    samples = make_samples(3)
    samples[2] = {"id": "empty-one", "image": None, "text": None, "label": 0}
    with pytest.raises(ValueError, match="sample 2 \\(id 'empty-one'\\) has no modality"):
        model.collate(samples)


def test_bad_inputs_name_the_sample(image_text, tmp_path):
    model = robustmm.build_model("cmpt", encoders=image_text, num_classes=3)
    samples = make_samples(2)
    samples[1]["image"] = str(tmp_path / "nowhere.jpg")
    with pytest.raises(ValueError, match="sample 1 .*nowhere.jpg"):
        model.collate(samples)
    samples = make_samples(2)
    samples[0]["label"] = 7
    with pytest.raises(ValueError, match="sample 0 .*label 7"):
        model.collate(samples)


@pytest.mark.parametrize("adapter", ["lora", "dora", "vera"])
def test_save_and_load_round_trip(image_text, tmp_path, adapter):
    model = robustmm.build_model("cmpt", encoders=image_text, num_classes=3, adapter=adapter, seed=1)
    with torch.no_grad():  # move every trainable tensor away from its initial value
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    samples = make_samples(4)
    samples[1]["text"] = None
    samples[2]["image"] = None
    before = model.predict(samples)
    model.save_pretrained(tmp_path / "saved")
    loaded = robustmm.load_model(tmp_path / "saved")
    assert isinstance(loaded, type(model)) and loaded.config == model.config
    torch.testing.assert_close(loaded.predict(samples), before, rtol=0, atol=0)
    fresh = robustmm.build_model("cmpt", encoders=image_text, num_classes=3, adapter=adapter, seed=1)
    assert not torch.allclose(fresh.predict(samples), before)


def test_predict_returns_probabilities_for_any_subset(tiny_encoders):
    encoders = {"image": tiny_encoders["image"], "text": tiny_encoders["text"], "audio": tiny_encoders["audio"]}
    model = robustmm.build_model("cmpt", encoders=encoders, num_classes=3)
    samples = make_samples(7, with_audio=True)
    for i, keep in enumerate([("image",), ("text",), ("audio",), ("image", "text"), ("image", "audio"),
                              ("text", "audio"), ("image", "text", "audio")]):
        for m in encoders:
            if m not in keep:
                samples[i][m] = None
    probabilities = model.predict(samples)
    assert probabilities.shape == (7, 3)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(7))


def test_modality_dropout_never_empties_a_sample(image_text):
    model = robustmm.build_model("dropout", encoders=image_text, num_classes=3, modality_dropout_level="sample").train()
    present = {"image": torch.tensor([1, 1, 0, 1] * 8).bool(), "text": torch.tensor([1, 0, 1, 1] * 8).bool()}
    seen = set()
    for _ in range(20):
        visible = model.drop_modalities(present)
        both = torch.stack(list(visible.values()))
        assert both.any(0).all()
        assert not (both & ~torch.stack(list(present.values()))).any()  # nothing appears that was not there
        seen.update(tuple(both[:, i].tolist()) for i in range(both.shape[1]))
    assert seen == {(True, True), (True, False), (False, True)}


def test_unknown_option_is_a_clear_error(image_text):
    with pytest.raises(TypeError, match="no option align_wieght"):
        robustmm.build_model("cmpt", encoders=image_text, num_classes=3, align_wieght=0.1)
    with pytest.raises(ValueError, match="unknown method 'cmtp'"):
        robustmm.build_model("cmtp", encoders=image_text, num_classes=3)


def test_video_frames_are_encoded_and_averaged(tiny_encoders):
    model = robustmm.build_model(
        "cmpt", encoders={"video": {"name_or_path": tiny_encoders["image"], "num_frames": 3},
                          "text": tiny_encoders["text"]}, num_classes=3).eval()
    frame = Image.new("RGB", (32, 32), (10, 200, 90))
    out = model(model.collate([{"video": [frame] * 5, "text": "a dog"}]))
    pixels = model.collator.processors["video"].images([frame], ["f"])["pixel_values"]
    single = model.encoders["video"]({"pixel_values": pixels.unsqueeze(1)})  # one clip of one frame
    torch.testing.assert_close(out.features.cls["video"][0], single.cls[0], atol=1e-5, rtol=1e-5)


def test_multilabel_uses_bce_on_label_lists(image_text):
    model = robustmm.build_model("cmpt", encoders=image_text, num_classes=4, multilabel=True)
    samples = make_samples(3)
    samples[0]["label"], samples[1]["label"], samples[2]["label"] = [0, 2], [1], []
    batch = model.collate(samples)
    assert batch.labels.tolist() == [[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    out = model(batch)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, batch.labels)
    torch.testing.assert_close(out.task_loss, expected)


def test_short_training_lowers_the_loss(image_text, tmp_path):
    model = robustmm.build_model("cmpt", encoders=image_text, num_classes=3)
    train_samples, val_samples = make_samples(48, seed=1), make_samples(24, seed=2)
    model.eval()
    before = torch.stack([model(model.collate(train_samples[i:i + 8])).loss for i in range(0, 48, 8)]).mean()
    train(model, train_samples, val_samples, epochs=4, warmup_epochs=1, batch_size=8, lr=1e-2,
          out_dir=tmp_path / "run", progress_bar=False)
    model.eval()
    after = torch.stack([model(model.collate(train_samples[i:i + 8])).loss for i in range(0, 48, 8)]).mean()
    assert after < 0.7 * before
    assert evaluate(model, val_samples)["accuracy"] > 0.6
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    reloaded = robustmm.load_model(tmp_path / "run" / "model")
    torch.testing.assert_close(reloaded.predict(val_samples), model.predict(val_samples))


def test_minilm_cls_matches_the_plain_encoder_and_masks_padding(minilm_path):
    """Real pretrained weights: without proxies and with fresh (zero-effect) LoRA, CLS equals the plain model's;
    with proxies, padding does not change a sample's features (the mask is extended correctly)."""
    from transformers import AutoModel, AutoTokenizer

    plain = AutoModel.from_pretrained(minilm_path).eval()
    tokens = AutoTokenizer.from_pretrained(minilm_path)("a photo of a dog", return_tensors="pt")
    expected = plain(**tokens).last_hidden_state[:, 0]
    image_free = {"text": minilm_path, "other": {"name_or_path": minilm_path, "kind": "text"}}
    baseline = robustmm.build_model("baseline", encoders=image_free, num_classes=2, adapter_dropout=0.0).eval()
    cls = baseline.encoders["text"](baseline.collator.processors["text"](["a photo of a dog"], ["s"])).cls
    torch.testing.assert_close(cls, expected, atol=1e-5, rtol=1e-5)

    cmpt = robustmm.build_model("cmpt", encoders=image_free, num_classes=2).eval()
    texts = ["a photo of a dog", "a much longer sentence about a cat sitting on a warm window sill"]
    together = cmpt(cmpt.collate([{"text": t} for t in texts]))
    alone = cmpt(cmpt.collate([{"text": texts[0]}]))
    torch.testing.assert_close(together.features.cls["text"][0], alone.features.cls["text"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together.features.extras["proxies"]["text", "other"][0], alone.features.extras["proxies"]["text", "other"][0],
                               atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone.features.cls["text"][0], expected[0], atol=1e-3)  # the proxy token is attended to


def test_a_killed_run_resumes_to_the_same_model(image_text, tmp_path):
    train_samples, val_samples = make_samples(40, seed=3), make_samples(16, seed=4)
    options = dict(epochs=3, warmup_epochs=1, batch_size=8, lr=1e-2, progress_bar=False)

    def fresh():
        return robustmm.build_model("cmpt", encoders=image_text, num_classes=3, seed=5)

    straight = train(fresh(), train_samples, val_samples, out_dir=tmp_path / "straight", **options)
    with pytest.raises(RuntimeError, match="killed"):
        train(fresh(), train_samples, val_samples, out_dir=tmp_path / "resumed", callbacks=[StopBeforeEpoch(2)],
              **options)
    assert not (tmp_path / "resumed" / "model").exists()
    resumed = train(fresh(), train_samples, val_samples, out_dir=tmp_path / "resumed", **options)
    torch.testing.assert_close(resumed.predict(val_samples), straight.predict(val_samples))
    def validated_epochs(version):
        rows = csv.DictReader((tmp_path / "resumed" / "logs" / version / "metrics.csv").open())
        return sorted(int(row["epoch"]) for row in rows if row["val/accuracy"])

    assert validated_epochs("version_0") == [0, 1] and validated_epochs("version_1") == [2]  # both attempts kept


@pytest.mark.parametrize("method", ["baseline", "cmpt"])
def test_logits_by_availability_match_a_forward_pass_without_the_hidden_modalities(image_text, method):
    model = robustmm.build_model(method, encoders=image_text, num_classes=3).eval()
    samples = make_samples(5)
    samples[3]["text"] = None  # really missing: stays missing whatever a scenario shows
    shows = {
        "complete": {"image": [1, 1, 1, 1, 1], "text": [1, 1, 1, 1, 1]},
        "text missing": {"image": [1, 1, 1, 1, 1], "text": [0, 0, 0, 0, 0]},
        "mixed": {"image": [0, 1, 1, 1, 0], "text": [1, 1, 0, 1, 1]},
    }
    scenarios = {name: {m: torch.tensor(v).bool() for m, v in shown.items()} for name, shown in shows.items()}
    logits = model.logits_by_availability(model.collate(samples), scenarios)
    for name, shown in shows.items():
        hidden = [{k: (None if k in shown and not shown[k][i] else v) for k, v in s.items()} for i, s in enumerate(samples)]
        torch.testing.assert_close(logits[name], model(model.collate(hidden)).logits)
    with pytest.raises(ValueError, match="scenario 'image missing' leaves sample 3"):
        model.logits_by_availability(model.collate(samples), {"image missing": {**scenarios["complete"], "image": ~scenarios["complete"]["image"]}})


def test_scenario_logits_batch_by_length_and_answer_in_the_order_given(image_text):
    """Evaluation sorts samples by text length to pad less; logits, labels and each sample's scenario mask must
    still belong to the sample they were given for."""
    from robustmm.training import make_loader, scenario_logits

    model = robustmm.build_model("cmpt", encoders=image_text, num_classes=3).eval()
    samples = make_samples(7)
    for i, sample in enumerate(samples):
        sample["text"] = " ".join(["dog"] * ((i * 5) % 7 + 1))  # lengths out of order
    order = list(make_loader(model, samples, 2, shuffle=False, group_by_length=True).sampler)
    assert order != sorted(order) and sorted(order) == list(range(7))
    shown = {"mixed": {"image": torch.tensor([1, 0, 1, 1, 0, 1, 1]).bool(), "text": torch.tensor([1, 1, 0, 1, 1, 0, 1]).bool()}}
    logits, labels = scenario_logits(model, samples, shown, batch_size=2)
    assert labels.tolist() == [s["label"] for s in samples]
    hidden = [{k: (None if k in shown["mixed"] and not shown["mixed"][k][i] else v) for k, v in s.items()}
              for i, s in enumerate(samples)]
    torch.testing.assert_close(logits["mixed"], model(model.collate(hidden)).logits)


@pytest.mark.parametrize("keep_dropout", [False, True])
def test_frozen_encoder_dropout_is_off_unless_asked_and_adapter_dropout_follows_the_mode(tiny_encoders, keep_dropout):
    encoders = {"text": {"name_or_path": tiny_encoders["text"], "keep_backbone_dropout": keep_dropout},
                "image": tiny_encoders["image"]}
    model = robustmm.build_model("cmpt", encoders=encoders, num_classes=3)
    for mode in (True, False, True):
        model.train(mode)
        text = model.encoders["text"].backbone
        own = [m.training for n, m in text.named_modules() if isinstance(m, torch.nn.Dropout) and "lora_" not in n]
        adapter = [m.training for n, m in text.named_modules() if isinstance(m, torch.nn.Dropout) and "lora_" in n]
        assert own and adapter
        assert set(own) == {mode and keep_dropout} and set(adapter) == {mode}


def test_a_method_and_its_plugins_get_one_availability_with_both_masks(tiny_encoders, monkeypatch):
    """`auxiliary_losses(features, availability, batch)` in the method and in a plug-in get the same object:
    `present` (what the samples have) and `visible` (what modality dropout left the model)."""
    from robustmm.availability import Availability

    encoders = {"image": tiny_encoders["image"], "text": tiny_encoders["text"]}
    model = robustmm.build_model("cmpt", encoders=encoders, num_classes=3, modality_dropout="leave_one_out",
                                 mwam=True).train()
    seen = []
    record = lambda self, features, availability, batch: seen.append(availability) or {}  # noqa: E731
    monkeypatch.setattr(type(model), "auxiliary_losses", record)
    monkeypatch.setattr(type(model.plugins["mwam"]), "auxiliary_losses", record)
    batch = model.collate(make_samples(4))
    dropped = False
    for _ in range(20):  # leave_one_out drops a modality in 2 of 3 steps
        seen.clear()
        model(batch)
        method, plugin = seen
        assert method is plugin and isinstance(method, Availability)
        assert all(torch.equal(method.present[m], batch.present[m]) for m in encoders)
        assert all(not (method.visible[m] & ~method.present[m]).any() for m in encoders)
        dropped |= any(not torch.equal(method.visible[m], method.present[m]) for m in encoders)
    assert dropped
