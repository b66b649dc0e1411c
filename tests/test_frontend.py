"""The shared NumPy frontend against independent references (SciPy), on real clips."""
import numpy as np
import pytest
import scipy.signal

from edge.audio import load_audio
from edge.frontend import AsdFrontendParams, asd_features, magnitude_spectrogram


@pytest.fixture(scope="module")
def clip(mimii):
    return load_audio(mimii["normal"][0])


def test_spectrogram_matches_scipy_stft(clip):
    p = AsdFrontendParams()
    ours = magnitude_spectrogram(clip[: p.clip_samples], p.n_fft, p.hop_length)
    f, t, z = scipy.signal.stft(clip[: p.clip_samples], fs=16000, window="hann", nperseg=1024,
                                noverlap=1024 - 512, boundary=None, padded=False,
                                detrend=False, return_onesided=True, scaling="spectrum")
    ref = np.abs(z).T * np.hanning(1025)[:-1].sum()  # scipy scales by 1 / window sum
    assert ours.shape == ref.shape == (311, 513)
    np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-4 * ref.max())


def test_tmn_and_shapes(clip):
    p = AsdFrontendParams()
    f = asd_features(clip, p)
    spec, dft = f["spectrogram"], f["spectrum"]
    assert list(f) == ["spectrogram", "spectrum"]
    assert spec.shape == (p.n_frames, p.n_bins) == (311, 513)  # thesis Table 15 input
    assert dft.shape == (80000,)  # thesis Table 14 input
    assert spec.dtype == dft.dtype == np.float32
    np.testing.assert_allclose(spec.mean(axis=0), 0, atol=1e-3 * np.abs(spec).max())
    # TMN removes a stationary tone's constant magnitude; the raw spectrogram keeps it.
    tone = 0.1 * np.sin(2 * np.pi * 1000 * np.arange(p.clip_samples) / 16000)
    s_tone = asd_features(clip + tone.astype(np.float32), p)["spectrogram"]
    np.testing.assert_allclose(s_tone[:, 64], spec[:, 64], atol=0.05 * np.abs(spec).max() + 0.5)


def test_spectrum_matches_numpy_fft_and_band(clip):
    p = AsdFrontendParams()
    dft = asd_features(clip, p)["spectrum"]  # default: raw magnitude, as in thesis Table 14
    ref = np.abs(np.fft.fft(clip[: p.clip_samples].astype(np.float64)))[:80000]
    np.testing.assert_allclose(dft, ref, rtol=1e-3, atol=1e-3 * ref.max())
    dft_log = asd_features(clip, AsdFrontendParams(spectrum_compression="log1p"))["spectrum"]
    np.testing.assert_allclose(dft_log, np.log1p(ref), rtol=1e-3, atol=1e-4)
    band = AsdFrontendParams(spectrum_fmin=100, spectrum_fmax=4000, spectrum_compression="log1p")
    dft_band = asd_features(clip, band)["spectrum"]
    assert dft_band.shape == (3900 * 10,)  # 0.1 Hz per bin for 10 s
    np.testing.assert_allclose(dft_band, dft_log[1000:40000], rtol=1e-5)


def test_padding_and_bad_shapes():
    p = AsdFrontendParams()
    f = asd_features(np.ones(1000, np.float32) * 0.1, p)
    assert f["spectrogram"].shape == (311, 513)
    with pytest.raises(ValueError, match="expected shape"):
        asd_features(np.zeros((2, 5), np.float32), p)
    with pytest.raises(ValueError, match="spectrum_compression"):
        AsdFrontendParams(spectrum_compression="sqrt")
    with pytest.raises(ValueError, match="empty"):
        AsdFrontendParams(spectrum_fmin=5000, spectrum_fmax=100).spectrum_slice


def test_multi_resolution_spectrograms(clip):
    """extra_n_ffts adds one TMN spectrogram per window length, hop n_fft // 2
    (multi-resolution, 002_aace9358fd6fb51a.txt III-A1), equal to the main one's code."""
    p = AsdFrontendParams(extra_n_ffts=(256, 4096))
    f = asd_features(clip, p)
    assert list(f) == ["spectrogram", "spectrogram_256", "spectrogram_4096", "spectrum"]
    assert {k: v.shape for k, v in f.items()} == p.input_shapes
    assert f["spectrogram_256"].shape == (1 + (160000 - 256) // 128, 129)
    assert f["spectrogram_4096"].shape == (1 + (160000 - 4096) // 2048, 2049)
    ref = magnitude_spectrogram(clip[:160000], 4096, 2048)
    np.testing.assert_allclose(f["spectrogram_4096"], ref - ref.mean(axis=0), rtol=1e-4,
                               atol=1e-4 * ref.max())
    np.testing.assert_array_equal(f["spectrogram"], asd_features(clip)["spectrogram"])
    # Bundles from before the field load as a single resolution; bad values are refused.
    d = AsdFrontendParams().to_dict()
    del d["extra_n_ffts"]
    assert AsdFrontendParams.from_dict(d).extra_n_ffts == ()
    with pytest.raises(ValueError, match="extra_n_ffts"):
        AsdFrontendParams(extra_n_ffts=(1024,))


def test_spectrum_on_the_int8_grid(clip):
    """spectrum_step puts the spectrum on 256 levels, the same values an int8 input with
    scale `step` holds; `auto` makes the loudest training bin level 255."""
    from edge.frontend import spectrum_step_for

    raw = asd_features(clip)["spectrum"]
    step = spectrum_step_for([clip], AsdFrontendParams())
    assert step == pytest.approx(raw.max() / 255)
    q = asd_features(clip, AsdFrontendParams(spectrum_step=step))["spectrum"]
    assert q.dtype == np.float32 and q.max() == 255 and q.min() >= 0
    np.testing.assert_array_equal(q, np.round(q))
    np.testing.assert_allclose(q * step, raw, atol=0.5 * step + 1e-6 * raw.max())
    loud = asd_features(4 * clip, AsdFrontendParams(spectrum_step=step))["spectrum"]
    assert loud.max() == 255  # louder than training: clipped, as the int8 input would be
    d = AsdFrontendParams().to_dict()
    del d["spectrum_step"]
    assert AsdFrontendParams.from_dict(d).spectrum_step is None
    with pytest.raises(ValueError, match="spectrum_step"):
        AsdFrontendParams(spectrum_step=0)


@pytest.mark.parametrize("n_samples, hop", [(160000, 512), (159999, 512), (5000, 512),
                                            (33333, 256), (33333, 128), (33333, 768)])
def test_centred_frames_cut_from_the_uncentred_spectrogram(clip, n_samples, hop):
    """With the uncentred spectrogram given, the centred one is it plus the frames that reach
    into the padding, the same numbers as computing it whole; where the hop does not divide
    n_fft / 2 (768) it is computed whole. A spectrogram of another length is refused."""
    from edge.frontend import centred_magnitude, logmel_frames

    y = clip[:n_samples]
    whole = magnitude_spectrogram(np.pad(y, (512, 512)), 1024, hop)
    given = magnitude_spectrogram(y, 1024, hop)
    cut = centred_magnitude(y, 1024, hop, given)
    assert cut.shape == whole.shape == (1 + n_samples // hop, 513)
    np.testing.assert_array_equal(cut, whole)
    np.testing.assert_array_equal(logmel_frames(y, hop_length=hop, magnitude=given),
                                  logmel_frames(y, hop_length=hop))
    if hop != 768:
        with pytest.raises(ValueError, match="magnitude"):
            centred_magnitude(y, 1024, hop, given[1:])


def test_features_reuse_a_given_spectrogram(clip):
    """asd_features takes the caller's spectrogram of the clip for its main input (the node's
    views share one STFT) and gives the same features; one of another shape is refused."""
    p = AsdFrontendParams()
    y = clip[: p.clip_samples]
    mag = magnitude_spectrogram(y, p.n_fft, p.hop_length)
    shared, own = asd_features(y, p, magnitude=mag), asd_features(y, p)
    for name in own:
        np.testing.assert_array_equal(shared[name], own[name])
    with pytest.raises(ValueError, match="magnitude: expected the clip's spectrogram"):
        asd_features(y, p, magnitude=mag[:-1])
    # a branch run alone asks for its own input only: the same numbers, nothing else
    for name in own:
        alone = asd_features(y, p, magnitude=mag, inputs=(name,))
        assert list(alone) == [name]
        np.testing.assert_array_equal(alone[name], own[name])
    with pytest.raises(ValueError, match=r"inputs: \['level'\] are not inputs"):
        asd_features(y, p, inputs=("level",))
