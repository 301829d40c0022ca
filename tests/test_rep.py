"""REP (REplay Prompting): buffer selection per availability pattern, generation across depth, replay, the
orthogonality loss, and the model over tiny encoders (three modalities, training, saving)."""

import pytest
import torch

import robustmm
import robustmm.availability
from robustmm.encoders import EncoderContext
from robustmm.methods import rep
from robustmm.methods.rep import orthogonality_loss
from robustmm.tiny import save_tiny_encoder
from robustmm.contract import make_samples

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def image_text(tiny_encoders):
    return {"image": tiny_encoders["image"], "text": tiny_encoders["text"]}


@pytest.fixture
def three(tiny_encoders):
    return {m: tiny_encoders[m] for m in ("image", "text", "audio")}


def build(encoders, **options):
    return robustmm.build_model("rep", encoders=encoders, num_classes=3, **options)


def every_pattern_samples(modalities):
    """One sample per non-empty subset of `modalities` (with audio when it is one of them)."""
    patterns = robustmm.availability.patterns(modalities)
    samples = make_samples(len(patterns), with_audio="audio" in modalities)
    for sample, pattern in zip(samples, patterns):
        for m in modalities:
            if m not in pattern:
                sample[m] = None
    return samples


def test_gate_starts_at_half_and_mixes_generated_and_previous_prompts(image_text):
    model = build(image_text).eval()
    assert "a = 0.5 at the start" in rep.__doc__
    assert model.generators.gate.item() == 0.5
    buffers = model.selected_private(torch.tensor([0, 1, 2]))
    prompts = model.generators.private_prompts(buffers)
    assert len(prompts) == model.depth == 2  # depth 6 clamped to the tiny encoders' 2 layers
    joined = torch.cat([prompts[0]["image"], prompts[0]["text"]], -1)
    for m in ("image", "text"):
        expected = 0.5 * model.generators.layers[1][m](joined) + 0.5 * prompts[0][m]
        torch.testing.assert_close(prompts[1][m], expected)
    assert build(image_text, gate_init=0.3).generators.gate.item() == pytest.approx(0.3)


def test_orthogonality_loss_is_zero_for_orthogonal_buffers_and_positive_otherwise():
    basis = torch.linalg.qr(torch.randn(16, 16))[0]
    private, shared = basis[:4] * 3.0, basis[4:8] * 0.5  # orthogonal rows, any lengths
    assert orthogonality_loss(private, shared).item() == pytest.approx(0.0, abs=1e-10)
    assert orthogonality_loss(private, private).item() > 0.2
    assert orthogonality_loss(torch.randn(3, 4, 16), torch.randn(3, 4, 16)).item() > 0
    # identical unit rows: every cosine is 1
    same = torch.ones(4, 16)
    assert orthogonality_loss(same, same).item() == pytest.approx(1.0)


def test_orthogonality_loss_enters_the_objective_with_its_weight(image_text):
    samples = make_samples(3)
    model = build(image_text).eval()
    out = model(model.collate(samples))
    assert out.loss_weights == {"orth": 0.1} and out.losses["orth"] > 0
    torch.testing.assert_close(out.loss, out.task_loss + 0.1 * out.losses["orth"])
    out.losses["orth"].backward()
    assert model.private["image"].grad.abs().sum() > 0 and model.shared.grad.abs().sum() > 0
    assert build(image_text, orth_weight=0.0).eval()(model.collate(samples)).losses == {}


def test_each_availability_pattern_selects_its_buffers(image_text):
    model = build(image_text).eval()
    assert model.patterns == [("image", "text"), ("image",), ("text",)]
    assert model.shared.shape[0] == 3
    # copies per pattern, columns image, text: 0 = present, 1 = missing
    assert model.private_copy.tolist() == [[0, 0], [0, 1], [1, 0]]
    context = EncoderContext({"image": torch.tensor([True, True, False]), "text": torch.tensor([True, False, True])})
    assert model.pattern_index(context).tolist() == [0, 1, 2]
    selected = model.selected_private(model.pattern_index(context))
    torch.testing.assert_close(selected["text"][1], model.private["text"][1])  # image-only: text's missing copy
    torch.testing.assert_close(selected["image"][2], model.private["image"][1])  # text-only: image's missing copy
    torch.testing.assert_close(selected["image"][0], model.private["image"][0])

    batch = model.collate(make_samples(2))
    scenarios = {
        "complete": {"image": torch.tensor([True, True]), "text": torch.tensor([True, True])},
        "image_only": {"image": torch.tensor([True, True]), "text": torch.tensor([False, False])},
    }
    logits = model.logits_by_availability(batch, scenarios)
    assert not torch.allclose(logits["complete"], logits["image_only"])
    visible = {m: s.clone() for m, s in scenarios["image_only"].items()}
    image_only = model.encode(batch, visible).cls["image"]
    complete = model.encode(batch, scenarios["complete"]).cls["image"]
    assert not torch.allclose(image_only, complete)  # the image encoding itself follows the pattern
    # The absent text's missing copy feeds the image's prompts; the complete pattern does not read it.
    with torch.no_grad():
        model.private["text"][1] += 1.0
    changed = model.logits_by_availability(batch, scenarios)
    torch.testing.assert_close(changed["complete"], logits["complete"])
    assert not torch.allclose(changed["image_only"], logits["image_only"])


def test_replay_at_init_leaves_the_forward_pass_unchanged(image_text):
    samples = make_samples(4)
    samples[1]["text"] = None
    samples[2]["image"] = None
    with_replay, without = build(image_text).eval(), build(image_text, replay=False).eval()
    assert without.replay_layers == {} and with_replay.replay_layers == {"image": 1, "text": 1}
    without.load_state_dict(with_replay.state_dict(), strict=False)
    batch = with_replay.collate(samples)
    reference = with_replay(batch).logits
    torch.testing.assert_close(reference, without(batch).logits, rtol=0, atol=0)
    with torch.no_grad():
        with_replay.replay["image"].gamma.fill_(1.0)
    assert not torch.allclose(with_replay(batch).logits, reference)


def test_replay_reads_the_private_outputs_of_the_layers_before_k(tmp_path):
    encoders = {
        "image": save_tiny_encoder("image", tmp_path / "image", num_layers=4),
        "text": save_tiny_encoder("text", tmp_path / "text", num_layers=4),
    }
    model = build(encoders, depth=2, buffer_length=3).eval()
    assert model.replay_layers == {"image": 2, "text": 2}  # min(D, L - 1)
    assert build(encoders, replay_layer=9).replay_layers == {"image": 3, "text": 3}  # clamped to the last layer
    caches = []
    replay = model.replay["image"]
    original = replay.forward
    replay.forward = lambda cache: caches.append([c.clone() for c in cache]) or original(cache)
    batch = model.collate(make_samples(2))
    context = EncoderContext(batch.present)
    out = model.encoders["image"](batch.inputs["image"], context, output_hidden_states=True)
    (cache,) = caches
    assert len(cache) == 2
    for layer, cached in enumerate(cache):  # the output of layer l is the input of layer l + 1
        torch.testing.assert_close(cached, out.hidden_states[layer + 1][:, :3])


def test_three_modalities_work_for_every_availability_pattern(three):
    model = build(three).eval()
    assert len(model.patterns) == 7 and model.fused_size() == 96
    samples = every_pattern_samples(["image", "text", "audio"])
    batch = model.collate(samples)
    out = model(batch)
    assert torch.isfinite(out.logits).all() and out.logits.shape == (7, 3)
    for i, pattern in enumerate(model.patterns):
        for j, m in enumerate(model.modalities):
            part = out.fused[i, 32 * j : 32 * (j + 1)]
            assert (part.abs().sum() > 0) == (m in pattern)
    # Scenarios: a scenario's logits are those of a plain pass over the samples with the hidden modalities removed.
    complete = model.collate(make_samples(3, with_audio=True))
    scenarios = {
        name: {m: torch.full((3,), m in pattern) for m in model.modalities}
        for name, pattern in (("no_text", ("image", "audio")), ("audio_only", ("audio",)))
    }
    by_scenario = model.logits_by_availability(complete, scenarios)
    for name, shown in scenarios.items():
        reduced = [{k: (v if k not in shown or shown[k][0] else None) for k, v in s.items()}
                   for s in make_samples(3, with_audio=True)]
        torch.testing.assert_close(by_scenario[name], model(model.collate(reduced)).logits)


def test_encoders_of_different_widths(tiny_encoders, tmp_path):
    encoders = {"image": tiny_encoders["image"], "text": save_tiny_encoder("text", tmp_path / "text", hidden_size=48)}
    model = build(encoders).eval()
    assert model.fused_size() == 80 and model.shared.shape[-1] == 32  # shared width: the narrowest encoder's
    assert model.generators.layers[0]["text"].fc1.in_features == 80
    samples = make_samples(3)
    samples[1]["text"], samples[2]["image"] = None, None
    out = model(model.collate(samples))
    assert torch.isfinite(out.logits).all() and out.fused.shape == (3, 80)
    assert out.fused[1, 32:].abs().sum() == 0 and out.fused[2, :32].abs().sum() == 0


def test_a_sample_is_encoded_alike_alone_and_beside_a_longer_text(image_text):
    model = build(image_text).eval()
    samples = make_samples(2)
    samples[1]["text"] = "a red dog with a green cat and a blue bird on the house in the night"
    torch.testing.assert_close(model(model.collate(samples)).logits[0], model(model.collate(samples[:1])).logits[0])


def test_short_training_stays_finite(image_text):
    model = build(image_text, modality_dropout="subsets")
    groups = model.param_groups(lr=1e-2, weight_decay=0.02)
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    for parameter in (model.generators.gate, model.replay["image"].gamma, model.head.bias,
                      model.generators.layers[0]["image"].input_norm.weight):
        assert id(parameter) in no_decay
    assert id(model.private["image"]) not in no_decay and id(model.head.weight) not in no_decay
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    optimizer = torch.optim.AdamW(groups, lr=1e-2)
    samples = make_samples(6)
    samples[0]["text"] = samples[1]["image"] = None
    batch = model.collate(samples)
    before = model.private["text"].detach().clone()
    for _ in range(3):
        optimizer.zero_grad()
        loss = model(batch).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(before, model.private["text"])
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model(batch).logits).all()


def test_save_and_load_give_identical_logits(image_text, tmp_path):
    model = build(image_text, train_dynamic_queries=False)
    optimizer = torch.optim.AdamW(model.param_groups(1e-2, 0.02), lr=1e-2)
    samples = make_samples(4)
    samples[2]["image"] = None
    batch = model.collate(samples)
    model(batch).loss.backward()
    optimizer.step()
    model.eval()
    model.save_pretrained(tmp_path)
    saved = model.trainable_state_dict()
    assert "dynamic.image.queries" in saved and "private_copy" not in saved
    loaded = robustmm.load_model(tmp_path).eval()
    torch.testing.assert_close(loaded(batch).logits, model(batch).logits, rtol=0, atol=0)


def test_trainable_parameters_per_part(image_text):
    counts = build(image_text).trainable_parameter_counts()
    n, d, hidden = 12, 32, 256
    # input LN, fc1, LN, fc2, skip
    generator = 2 * 2 * d + (2 * d + 1) * hidden + 2 * hidden + (hidden + 1) * d + (2 * d + 1) * d
    projection = (d + 1) * hidden + 2 * hidden + (hidden + 1) * d  # no input LN, identity skip
    assert counts["private"] == 2 * 2 * n * d
    assert counts["shared"] == 3 * n * d
    assert counts["generators"] == 2 * 2 * generator + 2 * projection + 1
    assert counts["dynamic"] == 2 * (4 * d * d + 4 * d)
    assert counts["replay"] == 2 * (1 + 2 * d + 1)
    assert counts["head"] == 2 * d * 3 + 3
    trained = build(image_text, train_dynamic_queries=True, dynamic_tokens=True).trainable_parameter_counts()
    assert trained["dynamic"] == counts["dynamic"] + 2 * 3 * n * d
    assert "dynamic" not in build(image_text, dynamic_tokens=False).trainable_parameter_counts()


@pytest.mark.parametrize(
    "option, value, message",
    [("buffer_length", 0, "buffer_length must be at least 1"), ("replay_layer", 0, "replay_layer must be None or"),
     ("generator_dropout", 1.0, "generator_dropout must be in"), ("orth_weight", -1.0, "orth_weight")],
)
def test_options_are_checked(image_text, option, value, message):
    with pytest.raises(ValueError, match=message):
        build(image_text, **{option: value})
    with pytest.raises(ValueError, match="at least two modalities"):
        build({"image": image_text["image"]})
