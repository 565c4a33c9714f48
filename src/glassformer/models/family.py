"""The family protocol: what every model says about itself, so no tool compares family names.

A tool that reads attention, switches heads off, runs the logit lens or draws the viewer needs the
same few facts of any model. Each family states them once, as class attributes of its model class,
and :class:`FamilyProtocol` (a base of :class:`~glassformer.models.base.PretrainedModel`) answers
every question from them:

    model.stacks                 ("decoder",)  ("encoder",)  ("encoder", "decoder")
    model.attentions_spec()      one AttentionSpec per kind of attention, in forward order
    model.main_attention         what a bare head label "L.H" means
    model.parse_head("cross.1.0")  -> HeadRef("cross", 1, 0); HeadRef.label -> "cross.1.0"
    model.forward_inputs(ids, tgt_ids)   -> (args, kwargs) for ``model(*args, **kwargs)``
    model.readout(x)             final norm + head: logits from a residual stream
    model.predicts               "next" (GPT, seq2seq), "masked" (BERT's MLM head), "none"
    model.readout_kind           what the "why" tools compare: "classes" (a classification head),
                                 "next" / "masked" (token logits), "embedding" (a sentence vector)
    model.class_readout(h)       the classification head on the final stream: (B, T, C) -> (B, num_labels)

**One naming rule for heads.** A head is ``{label}.{layer}.{head}`` where the label is the stack of a
self-attention (``encoder``, ``decoder``) or ``cross`` for encoder-decoder attention:
``encoder.0.2``, ``decoder.1.3``, ``cross.1.0``. Its output is the named activation
``{stack}.{layer}.{site}.z`` (see :mod:`glassformer.models.hooks`), with ``site`` ``attn`` or ``cross``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from glassformer.errors import GlassformerError
from glassformer.models.outputs import AttentionKind

Predicts = Literal["next", "masked", "none"]
ReadoutKind = Literal["classes", "next", "masked", "embedding", "none"]

# kind -> (stack, site, label, causal): where the activations of that attention are named
KIND_SITES: dict[str, tuple[str, str, str, bool]] = {
    "encoder-self": ("encoder", "attn", "encoder", False),
    "decoder-self": ("decoder", "attn", "decoder", True),
    "cross": ("decoder", "cross", "cross", False),
}
LABEL_KINDS = {label: kind for kind, (_, _, label, _) in KIND_SITES.items()}


class HeadError(GlassformerError, ValueError):
    """A head label or (layer, head) pair that names no head of the model."""


@dataclass(frozen=True)
class AttentionSpec:
    """One kind of attention of a model: where it lives and how many heads it has."""

    kind: AttentionKind  # "encoder-self" | "decoder-self" | "cross"
    stack: str  # "encoder" | "decoder": the stack whose layers hold it
    site: str  # "attn" | "cross": the site of its activations, f"{stack}.{layer}.{site}.z"
    label: str  # "encoder" | "decoder" | "cross": the first part of its head labels
    causal: bool  # a position sees only itself and the past
    n_layers: int
    n_heads: int  # query heads (H)
    n_kv_heads: int  # key/value heads (fewer than H with grouped-query attention)
    queries: str  # the token stream of its rows: "tokens", or "source" / "target" for the encoder-decoder
    keys: str  # the token stream of its columns

    def activation(self, layer: int, name: str) -> str:
        """The named activation of one of its layers: ``spec.activation(1, "z")`` -> ``"decoder.1.attn.z"``."""
        return f"{self.stack}.{layer}.{self.site}.{name}"

    def heads(self) -> list[HeadRef]:
        """Every head of this attention, layer by layer."""
        return [HeadRef(self.kind, layer, h) for layer in range(self.n_layers) for h in range(self.n_heads)]


@dataclass(frozen=True, order=True)
class HeadRef:
    """One attention head: ``HeadRef("cross", 1, 0).label == "cross.1.0"``."""

    kind: AttentionKind
    layer: int
    head: int

    @property
    def label(self) -> str:
        return f"{KIND_SITES[self.kind][2]}.{self.layer}.{self.head}"

    def __str__(self) -> str:
        return self.label


class FamilyProtocol:
    """What a model family states about itself (class attributes), and the answers derived from them.

    A family sets ``attention_kinds`` (in forward order), ``main_kind``, ``readout_stack``,
    ``head_module`` (the attribute holding the unembedding) and, for the encoder-decoder,
    ``needs_target``; it overrides :meth:`forward_inputs` when its forward takes other arguments.
    """

    attention_kinds: ClassVar[tuple[AttentionKind, ...]] = ()
    main_kind: ClassVar[AttentionKind | None] = None  # what a bare "L.H" head label means
    readout_stack: ClassVar[str] = "decoder"  # the stack whose output the head reads
    head_module: ClassVar[str | None] = None  # attribute of the unembedding: "lm_head", "generator", "mlm_head"
    needs_target: ClassVar[bool] = False  # forward needs the decoder input (the encoder-decoder)
    next_token: ClassVar[bool] = True  # logits at position t predict token t+1 (False: the token at t)
    classifier_module: ClassVar[str] = "classifier"  # attribute of a sequence-classification head, if the model has one
    pooler_module: ClassVar[str] = "pooler"  # attribute of the pooler the classification head reads (tanh dense), if any

    # -------------------------------------------------------------------------- anatomy

    @property
    def stacks(self) -> tuple[str, ...]:
        """The stacks this model has, in forward order."""
        return tuple(dict.fromkeys(KIND_SITES[k][0] for k in self.attention_kinds))

    def stack_module(self, stack: str) -> nn.Module:
        """The Encoder or Decoder module of a stack."""
        if stack not in self.stacks:
            raise HeadError(f"this {type(self).__name__} has no {stack} stack; it has {', '.join(self.stacks)}")
        return getattr(self, stack)

    def attentions_spec(self) -> tuple[AttentionSpec, ...]:
        """One :class:`AttentionSpec` per kind of attention, in the order the model runs them."""
        config = self.config  # type: ignore[attr-defined]
        n_heads = int(config.n_heads)
        n_kv = int(getattr(config, "n_kv_heads", None) or n_heads)
        streams = {"encoder": "tokens", "decoder": "tokens"}
        if len(self.stacks) == 2:
            streams = {"encoder": "source", "decoder": "target"}
        specs = []
        for kind in self.attention_kinds:
            stack, site, label, causal = KIND_SITES[kind]
            n_layers = len(self.stack_module(stack).layers)
            keys = streams["encoder"] if kind == "cross" else streams[stack]
            specs.append(AttentionSpec(kind, stack, site, label, causal, n_layers, n_heads, n_kv, streams[stack], keys))
        return tuple(specs)

    def attention_spec(self, kind: str) -> AttentionSpec:
        """The :class:`AttentionSpec` of one kind (``"encoder-self"``, ``"decoder-self"``, ``"cross"``)."""
        for spec in self.attentions_spec():
            if spec.kind == kind:
                return spec
        have = ", ".join(self.attention_kinds)
        raise HeadError(f"this {type(self).__name__} has no {kind} attention; it has {have}")

    @property
    def main_attention(self) -> AttentionSpec:
        """The attention a bare ``L.H`` head label means (the model's own stream: GPT's masked self,
        BERT's self, the encoder-decoder's decoder self-attention)."""
        return self.attention_spec(self.main_kind or self.attention_kinds[0])

    def parse_head(self, label: str | HeadRef | tuple[int, int], kind: str | None = None) -> HeadRef:
        """``"decoder.1.3"``, ``"cross.0.2"``, ``"1.3"`` (the main attention, or ``kind``) or (1, 3) -> HeadRef.

        Checks the layer and head against the model; an error names what is wrong."""
        if isinstance(label, HeadRef):
            spec, layer, head = self.attention_spec(label.kind), label.layer, label.head
            text = label.label
        else:
            if isinstance(label, tuple):
                parts, text = [str(label[0]), str(label[1])], f"{label[0]}.{label[1]}"
            else:
                text = str(label).strip()
                parts = text.split(".")
            if len(parts) == 3:
                if parts[0] not in LABEL_KINDS:
                    raise HeadError(f"head {text!r}: {parts[0]!r} is not an attention; use encoder, decoder or cross")
                spec = self.attention_spec(LABEL_KINDS[parts[0]])
                parts = parts[1:]
            elif len(parts) == 2:
                spec = self.attention_spec(kind) if kind is not None else self.main_attention
            else:
                raise HeadError(f"head {text!r}: write LAYER.HEAD (e.g. 1.3) or ATTENTION.LAYER.HEAD (e.g. cross.1.3)")
            try:
                layer, head = int(parts[0]), int(parts[1])
            except ValueError:
                raise HeadError(f"head {text!r}: layer and head must be integers (e.g. 1.3)") from None
        if not 0 <= layer < spec.n_layers:
            raise HeadError(f"head {text}: layer {layer} is out of range 0..{spec.n_layers - 1} of the {spec.kind} attention")
        if not 0 <= head < spec.n_heads:
            raise HeadError(f"head {text}: head {head} is out of range 0..{spec.n_heads - 1}")
        return HeadRef(spec.kind, layer, head)

    # -------------------------------------------------------------------------- inputs

    def forward_inputs(
        self, input_ids: Tensor, tgt_ids: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments of one forward pass: ``out = model(*args, **kwargs)``.

        ``input_ids`` is what the model reads (the source, for the encoder-decoder); ``tgt_ids`` the
        decoder input of an encoder-decoder (start token first), refused for other families."""
        if tgt_ids is not None:
            raise ValueError(f"tgt_ids is only for an encoder-decoder, not a {type(self).__name__}")
        return (input_ids,), ({} if attention_mask is None else {"attention_mask": attention_mask})

    # -------------------------------------------------------------------------- readout

    @property
    def predicts(self) -> Predicts:
        """What the logits at a position are about: ``"next"`` token, the ``"masked"`` token there, or
        ``"none"`` (no language-model head)."""
        if self.unembed() is None:
            return "none"
        return "next" if self.next_token else "masked"

    def final_norm(self, stack: str | None = None) -> nn.Module | None:
        """The norm after the last layer of a stack (pre-LN stacks), or None."""
        return getattr(self.stack_module(stack or self.readout_stack), "final_norm", None)

    def unembed(self) -> nn.Module | None:
        """The module from the (normed) residual stream to vocabulary logits, or None."""
        return getattr(self, self.head_module, None) if self.head_module else None

    @property
    def readout_is_linear(self) -> bool:
        """The head after the final norm is one linear map (direct logit attribution needs it)."""
        return isinstance(self.unembed(), nn.Linear)

    def readout(self, x: Tensor, stack: str | None = None) -> Tensor:
        """Logits from a residual stream x (..., C): the final norm (if any), then the head."""
        head = self.unembed()
        if head is None:
            raise HeadError(f"this {type(self).__name__} has no language-model head; it cannot read out tokens")
        norm = self.final_norm(stack)
        return head(norm(x) if norm is not None else x)

    # -------------------------------------------------------------------------- what else it reads out

    def classifier_head(self) -> nn.Module | None:
        """The sequence-classification head (a linear map to the classes), or None."""
        return getattr(self, self.classifier_module, None)

    @property
    def has_classifier(self) -> bool:
        """The model has a sequence-classification head (BERT with ``num_labels > 0``)."""
        return self.classifier_head() is not None

    @property
    def class_labels(self) -> list[str]:
        """The names of the classes (``LABEL_i`` where unnamed); empty without a classification head."""
        if not self.has_classifier:
            return []
        config = self.config  # type: ignore[attr-defined]
        n = int(config.num_labels)
        return list(getattr(config, "label_names", None) or [f"LABEL_{i}" for i in range(n)])

    def class_readout(self, h: Tensor) -> Tensor:
        """Class logits from the stream leaving the last layer, h (B, T, C) -> (B, num_labels): the first
        position ([CLS]) through the pooler, tanh(W_p h + b_p), then the classification head (what
        the forward pass does, dropout off)."""
        head = self.classifier_head()
        if head is None:
            raise HeadError(f"this {type(self).__name__} has no classification head (num_labels=0)")
        pooler = getattr(self, self.pooler_module, None)
        x = h[:, 0]  # (B, C) the [CLS] position
        return head(torch.tanh(pooler(x)) if pooler is not None else x)  # (B, num_labels)

    @property
    def readouts(self) -> tuple[ReadoutKind, ...]:
        """Everything this model's output can be read as, the default first: ``"classes"`` (a
        classification head: what its forward returns), ``"next"`` / ``"masked"`` (token logits),
        ``"embedding"`` (an encoder-only model: a pooled sentence vector, as ``BERT.embed``)."""
        kinds: list[ReadoutKind] = ["classes"] if self.has_classifier else []
        if self.predicts != "none":
            kinds.append(self.predicts)
        if self.stacks == ("encoder",):
            kinds.append("embedding")
        return tuple(kinds)

    @property
    def readout_kind(self) -> ReadoutKind:
        """What the "why" tools (ablate, patch, attribute) compare by default: the first of
        :attr:`readouts`, or ``"none"``."""
        return self.readouts[0] if self.readouts else "none"
