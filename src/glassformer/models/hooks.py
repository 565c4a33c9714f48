"""Named activations: read or replace what flows through the model, by a stable name.

Every activation a reader may want has one name, ``"{stack}.{layer}.{site}"``, with the stack
``encoder`` (BERT, the Transformer's encoder) or ``decoder`` (GPT, the Transformer's decoder):

    {stack}.embed                 (B, T, C)     embeddings, as the first layer reads them
    {stack}.{i}.resid_pre         (B, T, C)     the residual stream entering layer i
    {stack}.{i}.attn.q            (B, H, T, D)  queries of every head
    {stack}.{i}.attn.k / .v       (B, K, T, D)  keys, values of every key/value head (K = n_kv_heads)
    {stack}.{i}.attn.q_rot        (B, H, T, D)  rotary positions only: the queries after the rotation
    {stack}.{i}.attn.k_rot        (B, K, T, D)  rotary positions only: the keys after the rotation
    {stack}.{i}.attn.scores       (B, H, T, S)  QKᵀ/√d_k, before the mask and the softmax
    {stack}.{i}.attn.pattern      (B, H, T, S)  the attention weights
    {stack}.{i}.attn.z            (B, H, T, D)  each head's output, before W^O
    {stack}.{i}.attn.out          (B, T, C)     the attention block's output (after W^O)
    {stack}.{i}.resid_mid         (B, T, C)     the stream after the attention block
    {stack}.{i}.cross.*                         the same for encoder-decoder attention
    {stack}.{i}.ffn.pre / .post   (B, T, F)     the feed-forward hidden layer, before / after the activation
    {stack}.{i}.ffn.out           (B, T, C)     the feed-forward block's output
    {stack}.{i}.resid_post        (B, T, C)     the stream leaving layer i
    {stack}.final_norm            (B, T, C)     after the final LayerNorm (pre-LN stacks only)

The core calls ``tap(hooks, site, x)`` at each of these places (see :mod:`glassformer.attention`);
with ``hooks=None``, the default, that returns ``x`` and costs nothing else. A :class:`Hooks`
object both keeps activations (a cache) and replaces them (functions), and hands each part of
the model a scoped view of itself, so a layer only knows its own site names.

Asking for ``attn.scores`` or ``attn.pattern`` runs that attention on the explicit four-step
path; everything else leaves the fused kernel in place.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping

from torch import Tensor, nn

from glassformer.errors import GlassformerError

HookFn = Callable[[Tensor], "Tensor | None"]  # reads the activation; returns a replacement or None

ATTN_SITES = ("q", "k", "v", "q_rot", "k_rot", "scores", "pattern", "z", "out")
ROTARY_SITES = ("q_rot", "k_rot")  # only in attentions with rotary positions
FFN_SITES = ("pre", "post", "out")


class ActivationNameError(GlassformerError, KeyError):
    """A name that is not one of the model's named activations."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Hooks:
    """Functions to run and activations to keep, by name, for one forward pass.

    ``fns[name](x)`` may return a tensor of the same shape, which replaces ``x`` downstream, or
    None to leave it. ``cache`` (a dict) receives every activation in ``keep`` (all when ``keep``
    is None), after any function has replaced it. Tensors are stored as they are (no copy, no
    detach): run under ``torch.no_grad()`` when gradients are not wanted.
    """

    def __init__(
        self,
        fns: Mapping[str, HookFn] | None = None,
        cache: dict[str, Tensor] | None = None,
        keep: Iterable[str] | None = None,
        prefix: str = "",
    ) -> None:
        self.fns = dict(fns or {})
        self.cache = cache
        self.keep = None if keep is None else set(keep)
        self.prefix = prefix

    def scope(self, name: str) -> Hooks:
        """A view whose names start with ``prefix + name + "."``, sharing functions and cache."""
        view = Hooks.__new__(Hooks)
        view.fns, view.cache, view.keep, view.prefix = self.fns, self.cache, self.keep, f"{self.prefix}{name}."
        return view

    def keeps(self, name: str) -> bool:
        return self.cache is not None and (self.keep is None or name in self.keep)

    def wants(self, site: str) -> bool:
        """Whether anything reads or replaces ``site`` (the attention picks its path by this)."""
        name = self.prefix + site
        return name in self.fns or self.keeps(name)

    def __call__(self, site: str, x: Tensor) -> Tensor:
        name = self.prefix + site
        fn = self.fns.get(name)
        if fn is not None:
            y = fn(x)
            if y is not None:
                if not isinstance(y, Tensor) or y.shape != x.shape:
                    got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
                    raise ValueError(f"the hook on {name!r} returned {got}; expected a tensor of shape {tuple(x.shape)}")
                x = y
        if self.keeps(name):
            self.cache[name] = x
        return x


# ----------------------------------------------------------------------------- the names


def layer_sites(cross: bool, ffn: bool = True, rotary: bool = False) -> list[str]:
    """The site names of one layer, in the order the layer computes them (no ``ffn.*`` in an
    attention-only layer, no ``attn.q_rot``/``k_rot`` without rotary positions)."""
    self_sites = [s for s in ATTN_SITES if rotary or s not in ROTARY_SITES]
    sites = ["resid_pre", *(f"attn.{s}" for s in self_sites), "resid_mid"]
    if cross:
        sites += [f"cross.{s}" for s in ATTN_SITES if s not in ROTARY_SITES]
    return sites + ([f"ffn.{s}" for s in FFN_SITES] if ffn else []) + ["resid_post"]


def stacks(model: nn.Module) -> dict[str, nn.Module]:
    """``{"encoder": Encoder, "decoder": Decoder}``, whichever the model has."""
    return {name: getattr(model, name) for name in ("encoder", "decoder") if isinstance(getattr(model, name, None), nn.Module)}


def activation_names(model: nn.Module) -> list[str]:
    """Every named activation of ``model``, in the order a forward pass produces them."""
    names: list[str] = []
    for stack_name, stack in stacks(model).items():
        names.append(f"{stack_name}.embed")
        for i, layer in enumerate(stack.layers):
            cross = getattr(layer, "cross_attn", None) is not None
            ffn = getattr(layer, "ffn", None) is not None
            rotary = getattr(getattr(layer, "self_attn", None), "rotary", None) is not None
            names += [f"{stack_name}.{i}.{site}" for site in layer_sites(cross, ffn, rotary)]
        if getattr(stack, "final_norm", None) is not None:
            names.append(f"{stack_name}.final_norm")
    return names


def check_names(model: nn.Module, names: Iterable[str]) -> list[str]:
    """``names`` as a list, or an error naming the first unknown one and the closest real names."""
    known = activation_names(model)
    known_set = set(known)
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        if not isinstance(name, str) or name not in known_set:
            close = [k for k in known if k.endswith(f".{name}")][:3] or difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else f"; e.g. {known[1]!r} (see activation_names())"
            raise ActivationNameError(f"{name!r} is not a named activation of this {type(model).__name__}{hint}")
    return names
