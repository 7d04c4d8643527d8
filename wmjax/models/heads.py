"""Encoders and decoders: DreamerV3's MLPs for vector observations and its CNNs for images."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from wmjax.config import IMAGE_LOSSES, VECTOR_LOSSES
from wmjax.nn.dists import symexp, symlog
from wmjax.nn.layers import MLP, Conv, Linear, RMSNorm


class VectorEncoder(nn.Module):
    """symlog(obs) -> `layers` x `units` MLP (RMSNorm, SiLU)."""

    layers: int = 3
    units: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return MLP(self.layers, self.units, dtype=self.dtype)(symlog(obs.astype(jnp.float32)))


class VectorDecoder(nn.Module):
    """Features -> prediction of a vector observation, with a loss summed over its dims.

    `vector_loss` picks the loss:
    - "mse" (DreamerV3's): the output predicts symlog(obs), trained with squared error;
    - "bce": the output is logits, trained with binary cross-entropy against obs clipped to
      [0, 1]. For vectors of one-hot cells and [0, 1]-scaled counts (Craftax's symbolic view):
      a rare cell (a zombie) predicted at probability p costs -log p, where squared error on
      symlog charges (ln 2)^2 = 0.48 for predicting it empty."""

    obs_size: int
    layers: int = 3
    units: int = 64
    dtype: Any = jnp.float32
    vector_loss: str = "mse"

    @nn.compact
    def __call__(self, feat: jax.Array) -> jax.Array:
        _check_vector_loss(self.vector_loss)
        return MLP(self.layers, self.units, out=self.obs_size, dtype=self.dtype)(feat)

    def loss(self, pred: jax.Array, obs: jax.Array) -> jax.Array:
        return vector_loss(pred, obs, self.vector_loss)

    def to_obs(self, pred: jax.Array) -> jax.Array:
        """The prediction in observation units."""
        return vector_from(pred, self.vector_loss)


def _check_vector_loss(name: str) -> None:
    if name not in VECTOR_LOSSES:
        raise ValueError(f"vector_loss={name!r}; allowed: one of {VECTOR_LOSSES}")


def vector_loss(pred: jax.Array, obs: jax.Array, name: str) -> jax.Array:
    """A vector decoder's loss per step, summed over the last dim (see VectorDecoder)."""
    _check_vector_loss(name)
    obs = obs.astype(jnp.float32)
    if name == "bce":
        return optax.sigmoid_binary_cross_entropy(pred, jnp.clip(obs, 0.0, 1.0)).sum(-1)
    return jnp.square(pred - symlog(obs)).sum(-1)


def vector_from(pred: jax.Array, name: str) -> jax.Array:
    """A vector decoder's output in observation units."""
    _check_vector_loss(name)
    return jax.nn.sigmoid(pred) if name == "bce" else symexp(pred)


# ---------------------------------------------------------------- images


def cnn_stages(image_hw: tuple[int, int], num_mults: int, minres: int = 4) -> int:
    """How many conv + 2x2 max-pool stages fit: DreamerV3 halves 64x64 four times down to 4x4.
    Smaller images get fewer stages (a 10x10 MinAtar frame: one, ending at 5x5)."""
    stages, size = 0, min(image_hw)
    while stages < num_mults and size // 2 >= minres:
        size //= 2
        stages += 1
    return max(1, stages)


def cnn_plan(image_hw: tuple[int, int], mults: tuple[int, ...], minres: int = 4,
             outer: bool = False) -> tuple[tuple[int, bool], ...]:
    """The CNN's stages as (channel multiplier, pooled) pairs. With `outer` (DreamerV3's option
    of that name) the first stage keeps the full resolution and the others pool; without it
    every stage pools (`cnn_stages` of them)."""
    first = [(mults[0], False)] if outer else []
    rest = mults[1:] if outer else mults
    pooled = cnn_stages(image_hw, len(rest), minres) if rest else 0
    return tuple(first + [(m, True) for m in rest[:pooled]])


class ImageEncoder(nn.Module):
    """DreamerV3's CNN: uint8 image -> /255 - 0.5 -> stages of (5x5 conv, 2x2 max-pool, RMSNorm,
    SiLU) with depth * mults channels -> flattened features. Any leading batch dims. With
    `outer` the first stage does not pool (see `cnn_plan`)."""

    depth: int = 4
    mults: tuple[int, ...] = (2, 3, 4, 4)
    minres: int = 4
    dtype: Any = jnp.float32
    outer: bool = False

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        lead, (h, w, c) = obs.shape[:-3], obs.shape[-3:]
        x = obs.reshape((-1, h, w, c)).astype(jnp.float32) / 255.0 - 0.5
        x = x.astype(self.dtype)
        for mult, pooled in cnn_plan((h, w), self.mults, self.minres, self.outer):
            x = Conv(self.depth * mult, (5, 5), dtype=self.dtype)(x)
            if pooled:
                x = nn.max_pool(x, (2, 2), (2, 2))
            x = nn.silu(RMSNorm()(x))
        return x.reshape(lead + (-1,)).astype(jnp.float32)


class ImageDecoder(nn.Module):
    """Features -> image: a linear projection to the encoder's last spatial grid, then stages of
    (x2 nearest upsampling, 5x5 conv, RMSNorm, SiLU) mirroring the encoder (no upsampling for an
    `outer` stage), the last one a conv to the image channels.

    `image_loss` picks the pixel loss against obs / 255, summed over pixels:
    - "mse" (DreamerV3's): the output is a sigmoid in [0, 1], trained with squared error;
    - "bce": the output is the sigmoid's logits, trained with binary cross-entropy. For binary
      frames (MinAtar, the Craftax grid): squared error through a sigmoid scales a missed
      pixel's gradient by p (1 - p), so a decoder that has learnt to draw nothing on a one-pixel
      object (a ball, a zombie) hardly learns it back; cross-entropy does not vanish there."""

    image_shape: tuple[int, int, int]
    depth: int = 4
    mults: tuple[int, ...] = (2, 3, 4, 4)
    minres: int = 4
    dtype: Any = jnp.float32
    outer: bool = False
    image_loss: str = "mse"

    @nn.compact
    def __call__(self, feat: jax.Array) -> jax.Array:
        h, w, c = self.image_shape
        plan = cnn_plan((h, w), self.mults, self.minres, self.outer)
        sizes = [(h, w)]  # the grid after each stage
        for _, pooled in plan:
            sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2) if pooled else sizes[-1])
        channels = [self.depth * m for m, _ in plan]
        lead = feat.shape[:-1]
        x = Linear(sizes[-1][0] * sizes[-1][1] * channels[-1], dtype=self.dtype)(feat)
        x = x.reshape((-1,) + sizes[-1] + (channels[-1],))
        x = nn.silu(RMSNorm()(x))
        for i in reversed(range(len(plan))):
            if plan[i][1]:
                x = jax.image.resize(x, (x.shape[0],) + sizes[i] + (x.shape[-1],), "nearest")
            last = i == 0
            x = Conv(c if last else channels[i - 1], (5, 5), dtype=self.dtype)(x)
            if not last:
                x = nn.silu(RMSNorm()(x))
        x = x.astype(jnp.float32).reshape(lead + (h, w, c))
        return x if _outputs_logits(self.image_loss) else jax.nn.sigmoid(x)

    def loss(self, pred: jax.Array, obs: jax.Array) -> jax.Array:
        return pixel_loss(pred, obs, self.image_loss)

    def to_obs(self, pred: jax.Array) -> jax.Array:
        return pixels_from(pred, self.image_loss)


def _outputs_logits(image_loss: str) -> bool:
    """Whether a decoder with this `image_loss` outputs logits ("bce") or a sigmoid ("mse")."""
    if image_loss not in IMAGE_LOSSES:
        raise ValueError(f"image_loss={image_loss!r}; allowed: one of {IMAGE_LOSSES}")
    return image_loss == "bce"


def pixel_loss(pred: jax.Array, obs: jax.Array, image_loss: str) -> jax.Array:
    """An image decoder's loss per frame, summed over the last three (H, W, C) dims."""
    target = obs.astype(jnp.float32) / 255.0
    if _outputs_logits(image_loss):
        return optax.sigmoid_binary_cross_entropy(pred, target).sum((-3, -2, -1))
    return jnp.square(pred - target).sum((-3, -2, -1))


def pixels_from(pred: jax.Array, image_loss: str) -> jax.Array:
    """An image decoder's output in pixel units, 0..255."""
    return 255.0 * (jax.nn.sigmoid(pred) if _outputs_logits(image_loss) else pred)


# ---------------------------------------------------------------- dict observations


def split_keys(shapes: dict[str, tuple[int, ...]]) -> tuple[list[str], list[str]]:
    """Image keys (rank 3) and vector keys (rank 1) of a dict observation spec, each sorted.
    Ranks are checked by EnvSpec; here only that the images can be stacked."""
    images = sorted(k for k, s in shapes.items() if len(s) == 3)
    vectors = sorted(k for k, s in shapes.items() if len(s) != 3)  # EnvSpec allows only rank 1
    if len({shapes[k][:2] for k in images}) > 1:
        raise ValueError(f"image keys {images} differ in height x width "
                         f"{[shapes[k][:2] for k in images]}; DreamerV3 stacks them on channels")
    return images, vectors


class _DictHead(nn.Module):
    """The settings the dict encoder and decoder share: the spec's (key, shape) pairs, the MLP
    (layers, units) for vector keys and the CNN (depth, mults, minres, outer) for image keys."""

    shapes: tuple[tuple[str, tuple[int, ...]], ...]  # (key, shape) pairs: hashable
    layers: int = 3
    units: int = 64
    depth: int = 4
    mults: tuple[int, ...] = (2, 3, 4, 4)
    minres: int = 4
    dtype: Any = jnp.float32
    outer: bool = False


class DictEncoder(_DictHead):
    """DreamerV3's encoder for dict observations: the image keys stacked on channels through the
    CNN, the vector keys concatenated through the MLP, the two outputs concatenated."""

    @nn.compact
    def __call__(self, obs: dict[str, jax.Array]) -> jax.Array:
        images, vectors = split_keys(dict(self.shapes))
        outs = []
        if images:
            x = jnp.concatenate([obs[k] for k in images], -1)
            outs.append(ImageEncoder(self.depth, self.mults, self.minres, self.dtype, self.outer)(x))
        if vectors:
            x = jnp.concatenate([obs[k].astype(jnp.float32) for k in vectors], -1)
            outs.append(VectorEncoder(self.layers, self.units, self.dtype)(x))
        return jnp.concatenate(outs, -1)


class DictDecoder(_DictHead):
    """Features -> a prediction per key: one image decoder for all image keys (split back by
    channels; see ImageDecoder for `image_loss`) and one MLP for all vector keys (split back;
    see VectorDecoder for `vector_loss`)."""

    image_loss: str = "mse"
    vector_loss: str = "mse"

    @nn.compact
    def __call__(self, feat: jax.Array) -> dict[str, jax.Array]:
        shapes = dict(self.shapes)
        images, vectors = split_keys(shapes)
        out = {}
        if images:
            h, w = shapes[images[0]][:2]
            channels = [shapes[k][2] for k in images]
            x = ImageDecoder((h, w, sum(channels)), self.depth, self.mults, self.minres,
                             self.dtype, self.outer, self.image_loss)(feat)
            out.update(zip(images, jnp.split(x, np.cumsum(channels)[:-1], -1)))
        if vectors:
            sizes = [shapes[k][0] for k in vectors]
            x = VectorDecoder(sum(sizes), self.layers, self.units, self.dtype,
                              self.vector_loss)(feat)
            out.update(zip(vectors, jnp.split(x, np.cumsum(sizes)[:-1], -1)))
        return out

    def loss(self, pred: dict[str, jax.Array], obs: dict[str, jax.Array]) -> jax.Array:
        """The sum over keys of each key's decoder loss (per time step)."""
        images, vectors = split_keys(dict(self.shapes))
        return sum([pixel_loss(pred[k], obs[k], self.image_loss) for k in images]
                   + [vector_loss(pred[k], obs[k], self.vector_loss) for k in vectors])

    def to_obs(self, pred: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """Predictions in observation units: pixels 0..255 and vectors as observed."""
        images, _ = split_keys(dict(self.shapes))
        return {k: pixels_from(v, self.image_loss) if k in images
                else vector_from(v, self.vector_loss)
                for k, v in pred.items()}

