"""`MPNConfig`: the PEFT configuration of Multilingual Patch Neurons."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal

from peft import PeftConfig

from ..utils.checks import is_real


class MPNPeftType(str, enum.Enum):
    """The PEFT type of MPN adapters; compares and hashes equal to the string ``"MPN"``."""

    MPN = "MPN"

    def __str__(self) -> str:
        return self.value


MPN = MPNPeftType.MPN
PREFIX = "mpn_"


@dataclass(frozen=True)
class FFNPreset:
    """Where the feed-forward block of one architecture lives.

    Attributes:
        key_modules: The FFN input projection(s) that get the patch keys. For a gated MLP this is the gate.
        value_modules: The FFN output projection that consumes the patch units.
        up_modules: For a gated MLP, the "up" projection multiplied with the activated gate.
        exclude_modules: Module names that match a suffix above but are not the FFN (BERT's attention output).
        width_attr: The config attribute that holds the FFN width, rewritten when a merged model is saved.
        bias_attr: For models whose FFN has no bias, the config flag that adds one (needed to merge patch biases).
    """

    key_modules: tuple[str, ...]
    value_modules: tuple[str, ...]
    up_modules: tuple[str, ...] = ()
    exclude_modules: tuple[str, ...] = ()
    width_attr: str | None = None
    bias_attr: str | None = None


_BERT_LIKE = FFNPreset(
    key_modules=("intermediate.dense",),
    value_modules=("output.dense",),
    exclude_modules=("attention.output.dense",),
    width_attr="intermediate_size",
)
_LLAMA_LIKE = dict(key_modules=("mlp.gate_proj",), value_modules=("mlp.down_proj",), up_modules=("mlp.up_proj",))

#: FFN module names per ``model_type``; ``MPNConfig()`` picks from this table.
FFN_PRESETS: dict[str, FFNPreset] = {
    "bert": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "camembert": _BERT_LIKE,
    "distilbert": FFNPreset(key_modules=("ffn.lin1",), value_modules=("ffn.lin2",), width_attr="hidden_dim"),
    "gpt2": FFNPreset(key_modules=("mlp.c_fc",), value_modules=("mlp.c_proj",), width_attr="n_inner"),
    "llama": FFNPreset(**_LLAMA_LIKE, width_attr="intermediate_size", bias_attr="mlp_bias"),
    "qwen2": FFNPreset(**_LLAMA_LIKE, width_attr="intermediate_size"),
    "mistral": FFNPreset(**_LLAMA_LIKE, width_attr="intermediate_size"),
    # Gemma's gated MLPs have no bias option: merge_and_unload(uniform_width=False) merges them in memory only.
    "gemma": FFNPreset(**_LLAMA_LIKE, width_attr="intermediate_size"),
    "gemma2": FFNPreset(**_LLAMA_LIKE, width_attr="intermediate_size"),
    "gemma3_text": FFNPreset(**_LLAMA_LIKE, width_attr="intermediate_size"),
    "olmo2": FFNPreset(**_LLAMA_LIKE, width_attr="intermediate_size"),
    # BLOOM's FFN width is fixed at 4 * hidden_size (no config attribute), so a merged model stays in memory.
    "bloom": FFNPreset(key_modules=("mlp.dense_h_to_4h",), value_modules=("mlp.dense_4h_to_h",)),
}

LayersSpec = list[int] | int | Literal["all"] | None


def _as_list(value: Any, name: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple, set)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise TypeError(f"MPNConfig.{name} must be a module name or a list of module names, got {value!r}.")


@dataclass
class MPNConfig(PeftConfig):
    """Configuration of an MPN adapter: patch neurons in feed-forward blocks.

    A patch neuron adds ``v * act(k . x + b)`` to the output of a feed-forward (FFN) block, where ``act`` is the
    FFN's own activation. It is built from two wrappers on the same block: the *key* module (the FFN input
    projection) gains one output unit per neuron and the *value* module (the FFN output projection) consumes it.
    Gated MLPs (LLaMA, Qwen2, Mistral) also wrap the *up* projection, whose new unit starts as a constant 1.

    With no arguments the FFN modules come from :data:`FFN_PRESETS` by the base model's ``model_type`` and only the
    last layer is patched, as in Transformer-Patcher.

    Args:
        key_modules: FFN input projection names (suffixes), e.g. ``["intermediate.dense"]``.
        value_modules: FFN output projection names, e.g. ``["output.dense"]``.
        up_modules: For gated MLPs, the up projection names, e.g. ``["mlp.up_proj"]``.
        target_modules: PEFT-style alternative to the three fields above: ``[key, value]`` or
            ``[gate, up, down]`` in that order. Filled in from the role fields when those are given.
        exclude_modules: Module names never wrapped, even if a suffix above matches them.
        layers_to_transform: Layer indices to patch: an int, a list, ``"all"``, or ``None`` for the last layer.
        layers_pattern: Name of the layer list (``"layer"``, ``"h"``, ``"layers"``) when the index can't be found.
        init_value_std: Standard deviation of a new patch's value vector when none is given. The default 0 makes a
            new patch an exact no-op until it is trained.
        init_key_std: Standard deviation of a new patch's key when none is given; ``None`` means
            ``1/sqrt(in_features)``.
        sharpness: ``s`` in ``(v / s) * act(s * (k . x + b))``, the form each patch unit takes. With ``s`` well
            above 1 the FFN's GELU or SiLU acts on the patch like a ReLU: a silent patch (``k . x + b`` below 0)
            adds exactly nothing, while GELU's negative tail (``gelu(-2) = -0.045``) would leak ``v`` a little on
            every input, and a hundred patches leak together (measured on e5-small after 63 patches: 24% of
            unrelated claims flipped with ``s=1``, 0.8% with ``s=10``). Parameters, losses and merges are all in
            the natural scale; ``s`` only shapes the unit. 1 gives the plain FFN unit.
        patch_sizes: Maintained by the model: per FFN block, the number of neurons of each patch, oldest first.
            Saved so that ``from_pretrained`` can rebuild the shapes before the weights load.
        num_frozen: Maintained by the model: per FFN block, how many of the oldest patches are frozen.
        block_dims: Maintained by the model: per FFN block, ``[in, width, out]`` of the base FFN it was made on.
        patch_ids: Maintained by the model: per FFN block, the id of the edit (record) each patch fixes, oldest
            first, aligned with :attr:`patch_sizes`; ``None`` for a patch added without one. This is what lets
            ``MPNModel.remove_edit(id)`` undo one edit after save/load or a hub round trip.
        edit_log: Maintained by the editors: per edit id, what is known of the edit (languages, steps, seconds, UTC
            time, success, method); ``MPNModel.edits()`` lists them.
        languages: Languages the patches were trained on (for the model card).
        metrics: Evaluation results to show on the model card, e.g. ``{"SR": 1.0, "GR fr": 0.97}``.
        weights_sha256: Written by ``save_pretrained``: the SHA-256 of ``adapter_model.safetensors``, checked when
            the adapter loads (see `peft_mpn.tuner.verify`).
        method: The editing method that made the patches (``"mpn"``, ``"tpatcher"``), for the model card.
        edits: How many edits made the patches, for the model card.

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> from peft import get_peft_model
        >>> from peft_mpn import MPNConfig
        >>> base = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                             intermediate_size=64, vocab_size=100))
        >>> model = get_peft_model(base, MPNConfig())
        >>> sorted(model.peft_config["default"].target_modules)
        ['intermediate.dense', 'output.dense']
        >>> model.peft_config["default"].layers_to_transform
        [1]
    """

    key_modules: list[str] | str | None = field(
        default=None, metadata={"help": "FFN input projection(s) that hold the patch keys, e.g. 'intermediate.dense'."}
    )
    value_modules: list[str] | str | None = field(
        default=None, metadata={"help": "FFN output projection(s) that hold the patch values, e.g. 'output.dense'."}
    )
    up_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Gated MLPs only: the up projection(s), e.g. 'mlp.up_proj'."}
    )
    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "All wrapped modules: [key, value] or [gate, up, down]. Derived from the role fields."},
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Modules never wrapped, e.g. 'attention.output.dense' for BERT."}
    )
    layers_to_transform: list[int] | int | str | None = field(
        default=None, metadata={"help": "Layer indices to patch; 'all' for every layer, None for the last one."}
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the layer list, e.g. 'layer' or 'h', if indices can't be found."}
    )
    init_value_std: float = field(
        default=0.0, metadata={"help": "Std of a new patch's value; 0 makes a new patch a no-op until trained."}
    )
    init_key_std: float | None = field(
        default=None, metadata={"help": "Std of a new patch's key; None means 1/sqrt(in_features)."}
    )
    sharpness: float = field(
        default=10.0,
        metadata={"help": "Each unit is (v/s)*act(s*(k.x+b)): s >> 1 makes GELU/SiLU act like ReLU on patches."},
    )
    patch_sizes: dict[str, list[int]] = field(
        default_factory=dict, metadata={"help": "Maintained by the model: neurons per patch, per FFN block."}
    )
    num_frozen: dict[str, int] = field(
        default_factory=dict, metadata={"help": "Maintained by the model: frozen patches per FFN block."}
    )
    block_dims: dict[str, list[int]] = field(
        default_factory=dict, metadata={"help": "Maintained by the model: FFN [in, width, out] per block."}
    )
    patch_ids: dict[str, list[str | None]] = field(
        default_factory=dict, metadata={"help": "Maintained by the model: the edit id each patch fixes, per block."}
    )
    edit_log: dict[str, dict[str, Any]] = field(
        default_factory=dict, metadata={"help": "Maintained by the editors: languages, steps and time of each edit."}
    )
    languages: list[str] = field(default_factory=list, metadata={"help": "Languages the patches were trained on."})
    metrics: dict[str, Any] = field(default_factory=dict, metadata={"help": "Results shown on the model card."})
    weights_sha256: str | None = field(
        default=None, metadata={"help": "Written at save: SHA-256 of adapter_model.safetensors, checked at load."}
    )
    method: str | None = field(
        default=None, metadata={"help": "The editing method that made the patches (mpn, tpatcher), for the card."}
    )
    edits: int | None = field(default=None, metadata={"help": "How many edits made the patches, for the card."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = MPN
        self.key_modules = _as_list(self.key_modules, "key_modules")
        self.value_modules = _as_list(self.value_modules, "value_modules")
        self.up_modules = _as_list(self.up_modules, "up_modules")
        self.exclude_modules = _as_list(self.exclude_modules, "exclude_modules")
        self.target_modules = _as_list(self.target_modules, "target_modules")
        self.layers_pattern = _as_list(self.layers_pattern, "layers_pattern")
        self._validate_layers()
        if not is_real(self.init_value_std) or self.init_value_std < 0:
            raise ValueError(f"MPNConfig.init_value_std must be a number >= 0, got {self.init_value_std!r}.")
        if self.init_key_std is not None and (not is_real(self.init_key_std) or self.init_key_std <= 0):
            raise ValueError(f"MPNConfig.init_key_std must be a number > 0 or None, got {self.init_key_std!r}.")
        if not is_real(self.sharpness) or self.sharpness <= 0:
            raise ValueError(
                f"MPNConfig.sharpness must be a number > 0 (1 is the plain FFN unit); got {self.sharpness!r}."
            )
        if self.key_modules or self.value_modules or self.up_modules:
            if not (self.key_modules and self.value_modules):
                raise ValueError(
                    "MPNConfig needs both key_modules (the FFN input projection, e.g. 'intermediate.dense') and "
                    "value_modules (the FFN output projection, e.g. 'output.dense'); got "
                    f"key_modules={self.key_modules}, value_modules={self.value_modules}."
                )
            self.target_modules = [*self.key_modules, *(self.up_modules or []), *self.value_modules]
        elif self.target_modules is not None:
            self._roles_from_target_modules()

    def _validate_layers(self) -> None:
        layers = self.layers_to_transform
        if layers is None or layers == "all":
            return
        if isinstance(layers, bool) or not isinstance(layers, (int, list, tuple)):
            raise TypeError(
                f"MPNConfig.layers_to_transform must be an int, a list of ints, 'all' or None; got {layers!r}."
            )
        values = [layers] if isinstance(layers, int) else list(layers)
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise TypeError(f"MPNConfig.layers_to_transform must hold ints, got {layers!r}.")
        self.layers_to_transform = values

    def _roles_from_target_modules(self) -> None:
        targets = list(self.target_modules)
        if len(targets) == 2:
            self.key_modules, self.value_modules = [targets[0]], [targets[1]]
        elif len(targets) == 3:
            self.key_modules, self.up_modules, self.value_modules = [targets[0]], [targets[1]], [targets[2]]
        else:
            raise ValueError(
                f"MPNConfig.target_modules={targets} is ambiguous: give [key, value] (e.g. ['intermediate.dense', "
                "'output.dense']) or [gate, up, down], or name the roles with key_modules=, value_modules= and "
                "up_modules=."
            )

    @property
    def has_roles(self) -> bool:
        """Whether the FFN module roles are known (given by hand or filled in from a preset)."""
        return bool(self.key_modules and self.value_modules)

    def apply_preset(self, model_type: str | None) -> None:
        """Fill in the FFN module roles from :data:`FFN_PRESETS` for ``model_type``.

        Args:
            model_type: The base model's ``config.model_type``.

        Raises:
            ValueError: If the architecture has no preset; the message says how to name the modules by hand.
        """
        preset = FFN_PRESETS.get(model_type or "")
        if preset is None:
            raise ValueError(
                f"MPN has no FFN preset for model_type={model_type!r} (known: {sorted(FFN_PRESETS)}). Name the FFN "
                "modules by hand, e.g. MPNConfig(key_modules=['mlp.fc1'], value_modules=['mlp.fc2']) for a plain "
                "MLP, or add up_modules=['mlp.up_proj'] with key_modules=['mlp.gate_proj'] for a gated MLP. "
                "Use `print(model)` to see the module names."
            )
        self.key_modules = list(preset.key_modules)
        self.value_modules = list(preset.value_modules)
        self.up_modules = list(preset.up_modules) or None
        self.exclude_modules = list(dict.fromkeys([*(self.exclude_modules or []), *preset.exclude_modules])) or None
        self.target_modules = [*self.key_modules, *(self.up_modules or []), *self.value_modules]

    def role_of(self, module_key: str) -> str | None:
        """Return ``"key"``, ``"up"`` or ``"value"`` for a module name, or ``None`` if it has no role."""
        for role, names in (("key", self.key_modules), ("up", self.up_modules), ("value", self.value_modules)):
            for name in names or []:
                if module_key == name or module_key.endswith("." + name):
                    return role
        return None

    def block_of(self, module_key: str) -> str:
        """Return the FFN block a wrapped module belongs to: its name minus the matched role suffix."""
        for names in (self.key_modules, self.up_modules, self.value_modules):
            for name in names or []:
                if module_key == name:
                    return ""
                if module_key.endswith("." + name):
                    return module_key[: -len(name) - 1]
        return module_key.rpartition(".")[0]

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """Save ``adapter_config.json`` and the adapter's model card ``README.md`` into ``save_directory``.

        ``PeftModel.save_pretrained`` writes the weights first, so the config records their checksum
        (``weights_sha256``). A local path in ``base_model_name_or_path`` is replaced by the Hub id it is a copy of
        when known, else by ``"local:<architecture>@sha256:<hash of its weights>"`` (see
        `peft_mpn.tuner.card.public_base_name`) in the saved files: no local path is saved or pushed.
        """
        from .card import public_base_name, write_model_card
        from .verify import weights_checksum

        self.weights_sha256 = weights_checksum(save_directory)
        local = self.base_model_name_or_path  # kept in memory: peft reads the base's config.json through it
        self.base_model_name_or_path = public_base_name(local)
        try:
            super().save_pretrained(save_directory, **kwargs)
            write_model_card(self, save_directory)
        finally:
            self.base_model_name_or_path = local

    def num_patches(self) -> int:
        """Total number of patches recorded in :attr:`patch_sizes`, over all FFN blocks."""
        return sum(len(sizes) for sizes in self.patch_sizes.values())
