"""Classes from every label: the source dataset in the class, pseudo-attributes by clustering
where attributes are missing (Fujimura et al.), and the embedding-spread check, on real
MIMII / DCASE 2020 clips."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from edge.audio import load_audio
from edge.model import AsdEmbedder
from trainer.data import CLASS_LABELS, parse_dcase_name
from trainer.embedding_spread import embedding_spread
from trainer.pseudo_labels import clip_features, pseudo_attribute_labels
from trainer.train import TrainConfig, TrainingSet


@pytest.fixture(scope="module")
def two_machines(data_dir, default_model):
    """Ten normal clips each of two machines without attributes (MIMII fan id_00, DCASE 2020
    slider id_00), and their embeddings by the shipped model: a feature space trained on
    the available labels, Fujimura et al.'s "Class"."""
    fan = sorted((data_dir / "asd" / "mimii_fan_id00" / "normal").glob("*.wav"))[:10]
    slider = sorted((data_dir / "asd" / "dcase2020_id00" / "train").rglob("*.wav"))[:10]
    assert len(fan) == 10 and len(slider) == 10
    paths = fan + slider
    waves = [load_audio(p, 16000) for p in paths]
    emb = AsdEmbedder(default_model)
    return (paths, np.array([0] * 10 + [1] * 10), waves,
            np.stack([emb.embed(w) for w in waves]))


def test_class_key_adds_the_dataset_and_checks_labels():
    lab = parse_dcase_name("x/normal_id_02_00000001.wav", machine_hint="fan")
    assert lab.class_key() == lab.class_name == "fan_section_02"
    lab = dataclasses.replace(lab, dataset="mimii_dcase2020_samples")
    assert lab.class_key(CLASS_LABELS) == "fan_section_02_from_mimii_dcase2020_samples"
    assert lab.class_key(("machine", "dataset")) == "fan_from_mimii_dcase2020_samples"
    with pytest.raises(ValueError, match="machine"):
        lab.class_key(("section",))
    with pytest.raises(ValueError, match="colour"):
        lab.class_key(("machine", "colour"))


def test_pseudo_labels_recover_two_machines_hidden_in_one_class(two_machines):
    paths, truth, waves, emb = two_machines
    # one class hides both machines
    groups = ["unlabelled"] * len(paths)
    labels = pseudo_attribute_labels(emb, groups, max_clusters=4, min_cluster_size=3)
    assert all(lab.startswith("pseudo_") for lab in labels)
    # shipped log1p model, 10 epochs: 0.62 (two slider clips join the fans; 20 epochs: 0.80,
    # one clip); chance is 0
    assert adjusted_rand_score(truth, labels) >= 0.5, labels
    # clips with attributes (empty group) keep their class
    assert pseudo_attribute_labels(emb, [""] * len(paths)) == [""] * len(paths)
    # reproducible, and a class too small to split stays whole
    assert pseudo_attribute_labels(emb, groups, max_clusters=4, min_cluster_size=3) == labels
    assert pseudo_attribute_labels(emb[:5], groups[:5], min_cluster_size=3) == [""] * 5
    with pytest.raises(ValueError, match="one row per group"):
        pseudo_attribute_labels(emb, groups[:-1])
    assert clip_features(waves[:2]).shape == (2, 1026)
    with pytest.raises(ValueError, match="stft_statistics"):
        clip_features(waves[:2], "embedding")


def test_training_set_with_dataset_and_pseudo_classes(two_machines):
    paths, truth, _, emb = two_machines
    items = [(p, parse_dcase_name(p, machine_hint="machine")) for p in paths]
    # the machine as the only label: one class hides both machines
    data = TrainingSet(items, {}, progress=False, class_labels=("machine",))
    assert data.classes == ["machine"] and not any(data.pseudo_attributes)
    assert data.assign_pseudo_attributes(emb, max_clusters=4) == len(paths)
    assert len(data.classes) >= 2 and adjusted_rand_score(truth, data.y) >= 0.5
    assert data.class_names[0].startswith("machine_pseudo_")
    assert data.assign_pseudo_attributes(None) == 0 and data.classes == ["machine"]
    with pytest.raises(ValueError, match="pseudo_labels"):
        TrainConfig(sources=[], pseudo_labels="umap")
    with pytest.raises(ValueError, match="class_labels"):
        TrainConfig(sources=[], class_labels=["section"])


@pytest.mark.slow
def test_embedding_pseudo_labels_train_twice(two_machines):
    """``pseudo_labels: embedding``: a first model on the available labels, then the final
    one on its pseudo-attributes (a tiny model, a few steps)."""
    pytest.importorskip("tensorflow")
    from trainer.train import train_asd

    paths, _, _, _ = two_machines
    items = [(p, parse_dcase_name(p, machine_hint="machine")) for p in paths]
    cfg = TrainConfig(sources=[], epochs=1, steps_per_epoch=2, batch_size=4, n_centers=2,
                      model={"embedding_dim": 16, "resnet_widths": [4, 4, 4, 4],
                             "spectrum_filters": 8, "spectrum_dense_layers": 1},
                      class_labels=["machine"], pseudo_labels="embedding",
                      pseudo_max_clusters=2)
    data = TrainingSet.for_recipe(items, cfg, progress=False)
    assert data.classes == ["machine"]
    model, history = train_asd(cfg, data, progress=False)
    assert len(history) == 1 and len(history[0]) == 1
    # the first model's embeddings were clustered: two pseudo-attributes, or none when
    # BIC prefers one cluster; never a class without clips
    assert set(data.pseudo_attributes) in ({""}, {"pseudo_0", "pseudo_1"})
    assert sorted(set(data.class_names)) == data.classes
    assert model.output.shape[-1] == 2 * 16  # one 16-d slice per branch


def test_embedding_spread_tells_separated_from_collapsed(two_machines):
    _, truth, _, x = two_machines
    labels = ["fan" if t == 0 else "slider" for t in truth]
    sep = embedding_spread(x, labels)
    assert sep["n"] == len(labels) and sep["n_labels"] == 2
    assert sep["nn_label_agreement"] >= 0.9
    n0, n1 = (truth == 0).sum(), (truth == 1).sum()
    assert sep["chance_agreement"] == pytest.approx(
        (n0 * (n0 - 1) + n1 * (n1 - 1)) / (len(truth) * (len(truth) - 1)))
    c = sep["cosine"]
    assert c["min"] <= c["p05"] <= c["median"] <= c["p95"] <= c["max"] <= 1.0 + 1e-9
    # collapse: every embedding near one direction, neighbourhoods no longer follow labels
    rng = np.random.default_rng(0)
    collapsed = np.ones((40, 16)) + 1e-3 * rng.standard_normal((40, 16))
    col = embedding_spread(collapsed, ["a", "b"] * 20)
    assert col["cosine"]["min"] > 0.999
    assert col["nn_label_agreement"] < 0.8
    with pytest.raises(ValueError, match="one label each"):
        embedding_spread(x, labels[:-1])
