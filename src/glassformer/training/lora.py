"""LoRA (Hu et al., 2021): fine-tune a pretrained model through low-rank updates of its projections.

A wrapped projection computes

    h = W x + b + (α / r) · B A x          W (out, in), b (out,) frozen; A (r, in), B (out, r) trained

with A drawn like a Linear's weight (Kaiming uniform, as the paper's ``loralib``) and B zero, so
at the start the model is exactly the pretrained one (§4.1). Only A and B (and the task's new
head: a classifier's ``classifier`` and ``pooler``) receive gradients; embeddings, norms and every
other weight stay frozen, as in the paper, so the optimiser holds moments for a few hundred
thousand numbers instead of the whole model, and the merged result differs from the pretrained
model only by the low-rank updates and the head.

glassformer stacks W^Q, W^K, W^V into one projection (``w_qkv``; cross-attention stacks W^K, W^V
as ``w_kv``). Each stacked part gets its own adapter, as separate matrices would in the paper:
``lora_A`` holds the parts' A matrices one under another (P·r, in) and ``lora_B`` (out, r) pairs
each part's rows with its own A, i.e. ΔW = blockdiag(B_q, B_k, B_v) · [A_q; A_k; A_v].

What is saved: a model directory (the run's best model) holds plain merged weights W + (α/r) B A
(:func:`merged`), loadable by anything that loads a full fine-tune's output. A checkpoint holds
the unmerged state (frozen W, A, B and their optimiser moments) so ``--resume`` continues exactly;
:func:`model_for_resume` rebuilds the wrapped model its weights are loaded into.

    from glassformer.training.lora import apply_lora, merge_lora
    apply_lora(model, rank=8)                 # wraps the attention projections; freezes the rest
    ...train...
    merge_lora(model).save_pretrained("out")  # plain nn.Linear layers again
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glassformer.attention import MultiHeadAttention
from glassformer.linear import Linear
from glassformer.training.config import ConfigError

# the attention projections of glassformer.attention: W^Q W^K W^V stacked, cross-attention's W^Q and W^K W^V, W^O
ATTENTION_TARGETS = ("w_qkv", "w_q", "w_kv", "w_o")
# the parameters a task adds on top of the pretrained model, trained in full beside the adapters
TASK_HEADS: dict[str, tuple[str, ...]] = {"classifier": ("classifier", "pooler")}


def default_alpha(rank: int) -> float:
    """α = 2r: a fixed scale α/r = 2 whatever the rank, so the learning rate need not follow the
    rank (the paper sets α once and leaves it); 2 as in the authors' RoBERTa/DeBERTa runs (r 8, α 16)."""
    return 2.0 * rank


class LoRALinear(nn.Module):
    """A frozen projection ``W x + b`` plus the trained low-rank update ``(α/r) · B A x``.

    ``weight`` and ``bias`` are the wrapped Linear's own parameters (same state-dict names), so a
    checkpoint holds them under their usual keys beside ``lora_A`` and ``lora_B``. ``parts``
    splits a stacked projection's outputs (``w_qkv``: d_model, d_kv, d_kv), one adapter each.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, parts: Sequence[int] | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.parts = tuple(parts) if parts else (base.out_features,)
        if sum(self.parts) != base.out_features:
            raise ValueError(f"parts {self.parts} do not add up to the {base.out_features} outputs")
        self.rank, self.alpha, self.scaling = rank, float(alpha), float(alpha) / rank
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        like = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(len(self.parts) * rank, self.in_features, **like))  # [A_1; ...; A_P]
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **like))  # [B_1; ...; B_P]
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear draws an (r, in) weight

    def block_b(self) -> Tensor:
        """blockdiag(B_1, ..., B_P): (out, P·r); part i's outputs read only its own A_i x."""
        if len(self.parts) == 1:
            return self.lora_B
        return torch.block_diag(*self.lora_B.split(self.parts, dim=0))

    def delta_weight(self) -> Tensor:
        """ΔW = (α/r) · blockdiag(B) · A: (out, in), in fp32."""
        return (self.block_b().float() @ self.lora_A.float()) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        u = F.linear(x, self.lora_A)  # (..., P·r): A x for every part
        return F.linear(x, self.weight, self.bias) + self.scaling * F.linear(u, self.block_b())  # (..., out)

    def merged_linear(self) -> Linear:
        """A plain Linear with weight W + ΔW (a new tensor) and this layer's own bias."""
        linear = Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        with torch.no_grad():
            merged = (self.weight.float() + self.delta_weight()).to(self.weight.dtype)
        linear.weight = nn.Parameter(merged, requires_grad=False)
        linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, parts={self.parts}, rank={self.rank}, alpha={self.alpha:g}"


def _parts(module: MultiHeadAttention, attr: str) -> tuple[int, ...] | None:
    if attr == "w_qkv":
        return (module.d_model, module.d_kv, module.d_kv)
    if attr == "w_kv":
        return (module.d_kv, module.d_kv)
    return None


def lora_layers(model: nn.Module) -> list[tuple[nn.Module, str, LoRALinear]]:
    """Every wrapped projection as (parent module, attribute name, layer)."""
    return [(parent, name, child) for parent in model.modules()
            for name, child in parent.named_children() if isinstance(child, LoRALinear)]


def apply_lora(model: nn.Module, rank: int, alpha: float | None = None, *,
               targets: Sequence[str] = ATTENTION_TARGETS, train: Sequence[str] = ()) -> int:
    """Wrap the ``targets`` projections of every attention layer of ``model`` in :class:`LoRALinear`
    (in place) and freeze every other parameter except those under the module prefixes ``train``
    (a new head). Returns the number of trainable parameters.

    A rank above a projection's smallest side is refused: the update would no longer be low-rank
    and would hold more numbers than the weight it adapts. α defaults to :func:`default_alpha`."""
    alpha = default_alpha(rank) if alpha is None else alpha
    if rank <= 0:
        raise ConfigError(f"lora_rank must be positive to apply LoRA, got {rank}")
    for p in model.parameters():
        p.requires_grad_(False)
    found = []
    for path, module in model.named_modules():
        if not isinstance(module, MultiHeadAttention):
            continue
        for attr in targets:
            base = getattr(module, attr, None)
            if not isinstance(base, nn.Linear):
                continue
            parts = _parts(module, attr) or (base.out_features,)
            width = min(base.in_features, *parts)
            if rank > width:
                raise ConfigError(f"lora_rank {rank} is above the width {width} of {path}.{attr}; a LoRA rank must be "
                                  f"at most the smallest side of the projections it adapts (try 4-16)")
            found.append((module, attr, base, parts))
    if not found:
        raise ConfigError(f"lora_rank: the model has no attention projection named {', '.join(targets)} to adapt")
    for module, attr, base, parts in found:
        setattr(module, attr, LoRALinear(base, rank, alpha, parts))
    heads = tuple(train)
    for name, p in model.named_parameters():
        if heads and name.startswith(tuple(h + "." for h in heads)):
            p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@contextlib.contextmanager
def merged(model: nn.Module) -> Iterator[nn.Module]:
    """Inside, ``model``'s LoRA layers are plain Linear layers holding W + ΔW (new tensors; the
    adapters and W are untouched and put back on exit): what a saved model directory holds. A
    model without LoRA layers is yielded as it is."""
    layers = lora_layers(model)
    try:
        for parent, name, layer in layers:
            setattr(parent, name, layer.merged_linear())
        yield model
    finally:
        for parent, name, layer in layers:
            setattr(parent, name, layer)


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRA layer of ``model`` by its merged plain Linear, for good, and make every
    parameter trainable again: the model as a full fine-tune would have left it. Returns ``model``."""
    for parent, name, layer in lora_layers(model):
        setattr(parent, name, layer.merged_linear())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def model_for_resume(checkpoint: str | Path, rank: int, alpha: float | None, task: str) -> nn.Module:
    """The wrapped model a LoRA run's checkpoint is loaded into: built from its ``config.json``
    without initialising (every weight, A and B included, comes from the checkpoint)."""
    from glassformer.loading import read_config_dict
    from glassformer.models import MODEL_CLASSES
    from glassformer.models.base import skip_init

    data = read_config_dict(checkpoint)
    cls = MODEL_CLASSES[data["model_type"]]
    with skip_init():
        model = cls(cls.config_class.from_dict(data))
    apply_lora(model, rank, alpha, train=TASK_HEADS.get(task, ()))
    return model
