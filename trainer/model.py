"""The ASD embedder: spectrum branch + spectrogram branch (thesis Tables 14 and 15).

No bias terms anywhere, no bounded activations, BatchNorm + ReLU after every
convolutional and dense layer except the embedding layers (thesis Section 5.3.1), so the
network cannot learn the trivial constant solution.
"""
from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from edge.frontend import AsdFrontendParams

__all__ = ["AsdModelParams", "build_asd_embedder", "build_ensemble", "KwsModelParams", "build_kws_embedder"]


@dataclass(frozen=True)
class AsdModelParams:
    """Architecture hyperparameters.

    Parameters
    ----------
    embedding_dim : int
        Per-branch embedding size (128 in the thesis); the model outputs
        ``2 * embedding_dim`` (both branches concatenated).
    resnet_widths : tuple of int
        Channels of the four residual stages (16, 32, 64, 128 in Table 15).
    spectrum_filters : int
        Channels of the spectrum branch's 1-D convolutions (128 in Table 14).
    spectrum_dense_layers : int
        Hidden dense layers of the spectrum branch (4 in Table 14).
    """

    embedding_dim: int = 128
    resnet_widths: tuple[int, ...] = (16, 32, 64, 128)
    spectrum_filters: int = 128
    spectrum_dense_layers: int = 4


def _bn_relu(x):
    return layers.ReLU()(layers.BatchNormalization()(x))


def _residual_block(x, filters: int):
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = layers.BatchNormalization()(
            layers.Conv2D(filters, 1, use_bias=False)(x))
    y = _bn_relu(layers.Conv2D(filters, 3, padding="same", use_bias=False)(x))
    y = layers.BatchNormalization()(layers.Conv2D(filters, 3, padding="same", use_bias=False)(y))
    return layers.ReLU()(layers.Add()([shortcut, y]))


def _spectrogram_branch(inp, n_frames: int, n_bins: int, params: AsdModelParams, name: str):
    """Thesis Table 15 on one spectrogram input; returns the (batch, embedding_dim) output."""
    x = layers.Reshape((n_frames, n_bins, 1))(inp)
    x = _bn_relu(layers.Conv2D(params.resnet_widths[0], 7, strides=2, padding="same",
                               use_bias=False)(x))
    x = layers.MaxPooling2D(3, strides=2)(x)
    for i, w in enumerate(params.resnet_widths):
        if i > 0:
            x = layers.MaxPooling2D(2, padding="same")(x)
        x = _residual_block(x, w)
        x = _residual_block(x, w)
    x = layers.MaxPooling2D((x.shape[1], 1))(x)
    x = layers.Flatten()(x)
    return layers.Dense(params.embedding_dim, use_bias=False, name=f"{name}_embedding")(x)


def build_asd_embedder(frontend: AsdFrontendParams = AsdFrontendParams(),
                       params: AsdModelParams = AsdModelParams(), name: str = "asd_embedder"
                       ) -> keras.Model:
    """Build the multi-branch embedding model.

    Spectrogram branch (Table 15): 7x7 convolution with stride 2, 3x3 max pooling with
    stride 2, four stages of two residual blocks (the stages after the first start with a
    2x2 max pooling), max pooling over all remaining time steps, flatten, linear
    embedding layer. For a 10 s clip the stage outputs are 77x128x16, 39x64x32,
    20x32x64 and 10x16x128, as in the table. With
    ``frontend.extra_n_ffts`` every further spectrogram resolution gets a branch of its
    own (multi-resolution, ``002_aace9358fd6fb51a.txt`` Section III-A1).

    Spectrum branch (Table 14): three strided 1-D convolutions (kernels 256, 64, 16;
    strides 64, 32, 4, chosen so that an 80000-bin input gives the table's 1250, 40 and
    10 steps), flatten, ``spectrum_dense_layers`` dense layers, linear embedding layer.

    Parameters
    ----------
    frontend : AsdFrontendParams
        Fixes the inputs and their shapes (:attr:`AsdFrontendParams.input_shapes`).
    params : AsdModelParams

    Returns
    -------
    keras.Model
        One float32 input per entry of ``frontend.input_shapes`` (named as there, batch
        first); output (batch, n_branches * embedding_dim) float32: the branch embeddings
        concatenated in input order, the spectrum branch last; not normalised (the
        backend L2-normalises).
    """
    shapes = frontend.input_shapes
    inputs = {n: keras.Input(shape, name=n) for n, shape in shapes.items()}
    branches = [_spectrogram_branch(inputs[n], shapes[n][0], shapes[n][1], params, n)
                for n in frontend.spectrogram_inputs]

    y = layers.Reshape((frontend.spectrum_bins, 1))(inputs["spectrum"])
    for kernel, stride in ((256, 64), (64, 32), (16, 4)):
        y = _bn_relu(layers.Conv1D(params.spectrum_filters, kernel, strides=stride,
                                   padding="same", use_bias=False)(y))
    y = layers.Flatten()(y)
    for _ in range(params.spectrum_dense_layers):
        y = _bn_relu(layers.Dense(params.embedding_dim, use_bias=False)(y))
    branches.append(layers.Dense(params.embedding_dim, use_bias=False,
                                 name="spectrum_embedding")(y))

    out = layers.Concatenate(name="embedding")(branches)
    return keras.Model(list(inputs.values()), out, name=name)


def build_ensemble(members: list[keras.Model]) -> keras.Model:
    """One model running several trained embedders on shared inputs.

    The output is the members' outputs concatenated; the backend splits it back into
    ``len(members)`` slices and sums the members' anomaly scores
    (:func:`edge.backend.min_cosine_distance`), so the node loads one int8 bundle.

    Parameters
    ----------
    members : list of keras.Model
        Built by :func:`build_asd_embedder` with the same frontend.

    Returns
    -------
    keras.Model
        Inputs as each member; output (batch, sum of member dims) float32.
    """
    if len(members) == 1:
        return members[0]
    names = [t.name.split(":")[0] for t in members[0].inputs]
    inputs = {n: keras.Input(tuple(t.shape[1:]), name=n) for n, t in zip(names, members[0].inputs)}
    outs = []
    for i, m in enumerate(members):
        m.name = f"member_{i}"
        outs.append(m([inputs[n] for n in names]))
    out = layers.Concatenate(name="embedding")(outs)
    return keras.Model(list(inputs.values()), out, name="asd_ensemble")


@dataclass(frozen=True)
class KwsModelParams:
    """TACos embedder hyperparameters (thesis Table 30).

    Parameters
    ----------
    embedding_dim : int
        ``D`` (128).
    resnet_widths : tuple of int
        Channels of the four residual stages (16, 32, 64, 128).
    dropout : float
        After each residual stage (0.2).
    """

    embedding_dim: int = 128
    resnet_widths: tuple[int, ...] = (16, 32, 64, 128)
    dropout: float = 0.2


def build_kws_embedder(frontend, params: KwsModelParams = KwsModelParams()) -> keras.Model:
    """Build the temporal ResNet of thesis Table 30 (line 2103).

    Four stages of two residual blocks (two 3x3 convolutions each); stages 2-4 halve the
    mel axis only (1x2 max pooling), so the ``T`` time steps are kept; dropout after every
    stage; 1x8 max pooling over the remaining mel bins; a linear (bias-free) dense layer
    per time step. The input is the normalised log-Mel segment in dB (``[-top_db, 0]``),
    rescaled to about ``[-1, 1]`` inside the model.

    Parameters
    ----------
    frontend : edge.kws_frontend.KwsFrontendParams
    params : KwsModelParams

    Returns
    -------
    keras.Model
        Input ``segment`` (batch, T, n_mels) float32; output (batch, T, embedding_dim)
        float32, not normalised. For the defaults: 16x64 in, stage outputs 16x64x16,
        16x32x32, 16x16x64, 16x8x128, and 16x128 out, as in Table 30.
    """
    T, F = frontend.segment_frames, frontend.n_mels
    inp = keras.Input((T, F), name="segment")
    x = layers.Reshape((T, F, 1))(inp)
    x = layers.Rescaling(2.0 / frontend.top_db, offset=1.0)(x)
    for i, w in enumerate(params.resnet_widths):
        if i > 0:
            x = layers.MaxPooling2D((1, 2))(x)
        x = _residual_block(x, w)
        x = _residual_block(x, w)
        x = layers.Dropout(params.dropout)(x)
    x = layers.MaxPooling2D((1, x.shape[2]))(x)
    x = layers.Reshape((T, params.resnet_widths[-1]))(x)
    out = layers.Dense(params.embedding_dim, use_bias=False, name="embedding")(x)
    return keras.Model(inp, out, name="tacos_embedder")
