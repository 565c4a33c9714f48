"""Where rotary positions enter: one head's query and keys before and after the rotation.

With ``positions="rotary"`` no position vector is added to the embeddings. Instead each
attention turns every pair of dims (j, j + R/2) of q and k by the angle position × θ_j, just
before step 1 of the four steps. The score q_m · k_n then depends on the positions only
through m - n. This view shows, for one query token of one head:

    q           the query as W^Q made it            (named activation attn.q)
    q_rot       the same query turned by its position (attn.q_rot)
    k, k_rot    each key before and after its turn    (attn.k, attn.k_rot; a key/value head
                                                       serves n_heads / n_kv_heads query heads)
    scores      q_rot · k_rot / √d_k, checked against the model's own attn.scores

The rotation keeps every vector's length: only the angles between q and the keys change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from glassformer.explain.steps import TOLERANCE


@dataclass
class RotaryView:
    """One head's rotation at one query position. Vectors are float64 CPU tensors."""

    layer: int
    head: int
    kv_head: int  # the key/value head this query head reads (GQA)
    token: int
    rotary_dim: int  # R: the dims that turn (the rest pass unrotated)
    angles: Tensor  # (R/2,) the query's angle of each pair, position × θ_j
    q: Tensor  # (D,) before the rotation
    q_rot: Tensor  # (D,) after
    keys: Tensor  # (T, D) before
    keys_rot: Tensor  # (T, D) after
    scores_unrotated: Tensor  # (T,) q · kⱼ / √d_k: what the scores would be without positions
    scores: Tensor  # (T,) q_rot · k_rotⱼ / √d_k
    model_scores: Tensor  # (T,) the model's attn.scores row
    max_diff: float  # max |scores - model_scores|

    @property
    def ok(self) -> bool:
        """The recomputed scores equal the model's within :data:`~glassformer.explain.steps.TOLERANCE`,
        relative to the largest score (float32 scores of a wide head carry that many digits)."""
        return self.max_diff <= TOLERANCE * max(1.0, float(self.model_scores.abs().max()))

    def to_json(self) -> dict:
        """JSON-ready: every vector as a list of floats (what the explorer's four-steps panel shows)."""
        def v(t: Tensor) -> list:
            return t.tolist()

        return {
            "layer": self.layer, "head": self.head, "kv_head": self.kv_head, "token": self.token,
            "rotary_dim": self.rotary_dim, "angles": v(self.angles), "q": v(self.q), "q_rot": v(self.q_rot),
            "keys": v(self.keys), "keys_rot": v(self.keys_rot), "scores_unrotated": v(self.scores_unrotated),
            "scores": v(self.scores), "model_scores": v(self.model_scores), "max_diff": self.max_diff, "ok": self.ok,
        }


def rotary_view(model: nn.Module, input_ids: Tensor | list[int], layer: int, head: int, token: int) -> RotaryView:
    """Run ``model`` (a GPT with rotary positions) once on ``input_ids`` (T,) or (1, T) and take one
    head's query at ``token`` and every key, before and after the rotation."""
    config = model.config
    if config.positions != "rotary":
        raise ValueError(f"this model adds {config.positions} position vectors to its embeddings; it has no rotation to show")
    if not 0 <= layer < config.n_layers or not 0 <= head < config.n_heads:
        raise ValueError(f"layer {layer}, head {head} is out of range: {config.n_layers} layers of {config.n_heads} heads")
    ids = torch.as_tensor(input_ids).reshape(1, -1)
    if not 0 <= token < ids.shape[1]:
        raise ValueError(f"token {token} is out of range: positions 0..{ids.shape[1] - 1}")
    site = f"decoder.{layer}.attn."
    names = [site + s for s in ("q", "k", "q_rot", "k_rot", "scores")]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, cache = model.run_with_cache(ids, names=names)
    finally:
        model.train(was_training)
    kv = head // (config.n_heads // config.kv_heads)
    get = {s: cache[site + s][0].double().cpu() for s in ("q", "k", "q_rot", "k_rot", "scores")}
    q, q_rot = get["q"][head, token], get["q_rot"][head, token]  # (D,)
    keys, keys_rot = get["k"][kv], get["k_rot"][kv]  # (T, D)
    scale = math.sqrt(config.d_head)
    scores = keys_rot @ q_rot / scale  # (T,)
    model_scores = get["scores"][head, token]  # (T,)
    attn = model.decoder.layers[layer].self_attn
    angles = token * attn.rotary.inv_freq.double().cpu()  # (R/2,)
    return RotaryView(
        layer=layer, head=head, kv_head=kv, token=token, rotary_dim=config.rotary_dim, angles=angles, q=q, q_rot=q_rot,
        keys=keys, keys_rot=keys_rot, scores_unrotated=keys @ q / scale, scores=scores, model_scores=model_scores,
        max_diff=float((scores - model_scores).abs().max()),
    )


def format_rotary_view(view: RotaryView, tokens: list[str] | None = None, width: int = 4) -> str:
    """A plain-text table: the query, then one row per key, before and after the rotation."""

    def vec(t: Tensor) -> str:
        shown = ", ".join(f"{float(x):+.3f}" for x in t[:width])
        return f"[{shown}{', …' if t.numel() > width else ''}]"

    lines = [
        f"layer {view.layer}, head {view.head} (key/value head {view.kv_head}), query position {view.token}: "
        f"{view.rotary_dim} of {view.q.numel()} dims rotate",
        f"angles of the query's first pairs (position × θ_j): {vec(view.angles)}",
        f"q     = {vec(view.q)}   |q| = {float(view.q.norm()):.4f}",
        f"q_rot = {vec(view.q_rot)}   |q_rot| = {float(view.q_rot.norm()):.4f}",
        "",
        f"{'pos':>4}  {'token':<10} {'k':<34} {'k_rot':<34} {'q·k/√d':>9} {'q_rot·k_rot/√d':>15}",
    ]
    for j in range(view.keys.shape[0]):
        name = (tokens[j] if tokens is not None and j < len(tokens) else "")[:10]
        lines.append(f"{j:>4}  {name:<10} {vec(view.keys[j]):<34} {vec(view.keys_rot[j]):<34} "
                     f"{float(view.scores_unrotated[j]):>+9.4f} {float(view.scores[j]):>+15.4f}")
    lines.append(f"max |q_rot·k_rot/√d - model scores| = {view.max_diff:.2e}   {'OK' if view.ok else 'MISMATCH'}")
    return "\n".join(lines)


__all__ = ["RotaryView", "format_rotary_view", "rotary_view"]
