"""Views of an anomaly-detection window, each scored against its own memory.

One embedding compared as a whole hides what its parts see: on machine types the embedder
never heard, its spectrum branch alone separated pump anomalies better than the whole vector
(pAUC 81 vs 67), and per-bin STFT statistics, which learn nothing, came close to it on slider
(AUC 93 vs 96). So a calibration may keep several views of every window, each with its own
nearest-neighbour memory, and combine their distances after normalising each by its own
held-out calibration distances (GenRep's domain normalisation, ``004_d4225f15e0df5a46.txt``
Section 2.3: Z-scores of each memory bank's distances; here per view, on log distances).
Together they raised the leave-one-machine-type-out official score from 66.3 to 70.7
(README, "On a machine type the embedder never heard"); the PCA residual view, added later,
raised it from 63.3 to 64.8 over three draws in one command (pump's AUC from 57.5 to 66.0),
and put the node above both baselines on fan, pump and slider (README, "The PCA residual
view"). Averaging the views within each representation first (:func:`representation`:
the embedding and its branches are one network) raised it again, from 64.8 to 67.8
(README, "One vote per representation"). The level statistics, a fourth representation,
raised it from 67.8 to 70.9 over three draws in one command, higher on every draw, and put
the node above both baselines on fan, pump and slider on every draw (README, "The level
view"). Keeping the embedder's spectrum branch as its only view, without the embedding and
the spectrogram branch, raised it from 70.8 to 73.3 over the five draws it was chosen on
and from 71.1 to 71.9 over three fresh draws, for pump and fan at slider's cost (README,
"The spectrum branch alone").

Views (``asd.views`` of the node config)
    ``embedding``
        The embedder's output (every ensemble member), as the single-view backend scores it.
    ``branches``
        Each branch of the embedder separately (thesis Tables 14 and 15: one view per
        spectrogram resolution and one for the spectrum), named ``branch_<input>``.
    ``branch_spectrogram``, ``branch_spectrum``
        One branch alone (:data:`BRANCH_VIEWS`), in place of ``branches``. The node's default
        keeps the spectrum branch as the embedder's only view: on machine types the embedder
        never heard, the spectrogram branch was the weakest view on every type (pump source
        AUC 23-60 over five draws, below chance on four), and the embedding, which
        concatenates it, pulled the embedder's vote down with it (README, "The spectrum
        branch alone"). A single branch without the embedding runs cut out of the model
        (:meth:`edge.model.AsdEmbedder.embed_branch`): the spectrum branch is about a fifth
        of the embedder's time.
    ``stft_statistics``
        Per-bin mean and standard deviation over time of the window's log-magnitude STFT
        (:func:`stft_statistics`): no learning at all.
    ``level_statistics``
        Mean and standard deviation over time of the window's frame levels in dBFS
        (:func:`level_statistics`), compared by Euclidean distance in dB: a machine that runs
        louder, quieter or less steadily than during calibration. No learning; it assumes the
        microphone's gain stays as it was at calibration.
    ``pca_residual``
        How far the window's log-mel frames lie from the principal subspace of the
        calibration's (:func:`fit_pca`, :func:`pca_residual`): the DCASE autoencoder
        baseline's input and score with a linear autoencoder fitted at calibration, no
        training on the workstation. Its "memory" is that subspace, not a set of vectors.

Entry points: :data:`VIEWS`, :func:`view_names`, :func:`view_metric`, :func:`window_views`,
:func:`stft_statistics`, :func:`level_statistics`, :func:`logmel_blocks`, :func:`fit_pca`,
:func:`pca_residual`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from edge.frontend import as_mono, asd_features, logmel_frames, magnitude_spectrogram
from edge.levels import SILENCE_DBFS, frame_rms_dbfs

__all__ = ["VIEWS", "BRANCH_VIEWS", "EMBEDDING_VIEW", "PCA_VIEW", "LEVEL_VIEW",
           "PCA_COMPONENTS", "LOGMEL_FRAMES", "LOGMEL_DIM", "view_names", "view_members",
           "view_metric", "representation", "prepare_views", "window_views", "stft_statistics",
           "level_statistics", "logmel_blocks", "fit_pca", "pca_from_moments", "pca_residual"]

#: Config names of the embedder's single branches (``branch_<input>``, the ASD frontend's
#: inputs, :attr:`edge.frontend.AsdFrontendParams.input_shapes`).
BRANCH_VIEWS = ("branch_spectrogram", "branch_spectrum")
#: The views a config may ask for, in the order they are scored.
VIEWS = ("embedding", "branches", *BRANCH_VIEWS, "stft_statistics", "level_statistics",
         "pca_residual")
#: The one view a calibration made before views existed has (scored without normalisation).
EMBEDDING_VIEW = "embedding"
#: The view scored by its distance to a principal subspace instead of nearest neighbours.
PCA_VIEW = "pca_residual"
#: The view compared by Euclidean distance (dB) instead of cosine distance.
LEVEL_VIEW = "level_statistics"
#: Principal components the PCA residual view keeps: the bottleneck width of the DCASE
#: autoencoder baseline it linearises.
PCA_COMPONENTS = 8
#: Log-mel frames per vector of the PCA residual view, and the vector length (128 mel bands).
LOGMEL_FRAMES = 5
LOGMEL_DIM = 128 * LOGMEL_FRAMES


def _checked_waveform(waveform: np.ndarray, need: int, what: str, name: str = "") -> np.ndarray:
    """``waveform`` as 1-D float32; ``ValueError`` if it is not 1-D, not finite, or shorter
    than ``need`` samples (the message names ``what`` needs them, as ``name`` + ``need``)."""
    y = as_mono(waveform, np.float32)
    if len(y) < need:
        raise ValueError(f"the waveform has {len(y)} samples; {what} need at least {name}{need}")
    if not np.all(np.isfinite(y)):
        raise ValueError("the waveform contains NaN or infinite samples")
    return y


def stft_statistics(waveform: np.ndarray, *, n_fft: int = 1024, hop_length: int = 512,
                    floor: float = 1e-5, magnitude: np.ndarray | None = None) -> np.ndarray:
    """Per-bin mean and standard deviation over time of the log-magnitude STFT, L2-normalised.

    Parameters
    ----------
    waveform : np.ndarray, shape (n_samples,), float
        Mono waveform in [-1, 1]; at least ``n_fft`` samples.
    n_fft : int, keyword-only
        STFT window length in samples (periodic Hann), 1024.
    hop_length : int, keyword-only
        STFT hop in samples, 512.
    floor : float, keyword-only
        Magnitude floor before the logarithm (-100 dB re 1).
    magnitude : np.ndarray, float32, keyword-only, optional
        Shape ``(1 + (n_samples - n_fft) // hop_length, n_fft // 2 + 1)``: the waveform's
        :func:`edge.frontend.magnitude_spectrogram`, when the caller has it already
        (:func:`window_views` computes it once for every view and the embedder).

    Returns
    -------
    np.ndarray, shape (2 * (n_fft // 2 + 1),), float32
        ``[mean_t L[t, :], std_t L[t, :]]`` with ``L`` in dB, scaled to unit L2 norm; over
        the frames whose RMS is at least :data:`edge.levels.SILENCE_DBFS` (all frames when
        none is), so that a moment of digital silence does not pass for a change of the
        machine's sound.

    Raises
    ------
    ValueError
        If the waveform is not 1-D, not finite, or shorter than ``n_fft``, or ``magnitude``
        has not the shape of its spectrogram.
    """
    y = _checked_waveform(waveform, n_fft, "the STFT statistics", "n_fft = ")
    mag = magnitude_spectrogram(y, n_fft, hop_length) if magnitude is None else magnitude
    sounding = frame_rms_dbfs(y, n_fft, hop_length) >= SILENCE_DBFS
    if mag.shape != (len(sounding), n_fft // 2 + 1):
        raise ValueError(f"magnitude: expected the spectrogram of the {len(y)} samples, shape "
                         f"{(len(sounding), n_fft // 2 + 1)}, got {mag.shape}")
    if sounding.any():
        mag = mag[sounding]
    log_mag = 20.0 * np.log10(np.maximum(mag, floor))
    v = np.concatenate([log_mag.mean(axis=0), log_mag.std(axis=0)]).astype(np.float64)
    return (v / max(np.linalg.norm(v), 1e-12)).astype(np.float32)


def level_statistics(waveform: np.ndarray, *, n_fft: int = 1024,
                     hop_length: int = 512) -> np.ndarray:
    """Mean and standard deviation over time of a window's frame levels, in dBFS.

    The loudness of a machine and how steady it is: on machine types the embedder never
    heard, the level of a clip alone, against the nearest calibration clip's, separated
    fan anomalies from normal clips better than the embedder did (source AUC 76 vs 66
    over three draws), and as a fourth representation it raised the leave-one-machine-type-out
    official score from 67.8 to 70.9 (README, "The level view"). Compared by Euclidean distance
    (:func:`view_metric`), so a change of 3 dB counts the same at any level.

    Parameters
    ----------
    waveform : np.ndarray, shape (n_samples,), float
        Mono waveform in [-1, 1]; at least ``n_fft`` samples.
    n_fft, hop_length : int, keyword-only
        Frame length and hop in samples (:func:`edge.levels.frame_rms_dbfs`).

    Returns
    -------
    np.ndarray, shape (2,), float32
        ``[mean_t l[t], std_t l[t]]``, ``l`` the frame RMS levels in dBFS, over the frames
        that share no sample with a frame below :data:`edge.levels.SILENCE_DBFS` (all
        frames when none is left), as :func:`stft_statistics` leaves out digital silence.

    Raises
    ------
    ValueError
        If the waveform is not 1-D, not finite, or shorter than ``n_fft``.
    """
    y = _checked_waveform(waveform, n_fft, "the level statistics", "n_fft = ")
    level = frame_rms_dbfs(y, n_fft, hop_length)
    # A frame that shares samples with a silent one is part silence: its level would pass
    # for a dip of the machine (a window starting with a gap moved its spread by a third).
    reach = -(-n_fft // hop_length) - 1  # neighbours on each side that share samples
    silent = level < SILENCE_DBFS
    near = np.convolve(silent, np.ones(2 * reach + 1), mode="same") > 0 if reach else silent
    if (~near).any():
        level = level[~near]
    return np.array([level.mean(), level.std()], np.float32)


def logmel_blocks(waveform: np.ndarray, *, n_fft: int = 1024, hop_length: int = 512,
                  sample_rate: int = 16000, magnitude: np.ndarray | None = None) -> np.ndarray:
    """A window's log-mel frames in non-overlapping blocks of :data:`LOGMEL_FRAMES`.

    The DCASE 2023 autoencoder baseline's input vectors (:func:`edge.frontend.stacked_logmel`:
    128 mel bands, 5 consecutive frames, in dB) taken every 5 frames instead of every frame,
    so that the blocks cover the window once; cut straight from the frames
    (:func:`edge.frontend.logmel_frames`) rather than stacking every vector first.

    A block with a frame below :data:`edge.levels.SILENCE_DBFS` (RMS of the frame's
    ``n_fft`` samples) holds no machine sound: it is all NaN, and :func:`fit_pca` and
    :func:`pca_residual` leave it out. Digital silence reads -156 dB in every band, so one
    such block would otherwise outweigh the other 61 of a window: the first tenth of a
    second of a capture, or a dropout, would score far above any anomaly.

    Parameters
    ----------
    waveform : np.ndarray, shape (n_samples,), float
        Mono waveform in [-1, 1]; at least ``max(n_fft, 4 hop_length)`` samples.
    n_fft, hop_length : int, keyword-only
        STFT window and hop in samples.
    sample_rate : int, keyword-only
        Hz.
    magnitude : np.ndarray, float32, keyword-only, optional
        The waveform's :func:`edge.frontend.magnitude_spectrogram` (frames not centred),
        when the caller has it already; the centred frames are cut from it
        (:func:`edge.frontend.centred_magnitude`).

    Returns
    -------
    np.ndarray, shape (n_blocks, LOGMEL_DIM), float32
        ``n_blocks = (1 + n_samples // hop_length) // 5`` (62 for 10 s); silent blocks NaN.

    Raises
    ------
    ValueError
        If the waveform is not 1-D, not finite, or too short, or ``magnitude`` has not the
        shape of its spectrogram.
    """
    y = _checked_waveform(waveform, max(n_fft, (LOGMEL_FRAMES - 1) * hop_length),
                          "the log-mel blocks")
    # every LOGMEL_FRAMES-th stacked vector: the frames cut into consecutive blocks
    frames = logmel_frames(y, sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length,
                           n_mels=LOGMEL_DIM // LOGMEL_FRAMES, magnitude=magnitude)
    n_blocks = len(frames) // LOGMEL_FRAMES
    blocks = np.ascontiguousarray(frames[:n_blocks * LOGMEL_FRAMES].reshape(n_blocks, LOGMEL_DIM))
    half = n_fft // 2  # the frames' samples: centred, as logmel_frames pads
    level = frame_rms_dbfs(np.pad(y, (half, half)), n_fft, hop_length)[:n_blocks * LOGMEL_FRAMES]
    blocks[level.reshape(n_blocks, LOGMEL_FRAMES).min(axis=1) < SILENCE_DBFS] = np.nan
    return blocks


def fit_pca(blocks: np.ndarray, n_components: int = PCA_COMPONENTS) -> np.ndarray:
    """The principal subspace of normal log-mel blocks: a linear autoencoder.

    The DCASE autoencoder baseline (Dohi et al. 2023, Section 4) learns to reconstruct
    normal log-mel vectors through an 8-unit bottleneck and scores the reconstruction
    error; a linear autoencoder trained with the squared error spans the principal
    subspace (Baldi and Hornik 1989), so PCA gives it in closed form from a few minutes of
    calibration audio, on the node, without gradient training.

    Parameters
    ----------
    blocks : np.ndarray, shape (n, D), float
        Normal vectors (:func:`logmel_blocks` of calibration windows); rows with a NaN
        (silent blocks) are left out, and at least two must remain.
    n_components : int
        Subspace dimension, at most ``min(n_sounding - 1, D)``.

    Returns
    -------
    np.ndarray, shape (1 + n_components, D), float32
        Row 0 the mean vector, then orthonormal principal directions by decreasing
        variance.

    Raises
    ------
    ValueError
        Fewer than two sounding vectors, a non-2-D array, or too many components.
    """
    x = np.asarray(blocks, np.float64)
    if x.ndim != 2:
        raise ValueError(f"need vectors of shape (n, D), got {x.shape}")
    x = x[~np.isnan(x).any(axis=1)]
    if len(x) < 2:
        raise ValueError(f"need at least two vectors that are not silent (NaN), got {len(x)}")
    if not 1 <= n_components <= min(len(x) - 1, x.shape[1]):
        raise ValueError(f"n_components must be 1..{min(len(x) - 1, x.shape[1])}, got "
                         f"{n_components}")
    mean = x.mean(axis=0)
    return pca_from_moments(x.sum(axis=0), x.T @ x, len(x), n_components, mean)


def pca_from_moments(total: np.ndarray, gram: np.ndarray, n: int, n_components: int,
                      mean: np.ndarray | None = None) -> np.ndarray:
    """:func:`fit_pca` from the moments of the vectors: ``total`` (D,) their sum, ``gram``
    (D, D) the sum of their outer products, ``n`` their number (float64); ``mean`` is
    ``total / n`` when not given. Held-out fits (:mod:`calibration.calibrate`) subtract the
    moments of the windows they leave out instead of stacking the rest again."""
    mean = total / n if mean is None else mean
    cov = gram / n - np.outer(mean, mean)
    _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues
    comps = vecs[:, ::-1][:, :n_components].T
    return np.concatenate([mean[None], comps]).astype(np.float32)


def pca_residual(blocks: np.ndarray, model: np.ndarray) -> np.ndarray:
    """Mean squared distance of each window's log-mel blocks from the principal subspace.

    The DCASE autoencoder baseline's score (mean over a clip's vectors of each vector's
    mean squared reconstruction error) with the linear autoencoder of :func:`fit_pca`, over
    the window's sounding blocks (silent ones are NaN, :func:`logmel_blocks`).

    Parameters
    ----------
    blocks : np.ndarray, shape (n_windows, n_blocks * D) or (n_blocks * D,), float
        Every window's :func:`logmel_blocks`, flattened (as :func:`window_views` gives them).
    model : np.ndarray, shape (1 + k, D), float32
        :func:`fit_pca`.

    Returns
    -------
    np.ndarray, shape (n_windows,), float64, >= 0
        In dB squared; NaN for a window without a sounding block (the view has nothing to
        say about it: :func:`edge.backend.normalised_view_score` leaves it out).

    Raises
    ------
    ValueError
        If a window's length is not a multiple of ``D``.
    """
    model = np.asarray(model, np.float64)
    d = model.shape[1]
    x = np.asarray(blocks, np.float64)
    x = x[None] if x.ndim == 1 else x
    if x.shape[1] % d:
        raise ValueError(f"a window has {x.shape[1]} values, not a multiple of the subspace's "
                         f"dimension {d}")
    z = x.reshape(len(x), -1, d) - model[0]
    proj = (z @ model[1:].T) @ model[1:]
    per_block = np.mean((z - proj) ** 2, axis=2)  # (n_windows, n_blocks), NaN where silent
    sounding = ~np.isnan(per_block)
    n = sounding.sum(axis=1)
    total = np.where(sounding, per_block, 0.0).sum(axis=1)
    return np.divide(total, n, out=np.full(len(x), np.nan), where=n > 0)


def _check(views: Sequence[str]) -> tuple[str, ...]:
    views = tuple(views)
    unknown = [v for v in views if v not in VIEWS]
    if unknown or not views or len(set(views)) != len(views):
        raise ValueError(f"views {list(views)}: expected one or more distinct names of "
                         f"{', '.join(VIEWS)}")
    single = [v for v in BRANCH_VIEWS if v in views]
    if single and "branches" in views:
        raise ValueError(f"views {list(views)}: 'branches' already holds {', '.join(single)}; "
                         f"name either all branches or single ones")
    return tuple(v for v in VIEWS if v in views)


def _branch_slices(embedder) -> dict[str, np.ndarray]:
    """Column indices of each branch in the embedding, over all ensemble members."""
    inputs = list(embedder.metadata["inputs"])
    k = embedder.n_members
    member = embedder.embedding_dim // k
    if member % len(inputs):
        raise ValueError(f"model {embedder.model_id}: a member's {member} dimensions do not "
                         f"split into its {len(inputs)} branches")
    width = member // len(inputs)
    # trainer.model.build_embedder concatenates the branches in input order, spectrum last.
    return {f"branch_{name}": np.concatenate([np.arange(m * member + b * width,
                                                        m * member + (b + 1) * width)
                                              for m in range(k)])
            for b, name in enumerate(inputs)}


def view_names(embedder, views: Sequence[str]) -> tuple[str, ...]:
    """The names of the scored views that ``views`` (config names) expand to.

    Parameters
    ----------
    embedder : edge.model.AsdEmbedder
    views : sequence of str
        Names from :data:`VIEWS`.

    Returns
    -------
    tuple of str
        ``"embedding"``, ``"branch_<input>"`` for every branch (``"branches"``) or for the
        one named, ``"stft_statistics"``, ``"level_statistics"``, ``"pca_residual"``, in that
        order, as far as asked for.

    Raises
    ------
    ValueError
        An unknown, repeated or missing view name, ``"branches"`` together with a single
        branch, a single branch the model does not have, or a model whose members do not
        split into its branches.
    """
    out: list[str] = []
    for v in _check(views):
        if v == "branches":
            out += list(_branch_slices(embedder))
        elif v in BRANCH_VIEWS:
            if v not in _branch_slices(embedder):
                raise ValueError(f"view {v!r}: model {embedder.model_id} has the branches "
                                 f"{', '.join(_branch_slices(embedder))}")
            out.append(v)
        else:
            out.append(v)
    return tuple(out)


def representation(name: str) -> str:
    """The representation a scored view comes from: ``"embedder"`` for the embedding and its
    branches (one network: their distances rise and fall together), otherwise the view's own
    name. The node averages its views' standardised distances within a representation first,
    then over representations (:func:`edge.backend.normalised_view_score`), so that the
    embedder's three views of a two-branch model count once, like the STFT statistics and
    the PCA residual."""
    return "embedder" if name == EMBEDDING_VIEW or name.startswith("branch_") else name


def view_members(embedder, name: str) -> int:
    """How many ensemble members a view's vector holds (its cosine distances are summed
    over them, :func:`edge.backend.min_cosine_distance`): the model's for the embedding and
    its branches, 1 for the STFT statistics, the level statistics and the PCA residual."""
    return embedder.n_members if representation(name) == "embedder" else 1


def view_metric(name: str) -> str:
    """How a view's vector is compared with its memory.

    Returns
    -------
    {"cosine", "euclidean", "subspace"}
        ``"subspace"``: the PCA residual (:func:`pca_residual`, its memory a principal
        subspace); ``"euclidean"``: the level statistics (dB,
        :func:`edge.backend.min_euclidean_distance`); ``"cosine"``: every other view
        (:func:`edge.backend.min_cosine_distance`, member-normalised memory).
    """
    return {PCA_VIEW: "subspace", LEVEL_VIEW: "euclidean"}.get(name, "cosine")


def _branch_alone(embedder, names: Sequence[str]) -> str | None:
    """The input of the one branch :func:`window_views` runs alone for ``names``, if any."""
    branches = [n for n in names if n.startswith("branch_")]
    if EMBEDDING_VIEW in names or len(branches) != 1 or embedder.n_members != 1:
        return None
    return branches[0][len("branch_"):]


def prepare_views(embedder, names: Sequence[str]) -> None:
    """Cut out now the branch that :func:`window_views` runs alone for ``names``, if any
    (:meth:`edge.model.AsdEmbedder.prepare_branch`).

    Parameters
    ----------
    embedder : edge.model.AsdEmbedder
    names : sequence of str
        Scored view names (:func:`view_names`).

    Raises
    ------
    edge.tflite.ModelError
        The branch cannot be cut out of the model.
    """
    alone = _branch_alone(embedder, names)
    if alone is not None:
        embedder.prepare_branch(alone)


def window_views(embedder, window: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The vectors of one window in the named views.

    One magnitude STFT of the window serves the embedder's main spectrogram input, the STFT
    statistics and the log-mel blocks (:func:`edge.frontend.centred_magnitude`), with the
    same numbers as each computing its own: the node's anomaly path computed it three times.
    A single branch asked for without the embedding runs alone
    (:meth:`edge.model.AsdEmbedder.embed_branch`): the same direction as its slice of the
    embedding, for a fifth of the time with the spectrum branch.

    Parameters
    ----------
    embedder : edge.model.AsdEmbedder
    window : np.ndarray, shape (n_samples,), float32
        One analysis window, 16 kHz mono.
    names : sequence of str
        Scored view names (:func:`view_names`).

    Returns
    -------
    dict of str -> np.ndarray, shape (D_view,), float32
        Not normalised; the backend normalises per member. ``pca_residual``: the window's
        :func:`logmel_blocks`, flattened, as float16 (a calibration keeps every window's:
        80 kB per 10 s window; dB values in steps of at most 0.125 dB, a rounding error far
        below the residuals of tens of dB squared).

    Raises
    ------
    ValueError
        A view cannot be computed from the window (too short, not finite) or is unknown.
    edge.tflite.ModelError
        A single branch cannot be cut out of the model.
    """
    fe = embedder.frontend
    window = as_mono(window, np.float32)
    # One STFT for the embedder's main spectrogram input and the views that read it (the
    # views check the window themselves, a short one included).
    mag = (magnitude_spectrogram(window, fe.n_fft, fe.hop_length)
           if len(window) >= fe.n_fft else None)
    slices = _branch_slices(embedder) if any(n.startswith("branch_") for n in names) else {}
    branches = [n for n in names if n in slices]
    out: dict[str, np.ndarray] = {}
    if EMBEDDING_VIEW in names or branches:
        # the embedder pads or cuts the window to its clip length; a branch run alone needs
        # its own input only
        alone = _branch_alone(embedder, names)
        feats = asd_features(window, fe, magnitude=mag if len(window) == fe.clip_samples
                             else None, inputs=None if alone is None else (alone,))
        if alone is not None:
            # one branch scored alone: run only it (the default's spectrum branch, a fifth
            # of the embedder's time); the backend normalises it as it would the slice
            out[branches[0]] = embedder.embed_branch(feats, alone)
        else:
            emb = embedder.embed_features(feats)
            out.update({n: emb[slices[n]] for n in branches})
            if EMBEDDING_VIEW in names:
                out[EMBEDDING_VIEW] = emb
    for name in (n for n in names if n not in out):
        if name == "stft_statistics":
            out[name] = stft_statistics(window, n_fft=fe.n_fft, hop_length=fe.hop_length,
                                        magnitude=mag)
        elif name == LEVEL_VIEW:
            out[name] = level_statistics(window, n_fft=fe.n_fft, hop_length=fe.hop_length)
        elif name == PCA_VIEW:  # float16: a calibration keeps every window's blocks
            out[name] = logmel_blocks(window, n_fft=fe.n_fft, hop_length=fe.hop_length,
                                      sample_rate=fe.sample_rate,
                                      magnitude=mag).reshape(-1).astype(np.float16)
        else:
            raise ValueError(f"unknown view {name!r} for model {embedder.model_id}")
    return out
