"""REP: REplay Prompting (Zhu, Liu, Ba, Xue, Zhang, "Buffer replay enhances the robustness of multimodal learning
under missing-modality", arXiv 2511.23070).

Only the abstract of the paper could be read; the equations below follow the anonymised code of its earlier version
("REP: Replay-Enhance Prompting", github.com/AnonymousUser2313/REP, `clip/modules/clip_dynamic_memory.py` and
`vision_transformer_memory.py`), on two CLIP towers. There, each encoder gets n = 12 prompt tokens of three kinds in
front of its input, `[private (n) | shared (n) | dynamic (n) | CLS, tokens]`, chosen per missing pattern:

- Private buffers with task-aware initialisation, one "present" and one "missing" copy per modality:
  `B_m = repeat(e_m, n) + 0.2 * eps / ||eps||` (noise normalised per token), where e_m is the text tower's end-token
  embedding (CLIP's EOT) or the image tower's class embedding. A sample uses the present copy of the modalities it
  has and the missing copy of the others.
- Residual-bypass generation across the first D layers (D = 6), cross-modal: with
  `g(x) = W2 Dropout0.1(GELU(LN_256(W1 x))) + W_skip x` (W_skip the identity where widths agree),
      P^m_0 = g^m_0(LN([B_1; ...; B_M])),
      P^m_l = a * g^m_l(LN([P^1_{l-1}; ...; P^M_{l-1}])) + (1 - a) * P^m_{l-1},   l = 1 .. D-1,
  one LayerNorm per layer and target modality, and a = 0.5 at the start: one learnable scalar shared by all layers
  (the "residual bypass"). P^m_l replaces the private slots of the hidden states entering layer l of encoder m.
- Shared buffers, one per availability pattern: `S = eps / ||eps|| + 0.2 * eps'` of width 512, projected into each
  encoder by `h^m` (the same form as g, without an input LayerNorm) and inserted at layer 0 only; later layers
  inherit them.
- Dynamic tokens: per pattern, fixed queries Q ~ N(0, 0.02^2) (not parameters in the code), attended over the
  input tokens X_0 by one-head attention at layer 0, `Dyn = MHA(Q, X_0, X_0)`; later layers inherit them.
- Fusion and head: `[f_1; ...; f_M]` with zeros for a missing modality (the code zeroes its half), `Linear(sum d, C)`:
  the `concat` fusion, REP's default; `fusion` chooses another (the fusion is generic).

The code has neither replay nor an auxiliary loss. The abstract and the repository's figure 4 describe the replay
(early-layer outputs cached in buffers, replayed at a layer k); a third-party summary of the paper names
"orthogonality constraints" between private and shared buffers. Neither form is given; these are completions:
- Replay at layer k: the private-slot outputs of the layers l < k are cached, `C_l` (the hidden states entering
  layer l + 1 at the private slots, no stop-gradient), and replayed into the hidden states entering layer k:
      R = sum_{l<k} softmax(w)_l C_l,     P_k <- P_k + gamma * LN(R),
  with w = 0 and gamma = 0 at the start, so that training starts exactly at the code's model.
- Orthogonality of private and shared buffers (the abstract's "private-shared feature decoupling"):
      L_orth = sum_m mean_p (1/n^2) ||P^_m Sh_m^T||_F^2,    L = L_task + lambda * L_orth,  lambda = 0.1,
  with rows normalised to unit length (P^, Sh^), over every availability pattern p.

Choices where the sources are silent, or the port to this library's encoders needs one (each an option where it
is one):
- Any number of modalities M >= 2, each with its own encoder of its own width: each generator maps the
  concatenation of all M private buffers to its modality's width, and there are 2^M - 1 shared buffers (one per
  availability pattern, complete first). Every modality has a present and a missing private copy.
- A missing modality's encoder is not run (the code runs it and zeroes its feature); its missing private copy still
  feeds the generators of the other modalities, which is all the code's run contributes to the prediction.
- Task-aware initialisation (`task_aware_init`): text from the tokenizer's separator / end token embedding (BERT:
  [SEP]; else the end-of-sequence token, else CLS), image, audio and video from the encoder's class embedding
  (`embeddings.cls_token`, CLIP's `class_embedding`); an encoder without one, or `task_aware_init=False`, gets the
  shared buffers' random initialisation. `init_noise` is the 0.2. The buffers reach an encoder only through the
  generators, whose input LayerNorm makes their overall scale immaterial.
- Layer-0 prompts are prefix tokens after the embedding module (`add_prefix`), deeper ones replace the private
  slots (`add_layer_edit`); in an encoder that normalises after its embedding module (CLIP's vision tower), the
  layer-0 private and shared prompts pass through that LayerNorm, where the code inserts them after it.
- Depth (`depth`, D = 6) is clamped to the shallowest encoder. Replay layer (`replay_layer`): by default
  min(D, L_m - 1) for an encoder of L_m layers, so that the cache holds the outputs of every prompted layer; a
  given layer is clamped to L_m - 1; an encoder of one layer has nothing to replay. Replay (`replay`) acts on the
  private slots of each encoder separately, with its own w, LayerNorm and gamma: the completion's replay of the
  shared slots by their mean over modalities would mix hidden states of encoders that run one after the other on
  different rows and widths, so it is left out. Where k < D, P_k is inserted first and R added to it.
- Orthogonality is measured where both buffers act, in each encoder's token space: the layer-0 private prompt
  P^m_0 against the projected shared prompt h^m(S) of the same pattern (`orth_weight`, 0 disables it). The
  MSE arrow of the repository's figure 4 is not implemented.
- Shared width (`shared_size`): the code's 512 is the text tower's width; here it defaults to the narrowest
  encoder's width. Generator hidden size 256 and dropout 0.1 (`generator_hidden`, `generator_dropout`), gate
  start (`gate_init`, 0.5), buffer length (`buffer_length`, n = 12, the code's 36 prompt tokens over three
  kinds).
- Dynamic tokens (`dynamic_tokens`) attend only to a text's real tokens (the code attends to CLIP's padding too,
  which here would make a sample's prompts depend on the longest text of its batch). Their queries are fixed as in
  the code (which draws them anew at each start; here they are saved with the model), or trained
  (`train_dynamic_queries`).
- Learning rate: REP's modules train at 0.1x the run's learning rate (`module_lr_scale`, see the option). The
  code trains everything at 1e-2 (AdamW, betas 0.9/0.98, weight decay 2e-2, batch 256 by accumulation, 20
  epochs, 10% warm-up then linear decay); the shipped image-text paper configs give REP those settings
  (`by_method.rep`, with `module_lr_scale: 1`).
- Training patterns: the code trains on the protocol's missing data (70% missing). Where the training data is
  complete (the demo), the missing copies and the pattern buffers would never be trained, so `modality_dropout`
  defaults to `leave_one_out`; `none` trains on the data as given.
- Frozen encoders, as in the code (`adapter="none"`), whose final LayerNorms train (`train_backbone`: CLIP's
  `final_layer_norm` and `post_layernorm`, the code's ln_final and ln_post; ViT's, AST's and Dinov2's final
  `layernorm`; BERT-style towers end without one). The code's projections (CLIP's text and visual `proj`) are not
  part of the towers robustmm loads, so the features are read before them. Optimiser groups: no weight decay on
  biases, LayerNorm weights, the gate a, gamma and the replay weights w (every parameter of at most one dimension),
  as the code excludes biases and LayerNorms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..adapters import AdapterConfig
from .. import availability
from ..encoders import EncoderContext
from ..model import Features, ModalityDropoutChoice, ModelConfig, MultimodalModel
from ..registry import register_method

PRESENT, MISSING = 0, 1
"""Index of a private buffer's copy for a modality that the sample has / lacks."""


@dataclass
class REPConfig(ModelConfig):
    modality_dropout: ModalityDropoutChoice = "leave_one_out"
    fusion: str = "concat"
    """The code concatenates the modalities' features, a missing one's zero (`concat`)."""
    module_lr_scale: float = 0.1
    """REP's buffers, generators, dynamic tokens and replay train at 0.1x the run's learning rate: 1e-3 under the
    demo's 1e-2, where the full rate collapsed the text-only pattern to one class (image missing: 0.10 against
    0.52; batches of 32). The code trains them at 1e-2 with batches of 256: `module_lr_scale=1` at lr 1e-2."""
    adapter: AdapterConfig = field(default_factory=lambda: AdapterConfig(type="none"))
    """REP's code freezes CLIP but for its final norms and projections: no adapter."""
    train_backbone: list[str] = field(default_factory=lambda: ["final_layer_norm", "post_layernorm", "layernorm"])
    """The towers' final LayerNorms, as the code trains CLIP's ln_final and ln_post."""
    buffer_length: int = 12
    """Tokens of each kind (private, shared, dynamic) in front of every encoder's input."""
    depth: int = 6
    """Layers whose private slots receive generated buffers (D), at most the shallowest encoder's depth."""
    replay: bool = True
    replay_layer: int | None = None
    """Layer k that the cached private outputs of layers < k are replayed into; None: min(depth, layers - 1)."""
    orth_weight: float = 0.1
    """lambda of L_orth between private and shared prompts; 0 turns the loss off."""
    dynamic_tokens: bool = True
    train_dynamic_queries: bool = False
    task_aware_init: bool = True
    init_noise: float = 0.2
    gate_init: float = 0.5
    generator_hidden: int = 256
    generator_dropout: float = 0.1
    shared_size: int | None = None
    """Width of the shared buffers before each encoder's projection; None: the narrowest encoder's width."""

    def __post_init__(self):
        super().__post_init__()
        if len(self.encoders) < 2:
            raise ValueError("REP needs at least two modalities")
        for name in ("buffer_length", "depth", "generator_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.replay_layer is not None and self.replay_layer < 1:
            raise ValueError(f"replay_layer must be None or at least 1 (no layer precedes 0), got {self.replay_layer}")
        if self.shared_size is not None and self.shared_size < 1:
            raise ValueError(f"shared_size must be None or at least 1, got {self.shared_size}")
        if self.orth_weight < 0 or self.init_noise < 0:
            raise ValueError(f"orth_weight and init_noise must be >= 0, got {self.orth_weight}, {self.init_noise}")
        if not 0 <= self.generator_dropout < 1:
            raise ValueError(f"generator_dropout must be in [0, 1), got {self.generator_dropout}")


class ResidualGenerator(nn.Module):
    """`g(x) = W2 Dropout(GELU(LN(W1 x))) + W_skip x` (the code's ResidualDynamicNet), after an optional LN(x)."""

    def __init__(self, in_size: int, out_size: int, hidden: int, dropout: float, input_norm: bool):
        super().__init__()
        self.input_norm = nn.LayerNorm(in_size) if input_norm else nn.Identity()
        self.fc1 = nn.Linear(in_size, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, out_size)
        self.skip = nn.Linear(in_size, out_size) if in_size != out_size else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_norm(x)
        return self.fc2(self.dropout(F.gelu(self.norm(self.fc1(x))))) + self.skip(x)


class BufferGenerators(nn.Module):
    """The cross-modal private prompts of every layer < D, and each encoder's projection of the shared buffers."""

    def __init__(self, widths: dict[str, int], depth: int, shared_size: int, hidden: int, dropout: float, gate: float):
        super().__init__()
        total = sum(widths.values())
        self.layers = nn.ModuleList(
            nn.ModuleDict({m: ResidualGenerator(total, d, hidden, dropout, input_norm=True) for m, d in widths.items()})
            for _ in range(depth)
        )
        self.shared = nn.ModuleDict(
            {m: ResidualGenerator(shared_size, d, hidden, dropout, input_norm=False) for m, d in widths.items()}
        )
        self.gate = nn.Parameter(torch.tensor(float(gate)))

    def private_prompts(self, buffers: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """P^m_l for l < D from the selected private buffers (modality -> [..., n, d_m], in the model's order)."""
        first, *rest = self.layers
        joined = torch.cat(list(buffers.values()), dim=-1)
        prompts = [{m: g(joined) for m, g in first.items()}]
        for layer in rest:
            previous = prompts[-1]
            joined = torch.cat(list(previous.values()), dim=-1)
            prompts.append({m: self.gate * g(joined) + (1 - self.gate) * previous[m] for m, g in layer.items()})
        return prompts


class DynamicTokens(nn.Module):
    """One encoder's dynamic tokens: per-pattern queries attending to its layer-0 input tokens."""

    def __init__(self, patterns: int, length: int, width: int, trainable: bool):
        super().__init__()
        queries = torch.randn(patterns, length, width) * 0.02
        if trainable:
            self.queries = nn.Parameter(queries)
        else:
            self.register_buffer("queries", queries)
        self.attention = nn.MultiheadAttention(width, 1, batch_first=True)

    def forward(self, pattern: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        padding = None if mask is None else ~mask.bool()
        queries = self.queries[pattern].to(tokens.dtype)
        return self.attention(queries, tokens, tokens, key_padding_mask=padding, need_weights=False)[0]


class Replay(nn.Module):
    """`gamma * LN(sum_l softmax(w)_l C_l)` over the cached private-slot outputs of the layers before k."""

    def __init__(self, layers: int, width: int):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(layers))
        self.norm = nn.LayerNorm(width)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, cache: list[torch.Tensor]) -> torch.Tensor:
        weights = self.weights.softmax(0)
        replayed = sum(w * c for w, c in zip(weights, cache))
        return self.gamma * self.norm(replayed)


def orthogonality_loss(private: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """`(1/n^2) ||P^ Sh^T||_F^2` for [..., n, d] token sets with unit-length rows, averaged over leading dims."""
    private, shared = F.normalize(private.float(), dim=-1), F.normalize(shared.float(), dim=-1)
    return (private @ shared.transpose(-1, -2)).pow(2).mean()


def replace_slots(hidden: torch.Tensor, slots: slice, tokens: torch.Tensor) -> torch.Tensor:
    return torch.cat([hidden[:, : slots.start], tokens.to(hidden.dtype), hidden[:, slots.stop :]], dim=1)


def random_buffer(length: int, width: int, noise: float) -> torch.Tensor:
    """The code's generic initialisation: unit-length random tokens plus `noise` * N(0, 1)."""
    tokens = torch.randn(length, width)
    return F.normalize(tokens, dim=-1) + noise * torch.randn(length, width)


@register_method("rep")
class ReplayPrompting(MultimodalModel):
    """REP: private and shared prompt buffers per missing pattern, generated across depth and replayed deeper."""

    config_class = REPConfig
    departures = (
        "replay and the orthogonality loss are completions: the code has neither (replay=false, orth_weight=0)",
        "its modules train at 0.1x the run's lr (code: 1e-2 for everything; module_lr_scale=1 with lr 1e-2)",
        "CLIP's projections are not loaded: features are read before them (the code trains both)",
        "modality_dropout=leave_one_out trains the missing copies on complete data (code: none)",
    )
    encodes_by_availability = True

    def build(self) -> None:
        c, n = self.config, self.config.buffer_length
        self.patterns = availability.patterns(self.modalities)
        copies = [[PRESENT if m in p else MISSING for m in self.modalities] for p in self.patterns]
        self.register_buffer("private_copy", torch.tensor(copies), persistent=False)  # [patterns, M]
        self.depth = min(c.depth, *(e.num_layers for e in self.encoders.values()))
        shared_size = c.shared_size or min(self.hidden_sizes.values())

        self.private = nn.ParameterDict(
            {m: nn.Parameter(torch.stack([self.private_init(m), self.private_init(m)])) for m in self.modalities}
        )
        self.shared = nn.Parameter(torch.stack([random_buffer(n, shared_size, c.init_noise) for _ in self.patterns]))
        self.generators = BufferGenerators(
            self.hidden_sizes, self.depth, shared_size, c.generator_hidden, c.generator_dropout, c.gate_init
        )
        if c.dynamic_tokens:
            patterns, trainable = len(self.patterns), c.train_dynamic_queries
            self.dynamic = nn.ModuleDict(
                {m: DynamicTokens(patterns, n, d, trainable) for m, d in self.hidden_sizes.items()}
            )
        layers = {m: self.replay_layer(m) for m in self.modalities}
        self.replay_layers = {m: k for m, k in layers.items() if k >= 1} if c.replay else {}
        self.replay = nn.ModuleDict({m: Replay(k, self.hidden_sizes[m]) for m, k in self.replay_layers.items()})

        self._calls: dict[str, dict] = {}
        for m, encoder in self.encoders.items():
            encoder.register_forward_pre_hook(self._start_call(m), with_kwargs=True)
            encoder.register_forward_hook(self._end_call(m), always_call=True)
            if c.dynamic_tokens:
                encoder.add_prefix("dynamic", n, lambda context, m=m: self.zeros(len(context), n, self.hidden_sizes[m]))
                encoder.add_layer_edit(0, self._dynamic_edit(m))
            encoder.add_prefix("shared", n, lambda context, m=m: self.shared_prompts(m, self._pattern(m, context)))
            encoder.add_prefix("private", n, lambda context, m=m: self._call(m, context)["private"][0])
            for layer in range(1, max(self.depth - 1, self.replay_layers.get(m, 0)) + 1):
                encoder.add_layer_edit(layer, self._layer_edit(m, layer))

    # ----- buffers ---------------------------------------------------------------------------------------------

    def private_init(self, modality: str) -> torch.Tensor:
        """[n, d]: the task-aware token repeated, plus `init_noise` times a unit-length random vector per token."""
        c, n, d = self.config, self.config.buffer_length, self.hidden_sizes[modality]
        token = self.task_token(modality) if c.task_aware_init else None
        if token is None:
            return random_buffer(n, d, c.init_noise)
        noise = F.normalize(torch.randn(n, d), dim=-1)
        return token.detach().float().reshape(1, d).repeat(n, 1) + c.init_noise * noise

    def task_token(self, modality: str) -> torch.Tensor | None:
        """The text encoder's separator / end token embedding, or another encoder's class embedding, if any."""
        encoder = self.encoders[modality]
        base = encoder.backbone.get_base_model()
        if encoder.kind == "text":
            tokenizer = self.collator.processors[modality].tokenizer
            ids = (tokenizer.sep_token_id, tokenizer.eos_token_id, tokenizer.cls_token_id)
            token_id = next((i for i in ids if i is not None), None)
            return None if token_id is None else base.get_input_embeddings().weight[token_id]
        for name in ("cls_token", "class_embedding"):
            if isinstance(getattr(base.embeddings, name, None), torch.Tensor):
                return getattr(base.embeddings, name)
        return None

    def replay_layer(self, modality: str) -> int:
        """k for one encoder: the configured layer or min(D, L - 1), clamped to its last layer (0: no replay)."""
        last = self.encoders[modality].num_layers - 1
        return min(self.config.replay_layer or self.depth, last)

    def pattern_index(self, context: EncoderContext) -> torch.Tensor:
        """[n] indices into `self.patterns`; a modality the context does not mention counts as missing."""
        device = self.private_copy.device
        return availability.pattern_index({m: v.to(device) for m, v in context.visible.items()}, self.modalities)

    def selected_private(self, pattern: torch.Tensor) -> dict[str, torch.Tensor]:
        """Modality -> [n_rows, n, d_m]: the present or missing copy of each private buffer, per row's pattern."""
        copy = self.private_copy[pattern]
        return {m: self.private[m][copy[:, i]] for i, m in enumerate(self.modalities)}

    def shared_prompts(self, modality: str, pattern: torch.Tensor) -> torch.Tensor:
        """[n_rows, n, d_m]: each row's shared buffer, projected into the encoder by h^m."""
        return self.generators.shared[modality](self.shared[pattern])

    def auxiliary_losses(self, features: Features, availability, batch) -> dict[str, tuple[torch.Tensor, float]]:
        if not self.config.orth_weight:
            return {}
        every = torch.arange(len(self.patterns), device=self.private_copy.device)
        private = self.generators.private_prompts(self.selected_private(every))[0]
        loss = sum(orthogonality_loss(private[m], self.shared_prompts(m, every)) for m in self.modalities)
        return {"orth": (loss, self.config.orth_weight)}

    # ----- what the encoders call ------------------------------------------------------------------------------

    def _start_call(self, modality: str):
        """Before an encoder runs: a fresh per-call state with its inputs' token mask (the dynamic tokens' keys)."""

        def hook(module, args, kwargs):
            inputs = args[0] if args else kwargs["inputs"]
            self._calls[modality] = {"mask": inputs.get("attention_mask")}

        return hook

    def _end_call(self, modality: str):
        """After an encoder runs (or fails): drop the call's state and the graph it holds."""

        def hook(module, args, output):
            self._calls.pop(modality, None)

        return hook

    def _call(self, modality: str, context: EncoderContext) -> dict:
        """This call's state: the rows' patterns, their private prompts of every layer, the replay cache."""
        state = self._calls[modality]
        if "private" not in state:
            pattern = self.pattern_index(context)
            prompts = self.generators.private_prompts(self.selected_private(pattern))
            state.update(pattern=pattern, private=[p[modality] for p in prompts], cache=[])
        return state

    def _pattern(self, modality: str, context: EncoderContext) -> torch.Tensor:
        return self._call(modality, context)["pattern"]

    def _dynamic_edit(self, modality: str):
        def edit(hidden: torch.Tensor, context: EncoderContext) -> torch.Tensor:
            encoder, state = self.encoders[modality], self._call(modality, context)
            slots = encoder.token_slice("dynamic")
            first = encoder.num_prefix_tokens
            tokens = self.dynamic[modality](state["pattern"], hidden[:, first:], state["mask"])
            return replace_slots(hidden, slots, tokens)

        return edit

    def _layer_edit(self, modality: str, layer: int):
        """At layer l: cache the previous layer's private outputs (l <= k), insert P_l (l < D), replay (l = k)."""
        replay_at = self.replay_layers.get(modality, 0)

        def edit(hidden: torch.Tensor, context: EncoderContext) -> torch.Tensor:
            state = self._call(modality, context)
            slots = self.encoders[modality].token_slice("private")
            if layer <= replay_at:
                state["cache"].append(hidden[:, slots])
            if layer < self.depth:
                hidden = replace_slots(hidden, slots, state["private"][layer])
            if layer == replay_at:
                replayed = self.replay[modality](state["cache"]).to(hidden.dtype)
                hidden = replace_slots(hidden, slots, hidden[:, slots] + replayed)
            return hidden

        return edit

    # ----- optimisation ----------------------------------------------------------------------------------------

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """The base groups, each split: weight decay on matrices and buffers, none on biases, LayerNorm weights
        and the gate scalars (ndim <= 1)."""
        groups = []
        for group in super().param_groups(lr, weight_decay):
            for decay, params in (
                (weight_decay, [p for p in group["params"] if p.ndim > 1]),
                (0.0, [p for p in group["params"] if p.ndim <= 1]),
            ):
                if params:
                    groups.append({**group, "params": params, "weight_decay": decay})
        return groups
