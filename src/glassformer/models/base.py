"""What the three families share: input checks, weight initialisation, save and load, and
named activations (``run_with_cache``, ``run_with_hooks``; see :mod:`glassformer.models.hooks`).

A saved model is a directory holding ``config.json`` (pure data) and ``model.safetensors``.
Tied weights are stored once and tied again on load. Loading is strict: a missing key, an
unexpected key or a shape mismatch is an error that names the key, so nothing is ever left
randomly initialised without the user knowing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from glassformer.errors import MissingFileError
from glassformer.io import IGNORE_INDEX, atomic_write, make_dirs
from glassformer.models.activations import ActivationCache
from glassformer.models.config import ModelConfig
from glassformer.models.family import FamilyProtocol
from glassformer.models.hooks import HookFn, Hooks, activation_names, check_names
from glassformer.models.outputs import ModelOutput

log = logging.getLogger(__name__)
M = TypeVar("M", bound="PretrainedModel")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def check_input_ids(ids: Tensor, vocab_size: int, name: str = "input_ids") -> None:
    """Refuse ids that are not a non-empty (B, T) integer tensor of valid token ids."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    if ids.dim() != 2:
        raise ValueError(f"{name} must have shape (B, T), got {tuple(ids.shape)}")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(ids.shape)}); give at least one token")
    # The value check reads two numbers back from the device: free on the CPU, but a host sync
    # (and a torch.compile graph break) on an accelerator, so it runs on CPU tensors in eager mode.
    if ids.device.type != "cpu" or torch.compiler.is_compiling():
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        pos = (ids == bad).nonzero()[0].tolist()
        raise ValueError(f"{name} holds token id {bad} at position {pos}, outside the vocabulary [0, {vocab_size})")


def check_length(t: int, max_len: int, name: str = "input_ids") -> None:
    if t > max_len:
        raise ValueError(f"{name} has {t} positions, more than max_len={max_len}")


def check_attention_mask(mask: Tensor | None, batch: int, length: int, name: str = "attention_mask") -> None:
    """A (B, S) padding mask with 1/True on real tokens."""
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != (batch, length):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, expected (B, S) = {(batch, length)}")


def lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over positions whose label is not IGNORE_INDEX (-100). logits (..., V), labels (...)."""
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


INIT_FUNCTIONS = ("normal_", "uniform_", "trunc_normal_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_",
                  "kaiming_normal_", "zeros_", "ones_", "constant_")


class SkipInit(TorchFunctionMode):
    """Inside, ``torch.nn.init``'s functions (and the in-place fills they call) leave their tensor
    as it is: see :func:`skip_init`."""

    skipped = frozenset({*(getattr(nn.init, n) for n in INIT_FUNCTIONS), torch.Tensor.normal_, torch.Tensor.uniform_,
                         torch.Tensor.fill_, torch.Tensor.zero_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.skipped:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def skip_init() -> SkipInit:
    """``with skip_init(): model = GPT(config)`` builds a model without its random initialisation
    (for shapes on the meta device, or weights about to be loaded). Scoped to the block and to
    this thread, unlike patching ``torch.nn.init``."""
    return SkipInit()


class PretrainedModel(FamilyProtocol, nn.Module):
    """Base class: ``save_pretrained`` / ``from_pretrained``, initialisation helpers, named activations,
    and the family protocol (:mod:`glassformer.models.family`) every tool asks instead of comparing names."""

    config_class: ClassVar[type[ModelConfig]] = ModelConfig
    # parameter name -> the parameter it is tied to; saved once, under the second name
    tied_weights: ClassVar[dict[str, str]] = {}
    # forward(..., labels=..., return_logits=False) returns the loss without keeping the logits
    loss_without_logits: ClassVar[bool] = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    def num_parameters(self) -> int:
        """Distinct parameters (tied matrices count once)."""
        return sum(p.numel() for p in self.parameters())

    def active_tied_weights(self) -> dict[str, str]:
        """The ties that hold in this instance (a config can switch tying off)."""
        params = dict(self.named_parameters(remove_duplicate=False))
        return {a: b for a, b in self.tied_weights.items() if a in params and b in params and params[a] is params[b]}

    # ----------------------------------------------------------------------------- save/load

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed).

        Each file is written to a temporary name and renamed, so a crash never leaves a
        half-written file under the real name.
        """
        directory = make_dirs(directory)
        tied = self.active_tied_weights()
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items() if k not in tied}
        atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, p, metadata={"format": "pt"}))
        self.config.to_json_file(directory / CONFIG_NAME)

    @classmethod
    def from_pretrained(cls: type[M], directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> M:
        """Load a model written by :meth:`save_pretrained`; strict about every key and shape."""
        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise MissingFileError(f"{directory}: no {name}; not a saved glassformer model")
        config = cls.config_class.from_json_file(directory / CONFIG_NAME)
        model = cls(config)
        try:
            state = load_file(directory / WEIGHTS_NAME, device=str(map_location))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{directory / WEIGHTS_NAME}: not a readable safetensors file ({e})") from None
        model.load_weights(state, source=str(directory / WEIGHTS_NAME))
        return model.to(map_location)

    def load_weights(self, state: dict[str, Tensor], source: str = "state dict") -> None:
        """Copy ``state`` into the model; refuse missing, unexpected or mis-shaped keys by name."""
        tied = self.active_tied_weights()
        expected = {k: v for k, v in self.state_dict().items() if k not in tied}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing:
            raise KeyError(f"{source}: missing weight {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        if unexpected:
            raise KeyError(f"{source}: unexpected weight {unexpected[0]!r}" + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
        for k, v in expected.items():
            if tuple(state[k].shape) != tuple(v.shape):
                raise ValueError(f"{source}: weight {k!r} has shape {tuple(state[k].shape)}, the model expects {tuple(v.shape)}")
        with torch.no_grad():
            for k, v in expected.items():
                v.copy_(state[k])

    # ---------------------------------------------------------------------- named activations

    def activation_names(self) -> list[str]:
        """Every name :meth:`run_with_cache` and :meth:`run_with_hooks` accept, in forward order."""
        return activation_names(self)

    def run_with_cache(
        self, *args: Any, names: Iterable[str] | None = None, **kwargs: Any
    ) -> tuple[ModelOutput, ActivationCache]:
        """``out, cache = model.run_with_cache(input_ids, attention_mask=None, names=None)``.

        The ordinary forward pass (same arguments as calling the model) plus an
        :class:`~glassformer.models.activations.ActivationCache` (a dict) of named activations,
        ``"{stack}.{layer}.{site}"`` (see :mod:`glassformer.models.hooks`).
        ``names`` limits what is kept (default: everything). Tensors keep their graph: wrap the
        call in ``torch.no_grad()`` when no gradient is wanted.
        """
        keep = None if names is None else check_names(self, names)
        cache = ActivationCache(self)
        return self(*args, hooks=Hooks(cache=cache, keep=keep), **kwargs), cache

    def run_with_hooks(self, *args: Any, hooks: Mapping[str, HookFn], **kwargs: Any) -> ModelOutput:
        """``model.run_with_hooks(input_ids, hooks={name: fn})``: the forward pass with ``fn(tensor)``
        called on each named activation; a returned tensor (same shape) replaces it, None leaves it."""
        check_names(self, hooks)
        return self(*args, hooks=Hooks(fns=hooks), **kwargs)

    # ---------------------------------------------------------------------------------- init

    def _init_normal(self, std: float = 0.02) -> None:
        """N(0, 0.02) for matrices and embeddings, zero biases, unit LayerNorms (GPT-2, BERT)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():
            if name.endswith("emb.weight"):
                nn.init.normal_(p, std=std)
