"""What the models show when run on the test samples: calibration, timing, fused features for t-SNE and the
image encoder's attention."""

from __future__ import annotations

import time

import numpy as np

from ..calibration import pattern_logits, probabilities, reliability
from .loading import ReportData, by_method, mean_or_none

TIMING_SAMPLES = 96
TSNE_SAMPLES = 150
ATTENTION_SAMPLES = 3
TOKENS_SHOWN_APART = 4
"""A token segment of up to this many tokens gets an attention panel per token, a longer one a panel for all."""


def without(sample: dict, hidden: str) -> dict:
    return {**sample, hidden: None}


def fused_features(model, samples: list[dict], hidden: str | None, batch_size: int = 64):
    """(summed class features, fused features) of `samples` with `hidden` removed: the sum of the visible
    modalities' class features, which is all a plain sum fusion has, and the feature the head reads."""
    import torch

    model.eval()
    plain, fused = [], []
    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            chunk = [without(s, hidden) if hidden else s for s in samples[start : start + batch_size]]
            output = model(model.collate(chunk))
            cls, visible = output.features.cls, output.availability.visible
            plain.append(sum(cls[m] * visible[m][:, None] for m in cls).float())
            fused.append(output.fused.float())
    return torch.cat(plain).numpy(), torch.cat(fused).numpy()


def tsne(points: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = max(2.0, min(30.0, (len(points) - 1) / 3))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)


def attention_maps(model, samples: list[dict], image: str) -> dict:
    """Attention of the image encoder's last layer, averaged over heads, from its class token and from the tokens
    in front of it to the patches, as patch grids: {"tokens": names, "maps": [samples, tokens, side, side]}. The
    tokens are named after the encoder's token segments (CMPT's `proxies`, MAP's `prompts<layer>`): a panel per
    token for a segment of up to `TOKENS_SHOWN_APART` tokens, else one for their mean. The encoder runs with eager
    attention for this (the fused kernels do not return the weights)."""
    import torch

    from ..encoders import EncoderContext

    encoder = model.encoders[image]
    base = encoder.backbone.get_base_model()
    captured = []  # (weights, the token segments in front of CLS at that layer) of each attention call

    def keep_weights(module, args, output):
        if isinstance(output, tuple) and len(output) > 1 and torch.is_tensor(output[1]) and output[1].dim() == 4:
            captured.append((output[1].detach(), encoder.token_segments))

    attention_modules = [m for m in base.modules() if type(m).__name__.endswith("Attention")]
    hooks = [m.register_forward_hook(keep_weights) for m in attention_modules]
    previous = base.config._attn_implementation
    base.set_attn_implementation("eager")
    model.eval()
    try:
        with torch.inference_mode():
            batch = model.collate([{m: (s[m] if m == image else None) for m in model.modalities} for s in samples])
            encoder(batch.inputs[image], EncoderContext(batch.present))  # the pattern "image alone", for prompts
    finally:
        base.set_attn_implementation(previous)
        for hook in hooks:
            hook.remove()
    weights, segments = captured[-1]
    weights = weights.float().mean(1)  # [B, T, T], the last layer
    has_cls = getattr(encoder, "pooling", "cls") == "cls"
    front = sum(count for _, count in segments)
    panels = [("class token", [front])] if has_cls else []
    offset = 0
    for name, count in segments:
        if count <= TOKENS_SHOWN_APART:
            panels += [(name if count == 1 else f"{name} {i + 1}", [offset + i]) for i in range(count)]
        else:
            panels.append((f"{name} (mean of {count})", list(range(offset, offset + count))))
        offset += count
    start = front + int(has_cls)
    side = int(round((weights.shape[-1] - start) ** 0.5))
    maps = torch.stack([weights[:, rows, start:].mean(1) for _, rows in panels], 1)
    return {"tokens": [name for name, _ in panels], "maps": maps.reshape(len(samples), len(panels), side, side).numpy()}


def seconds_per_1000(model, samples: list[dict], hidden: str | None, batch_size: int = 32) -> float:
    from ..predict import batch_logits

    chunk = [without(s, hidden) if hidden else s for s in samples[:TIMING_SAMPLES]]
    batch_logits(model, chunk[:4], "32-true")  # warm-up
    start = time.perf_counter()
    for first in range(0, len(chunk), batch_size):
        batch_logits(model, chunk[first : first + batch_size], "32-true")
    return 1000 * (time.perf_counter() - start) / len(chunk)


def analyse_models(data: ReportData, focus: str) -> dict:
    """Calibration and timing of every method, t-SNE and attention of the first run of the `focus` method: the
    parts that run the models on the test samples."""
    modalities = list(data.modalities)
    multilabel = data.runs[0].model.config.multilabel
    found: dict = {"calibration": [], "diagrams": {}, "compute": []}
    for method, runs in by_method(data.runs).items():
        for run in runs:
            model = run.model
            patterns = run.pattern_logits or pattern_logits(model, data.samples)
            for pattern, (logits, truth) in patterns.items():
                before = reliability(probabilities(logits, multilabel), truth, multilabel)
                row = {"method": method, "seed": run.seed, "pattern": pattern, "samples": len(truth),
                       "ece": before["ece"]}
                if pattern in run.calibration:
                    after = probabilities(logits, multilabel, run.calibration[pattern])
                    row.update(temperature=run.calibration[pattern],
                               ece_calibrated=reliability(after, truth, multilabel)["ece"])
                found["calibration"].append(row)
                if run is runs[0]:
                    found["diagrams"].setdefault(method, {})[pattern] = before
        first = runs[0]
        counts = first.model.trainable_parameter_counts()
        timing = {"complete": seconds_per_1000(first.model, data.samples, None)}
        if len(modalities) > 1:
            timing.update({f"{m} missing": seconds_per_1000(first.model, [s for s in data.samples if any(
                s[o] is not None for o in modalities if o != m)], m) for m in modalities})
        found["compute"].append({"method": method, "parameters": counts,
                                 "train_seconds": mean_or_none([run.train_seconds for run in runs]),
                                 "seconds_per_1000": timing})
    focus = next(run for run in data.runs if run.method == focus)
    found["focus"] = f"{focus.method} (seed {focus.seed})"
    if len(modalities) > 1 and not multilabel:
        complete = [s for s in data.samples if all(s[m] is not None for m in modalities)][:TSNE_SAMPLES]
        truth = np.array([s["label"] for s in complete])
        panels = {"complete": tsne(fused_features(focus.model, complete, None)[1])}
        for hidden in modalities:
            plain, fused = fused_features(focus.model, complete, hidden)
            panels[f"{hidden} missing, class features summed"] = tsne(plain)
            panels[f"{hidden} missing, fused"] = tsne(fused)
        found["tsne"] = (panels, truth)
    images = [m for m, kind in data.modalities.items() if kind == "image"]
    if images:
        chosen = data.attention_samples or [s for s in data.samples if s[images[0]] is not None][:ATTENTION_SAMPLES]
        if chosen:
            found["attention"] = ([s[images[0]] for s in chosen], attention_maps(focus.model, chosen, images[0]))
    return found
