"""The embedder, its loss, and the int8 export, on real clips."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from edge.model import AsdEmbedder, ModelError  # noqa: E402
from trainer.data import parse_dcase_name  # noqa: E402
from trainer.losses import SubClusterAdaCos, random_unit_centers  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _reference_loss(emb, labels, centers, n_classes, n_centers, s_prev):
    """Thesis Definition 3.4, eqs. 38-42, written out literally in NumPy."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = e @ centers.T
    sim_max = np.max(s_prev * sims)
    b_avg = np.sum(np.exp(s_prev * sims - sim_max)) / len(e)
    ang = np.arccos(np.clip(sims, -1 + 1e-7, 1 - 1e-7))
    mixed = [sum(labels[i, j] * ang[i, j * n_centers:(j + 1) * n_centers].sum()
                 for j in range(n_classes)) for i in range(len(e))]
    s = (sim_max + np.log(b_avg)) / np.cos(min(np.pi / 4, np.median(mixed)))
    z = np.exp(s * sims)
    p = np.stack([z[:, j * n_centers:(j + 1) * n_centers].sum(1) for j in range(n_classes)], 1)
    p /= z.sum(1, keepdims=True)
    return -np.sum(labels * np.log(p), axis=1), s


def test_subcluster_adacos_matches_definition():
    rng = np.random.default_rng(1)
    n_cls, k, d = 5, 4, 16
    centers = random_unit_centers(n_cls, k, d, seed=3)
    loss = SubClusterAdaCos(centers, n_cls, k)
    s0 = math.sqrt(2) * math.log(n_cls * k - 1)
    assert float(loss.scale.numpy()) == pytest.approx(s0)
    emb = rng.standard_normal((8, d)).astype(np.float32)
    lam = rng.uniform(size=8)
    a, b = rng.integers(0, n_cls, 8), rng.integers(0, n_cls, 8)
    labels = (lam[:, None] * np.eye(n_cls)[a] + (1 - lam[:, None]) * np.eye(n_cls)[b]).astype(np.float32)
    ours = loss.call(tf.constant(labels), tf.constant(emb)).numpy()
    ref, s_ref = _reference_loss(emb, labels, centers, n_cls, k, s0)
    np.testing.assert_allclose(ours, ref, rtol=1e-4)
    assert float(loss.scale.numpy()) == pytest.approx(s_ref, rel=1e-5)
    # Second step uses the updated scale as s^(t-1).
    ours2 = loss.call(tf.constant(labels), tf.constant(emb)).numpy()
    ref2, _ = _reference_loss(emb, labels, centers, n_cls, k, s_ref)
    np.testing.assert_allclose(ours2, ref2, rtol=1e-4)


def test_labels_from_dcase_names():
    lab = parse_dcase_name("bearing_test_section_00_target_test_anomaly_0021_vel_8_loc_G.wav")
    assert (lab.machine, lab.section, lab.domain, lab.is_anomaly, lab.attributes) == \
        ("bearing", "00", "target", True, "vel_8_loc_G")
    assert lab.class_name == "bearing_section_00_vel_8_loc_G"
    lab = parse_dcase_name("x/normal_id_00_00000001.wav", machine_hint="fan")
    assert lab.class_name == "fan_section_00" and not lab.is_anomaly
    with pytest.raises(ValueError, match="cannot parse"):
        parse_dcase_name("random.wav")


@pytest.mark.slow
def test_default_recipe_int8_matches_float(tmp_path, data_dir):
    """`make export-tflite`'s recipe, end to end through the CLI (about 3 min on 2 cores):
    the int8 bundle's embeddings match the float Keras model's on held-out real clips."""
    import subprocess
    import sys

    import keras

    from edge.audio import load_audio
    from edge.frontend import asd_features
    from trainer.export import cosine_similarity_rows

    r = subprocess.run([sys.executable, "-m", "trainer", "train-asd", "--out", str(tmp_path),
                        "--keras-out", str(tmp_path / "float.keras"), "--quiet"], cwd=ROOT,
                       capture_output=True, text=True, timeout=1800,
                       env={**__import__("os").environ, "HARK_DATA": str(data_dir)})
    assert r.returncode == 0, r.stderr[-3000:]
    emb = AsdEmbedder(tmp_path / "asd_default.tflite")
    meta = emb.metadata
    assert meta["loss"] == "subcluster_adacos" and len(meta["classes"]) >= 10
    assert meta["size_bytes"] * 3 <= meta["float_tflite_size_bytes"]
    model = keras.models.load_model(tmp_path / "float.keras", compile=False)

    asd = data_dir / "asd"
    held_out = (sorted((asd / "mimii_fan_id00" / "abnormal").glob("*.wav"))[:6]
                + sorted((asd / "mimii_fan_id00" / "normal").glob("*.wav"))[12:18]
                + sorted((asd / "dcase2023_dev_samples").glob("*_test_*.wav")))
    feats = [asd_features(load_audio(f), emb.frontend) for f in held_out]
    ref = model.predict({n: np.stack([f[n] for f in feats]) for n in feats[0]}, verbose=0)
    q = np.stack([emb.embed_features(f) for f in feats])
    cos = cosine_similarity_rows(ref, q)
    print(f"\nint8 vs float cosine on {len(cos)} held-out real clips: min {cos.min():.4f} "
          f"mean {cos.mean():.4f} (spectrogram branch min "
          f"{cosine_similarity_rows(ref[:, :128], q[:, :128]).min():.4f}, spectrum branch min "
          f"{cosine_similarity_rows(ref[:, 128:], q[:, 128:]).min():.4f})")
    assert cos.min() >= 0.98


def test_loader_rejects_mismatching_bundles(tmp_path, default_model):
    meta = json.loads(default_model.with_suffix(".json").read_text())
    shutil.copy(default_model, tmp_path / "m.tflite")
    for change, message in [({"task": "kws"}, "expected an 'asd' model"),
                            ({"embedding_dim": 128}, "metadata says 128"),
                            ({"frontend": {**meta["frontend"], "clip_seconds": 5.0}}, "input"),
                            ({"schema": 9}, "schema 9")]:
        (tmp_path / "m.json").write_text(json.dumps({**meta, **change}))
        with pytest.raises(ModelError, match=message):
            AsdEmbedder(tmp_path / "m.tflite")
    (tmp_path / "m.json").unlink()
    with pytest.raises(ModelError, match="metadata not found"):
        AsdEmbedder(tmp_path / "m.tflite")


def test_shipped_bundle(embedder):
    assert embedder.embedding_dim == 256
    # int8 keeps the float embedding: the raw-DFT input once gave 0.63-0.97 on average per
    # model (README); the shipped log1p model gives 0.9995 on average, 0.968 at worst.
    agreement = embedder.metadata["int8_vs_float_cosine"]
    assert agreement["mean"] >= 0.995 and agreement["min"] >= 0.95
    assert embedder.metadata["size_bytes"] * 3 <= embedder.metadata["float_tflite_size_bytes"]
    e = embedder.embed(np.zeros(160000, np.float32) + 1e-3)
    assert e.shape == (256,) and np.linalg.norm(e) == pytest.approx(1, abs=1e-5)


def test_one_branch_runs_cut_out_of_the_model(tmp_path, embedder, default_model, mimii):
    """A branch cut out of the int8 embedder (edge.tflite.branch_model) runs that branch's
    operators alone and gives its slice of the embedding, in direction; what cannot be cut
    is refused with the reason. A branch is cut from the bytes the embedder checked and
    loaded, not from the file as it is at the first cut."""
    from edge.audio import load_audio
    from edge.frontend import asd_features
    from edge.tflite import branch_model

    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    for path in mimii["abnormal"][:2]:
        feats = asd_features(load_audio(path), embedder.frontend)
        whole = embedder.embed_features(feats)
        np.testing.assert_allclose(unit(embedder.embed_branch(feats, "spectrum")),
                                   unit(whole[128:]), atol=1e-6)
        np.testing.assert_allclose(unit(embedder.embed_branch(feats, "spectrogram")),
                                   unit(whole[:128]), atol=1e-6)
    # the spectrum branch keeps its 3 convolutions and 5 dense layers, none of the
    # spectrogram branch's 20 convolutions and 8 residual additions, and no concatenation
    from collections import Counter

    from ai_edge_litert.interpreter import Interpreter

    def ops(model: bytes) -> Counter:
        return Counter(o["op_name"] for o in Interpreter(model_content=model)._get_ops_details())

    whole_ops = ops(default_model.read_bytes())
    assert (whole_ops["CONV_2D"], whole_ops["FULLY_CONNECTED"], whole_ops["CONCATENATION"]) \
        == (23, 6, 1)
    cut = ops(branch_model(default_model.read_bytes(), 1, 2))
    assert (cut["CONV_2D"], cut["FULLY_CONNECTED"], cut["ADD"], cut["CONCATENATION"]) \
        == (3, 5, 0, 0)
    with pytest.raises(ModelError, match="has no branch 'level'"):
        embedder.embed_branch(feats, "level")
    with pytest.raises(ModelError, match="not the concatenation of 2 branch embeddings"):
        branch_model((ROOT / "models" / "kws_default.tflite").read_bytes(), 0, 2, "kws")
    with pytest.raises(ModelError, match="not the concatenation of 3"):
        branch_model(default_model.read_bytes(), 0, 3)
    shutil.copy(default_model, tmp_path / "m.tflite")
    shutil.copy(default_model.with_suffix(".json"), tmp_path / "m.json")
    moved = AsdEmbedder(tmp_path / "m.tflite")
    (tmp_path / "m.tflite").write_bytes(b"changed")  # after loading, before the first cut
    np.testing.assert_array_equal(moved.embed_branch(feats, "spectrum"),
                                  embedder.embed_branch(feats, "spectrum"))
    with pytest.raises(ModelError, match="does not match its metadata"):
        AsdEmbedder(tmp_path / "m.tflite")


def test_a_loaded_model_survives_its_file_rewritten_in_place(tmp_path, default_model, mimii,
                                                             data_dir):
    """A node holds its models in memory: a model file overwritten in place under it (``cp``
    over the bundle, an editor) leaves its next inference as it was. The runtime maps a
    ``model_path`` and read the overwritten bytes: the anomaly embedder then failed in
    RESHAPE ("159543 != 0"), and a file that shrank killed the process with SIGBUS."""
    from edge.audio import load_audio
    from edge.model import load_bundle

    clip = load_audio(mimii["abnormal"][0])
    word = load_audio(sorted((data_dir / "kws" / "speech_commands_test" / "stop")
                             .glob("*.flac"))[0])
    kws = ROOT / "models" / "kws_speech.tflite"
    kws_meta = json.loads(kws.with_suffix(".json").read_text())
    files = [default_model, default_model.with_suffix(".json"), kws, kws.with_suffix(".json"),
             ROOT / "models" / kws_meta["frontend"]["mel_model"]]
    for f in files:
        shutil.copy(f, tmp_path / f.name)
    asd = load_bundle(tmp_path / default_model.name)
    spotter = load_bundle(tmp_path / kws.name)
    before = asd.embed(clip), spotter.embed_wave(word)
    for f in files:  # same length, other bytes: no SIGBUS even if the bug comes back
        (tmp_path / f.name).write_bytes(bytes(f.stat().st_size))
    after = asd.embed(clip), spotter.embed_wave(word)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])


def test_node_path_never_imports_tensorflow(default_model):
    """Loading the bundle, the frontend, scoring and MQTT code must run on LiteRT alone."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "import edge.node, edge.mqtt, edge.audio, calibration.calibrate, firmware_config.schema\n"
        f"from edge.model import load_bundle\nm = load_bundle({str(default_model)!r})\n"
        "m.embed(np.zeros(160000, np.float32))\n"
        "from edge.frontend import asd_features\n"
        "m.embed_branch(asd_features(np.ones(160000, np.float32) * 1e-3, m.frontend), 'spectrum')\n"
        "bad = sorted(k for k in sys.modules if k == 'tensorflow' or k.startswith('tensorflow.')"
        " or k == 'keras')\n"
        "print('TF' if bad else 'OK', bad[:5])\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("OK"), r.stdout


def test_the_only_runtime_is_ai_edge_litert(monkeypatch):
    """No other TFLite runtime is tried: without ai-edge-litert the error says what to install
    (a tflite_runtime that happens to be installed is not used)."""
    import sys
    import types

    from edge.tflite import load_interpreter_class

    assert load_interpreter_class().__module__.startswith("ai_edge_litert")
    other = types.ModuleType("tflite_runtime.interpreter")
    other.Interpreter = object
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", types.ModuleType("tflite_runtime"))
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", other)
    with pytest.raises(ModelError, match=r"install ai-edge-litert \(pip install 'hark\[edge\]'\)"):
        load_interpreter_class()
