"""Tests for encoders.training: exact resume, schedules, splits, validation metrics, evaluate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from regionrank.encoders import training
from regionrank.encoders.checkpoint import latest_checkpoint, load_model, load_trainer_state
from regionrank.encoders.teran import TeranCfg
from regionrank.storage import RegionStore
from regionrank.storage.records import Caption, RegionRecord

TINY_BERT = dict(
    hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
    max_position_embeddings=32, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0,
)
OBJECTS = ["cat", "dog", "car", "tree", "boat", "horse"]


def tiny_cfg(**changes) -> TeranCfg:
    base = dict(
        name="teran-unit", embed_dim=16, feature_dim=8, visual_layers=1, visual_heads=2, visual_ff=16,
        top_layers=1, top_heads=2, top_ff=16, dropout=0.1, text_model="random", text_dim=16,
        text_bert_config=TINY_BERT, max_tokens=16, lr=2e-3, batch_size=4, epochs=2, lr_step_epochs=1, lr_gamma=0.5,
    )
    base.update(changes)
    return TeranCfg(**base)


def write_dataset(root, n_images=10, dim=8, seed=0):
    """Images whose regions carry their objects' prototype features; captions name the objects."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(len(OBJECTS), dim))
    captions = []
    store = RegionStore(root)
    with store.writer(detector="synthetic", config_hash="c", weights_hash="w", feature_dim=dim) as w:
        for i in range(n_images):
            objs = rng.choice(len(OBJECTS), size=2, replace=False)
            feats = protos[objs] + 0.1 * rng.normal(size=(2, dim))
            boxes = np.array([[0, 0, 40, 30], [20, 10, 90, 70]], dtype=np.float32)
            image_id = f"{i:064x}"
            w.write(RegionRecord(image_id=image_id, uri=f"mem://{i}", width=100, height=80, boxes=boxes,
                                 features=feats.astype(np.float16)))
            split = "val" if i >= n_images - 3 else "train"
            for k in range(2):
                a, b = OBJECTS[objs[k % 2]], OBJECTS[objs[(k + 1) % 2]]
                captions.append(Caption(image_id=image_id, caption_id=f"{i}-{k}", text=f"a {a} and a {b} .", split=split))
    return store, captions


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "regions")


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_after_crash_equals_uninterrupted_run(dataset, tmp_path):
    store, captions = dataset
    cfg = tiny_cfg()
    straight = training.train(cfg, store, captions, tmp_path / "a", epochs=2, seed=3)
    crashed = training.train(cfg, store, captions, tmp_path / "b", epochs=1, seed=3)
    assert [e.epoch for e in crashed.epochs] == [1]
    resumed = training.train(cfg, store, captions, tmp_path / "b", epochs=2, seed=3)
    assert resumed.resumed_from_epoch == 1 and [e.epoch for e in resumed.epochs] == [1, 2]
    a, b = load_model(straight.checkpoint), load_model(resumed.checkpoint)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert [e.loss for e in straight.epochs] == [e.loss for e in resumed.epochs]
    sa, sb = load_trainer_state(straight.checkpoint), load_trainer_state(resumed.checkpoint)
    assert sa["scheduler"] == sb["scheduler"] and torch.equal(sa["torch_rng"], sb["torch_rng"])
    # A different seed really changes the result (so the equality above is not vacuous).
    other = training.train(cfg, store, captions, tmp_path / "c", epochs=1, seed=4)
    first = load_model(crashed.checkpoint.parent / "epoch-0001")
    assert not all(torch.equal(x, y) for x, y in zip(_weights(load_model(other.checkpoint)).values(), _weights(first).values()))


def test_train_reports_loss_val_metrics_and_checkpoints_every_epoch(dataset, tmp_path):
    store, captions = dataset
    seen = []
    report = training.train(tiny_cfg(), store, captions, tmp_path / "out", epochs=2, seed=0, progress=seen.append)
    assert [p.name for p in sorted((tmp_path / "out").iterdir())] == ["epoch-0001", "epoch-0002"]
    assert latest_checkpoint(tmp_path / "out") == report.checkpoint == tmp_path / "out" / "epoch-0002"
    assert seen == report.epochs and report.train_pairs == 14 and (report.val_images, report.val_captions) == (3, 6)
    for ep in report.epochs:
        assert np.isfinite(ep.loss) and ep.iterations == 4  # ceil(14 / 4)
        assert set(ep.val) >= {"i2t_r1", "t2i_r1", "t2i_r5", "rsum"} and 0 <= ep.val["t2i_r1"] <= 100
    # StepLR every epoch with gamma 0.5: the LR after epoch e is lr * 0.5 ** e (per-iteration LambdaLR).
    assert report.epochs[0].lr == pytest.approx(2e-3 * 0.5) and report.epochs[1].lr == pytest.approx(2e-3 * 0.25)
    again = training.train(tiny_cfg(), store, captions, tmp_path / "out", epochs=2, seed=0)
    assert again.resumed_from_epoch == 2 and again.epochs == report.epochs


def test_lr_schedule_warmup_then_step():
    plan = training._Plan("x", 1.0, 2, 0.1, 4, 8, 5, 2.0, 0.2, True)
    f = training._lr_factor(plan, iters_per_epoch=3)
    assert [f(i) for i in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert [f(i) for i in (5, 6, 11, 12)] == pytest.approx([1.0, 0.1, 0.1, 0.01])


def test_resume_with_another_config_is_refused(dataset, tmp_path):
    store, captions = dataset
    training.train(tiny_cfg(), store, captions, tmp_path / "out", epochs=1)
    with pytest.raises(ValueError, match="different model config"):
        training.train(tiny_cfg(embed_dim=8), store, captions, tmp_path / "out", epochs=2)


def test_train_rejects_bad_inputs(dataset, tmp_path):
    store, captions = dataset
    with pytest.raises(ValueError, match="expects 12-d"):
        training.train(tiny_cfg(feature_dim=12), store, captions, tmp_path / "o1", epochs=1)
    stray = [Caption(image_id="f" * 64, caption_id="x", text="a cat", split="train")]
    with pytest.raises(ValueError, match="no caption points at an image"):
        training.train(tiny_cfg(), store, stray, tmp_path / "o2", epochs=1)
    with pytest.raises(ValueError, match="no training captions left"):
        training.train(tiny_cfg(), store, captions, tmp_path / "o3", epochs=1, train_split="restval")
    with pytest.raises(ValueError, match="held-out image fraction"):
        training.train(tiny_cfg(), store, captions, tmp_path / "o4", epochs=1, val_split=1.5)


def test_split_by_fraction_holds_out_whole_images(dataset):
    store, captions = dataset
    train_caps, val_caps = training._split_captions(
        captions, set(store.ids()), train_split=None, val_split=0.3, val_max_images=None, seed=0
    )
    held = {c.image_id for c in val_caps}
    assert len(held) == 3 and not held & {c.image_id for c in train_caps}
    assert len(train_caps) + len(val_caps) == len(captions)


def recall_reference(sims, caption_image):
    """Five-line t2i R@1 reference: the caption's image must be the unique best or the first tied one."""
    hits = [int(np.argmax(sims[:, j]) == caption_image[j]) for j in range(sims.shape[1])]
    return 100.0 * sum(hits) / len(hits)


def test_evaluate_matches_direct_scoring(dataset, tmp_path):
    store, captions = dataset
    report = training.train(tiny_cfg(), store, captions, tmp_path / "out", epochs=1, seed=1)
    model = load_model(report.checkpoint)
    val = [c for c in captions if c.split == "val"]
    metrics = training.evaluate(report.checkpoint, store, captions, split="val", image_block=2, caption_block=4)
    image_ids = list(dict.fromkeys(c.image_id for c in val))
    recs = store.get(image_ids)
    from regionrank.encoders.teran import region_batch

    with torch.no_grad():
        tokens = model.tokenize([c.text for c in val])
        direct = model(region_batch(recs), tokens).alignment.numpy()
    mapping = np.array([image_ids.index(c.image_id) for c in val])
    assert metrics["t2i"]["r1"] == pytest.approx(recall_reference(direct, mapping))
    assert metrics["t2i"]["r1"] == pytest.approx(report.epochs[0].val["t2i_r1"])
    with pytest.raises(ValueError, match="no captions of split"):
        training.evaluate(report.checkpoint, store, captions, split="test")
    with pytest.raises(ValueError, match="needs 5 captions per image"):
        training.evaluate(report.checkpoint, store, captions, split="val", protocol="f30k1k")


def test_scan_model_trains_and_resumes(dataset, tmp_path):
    pytest.importorskip("regionrank.encoders.scan_model")
    store, captions = dataset
    cfg = {"kind": "scan", "name": "scan-unit", "img_dim": 8, "embed_size": 16, "word_dim": 8, "batch_size": 4,
           "vocab_threshold": 1, "lr": 1e-3}
    straight = training.train(cfg, store, captions, tmp_path / "a", epochs=2, seed=0)
    training.train(cfg, store, captions, tmp_path / "b", epochs=1, seed=0)
    resumed = training.train(cfg, store, captions, tmp_path / "b", epochs=2, seed=0)
    a, b = load_model(straight.checkpoint), load_model(resumed.checkpoint)
    assert a.vocab == b.vocab and "cat" in a.vocab
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
    assert straight.epochs[-1].val is not None


@pytest.mark.slow
def test_teran_tiny_learns_the_compositional_benchmark_and_beats_global_pooling_on_twins(tmp_path):
    """Learning demo: held-out R@1 and attribute-swap twins, TERAN alignment vs global vectors vs mean pooling.

    Run with ``pytest -m slow -s -k compositional`` to print the figures (about 4 CPU minutes).
    """
    import json

    synthetic = pytest.importorskip("regionrank.encoders.synthetic")
    from regionrank.encoders import evaluation
    from regionrank.encoders.registry import load_teran_cfg

    kw = dict(feature_dim=64, regions_per_image=(3, 6), n_objects=24, n_attributes=8)
    train_ds = synthetic.make_compositional_dataset(1000, seed=0, **kw)
    test_ds = synthetic.make_compositional_dataset(200, seed=1, **kw)
    _, train_caps = synthetic.write_to_store(train_ds, tmp_path / "regions", tmp_path / "train.parquet", split="train")
    _, test_caps = synthetic.write_to_store(test_ds, tmp_path / "regions", tmp_path / "test.parquet", split="test")
    store = RegionStore(tmp_path / "regions")
    figures = {}

    def fit(spec, name):
        rep = training.train(spec, store, train_caps, tmp_path / name, seed=0, val_split=None, epochs=8)
        model = load_model(rep.checkpoint)
        images, caps = training._encode_collection(model, store, test_ds.image_ids, test_ds.captions, torch.device("cpu"), 64)
        sims = training.score_encoded(model, images, caps)
        metrics = evaluation.evaluate(sims)
        figures[name] = {"t2i_r1": metrics["t2i"]["r1"], "t2i_r5": metrics["t2i"]["r5"], "i2t_r1": metrics["i2t"]["r1"],
                         "rsum": round(metrics["rsum"], 1), "twin_t2i": synthetic.twin_accuracy(sims, test_ds)["t2i"],
                         "train_seconds": round(sum(e.seconds for e in rep.epochs), 1)}
        return images, caps

    images, caps = fit(load_teran_cfg("teran-tiny").replace(feature_dim=64), "teran-tiny")
    glob = np.stack([i.global_embedding for i in images]) @ np.stack([c.global_embedding for c in caps]).T
    gm = evaluation.evaluate(glob)
    figures["teran-tiny-global"] = {"t2i_r1": gm["t2i"]["r1"], "rsum": round(gm["rsum"], 1),
                                    "twin_t2i": synthetic.twin_accuracy(glob, test_ds)["t2i"]}
    fit({"kind": "scan-meanpool", "name": "meanpool", "img_dim": 64, "embed_size": 64, "word_dim": 64,
         "batch_size": 32, "vocab_threshold": 1, "lr": 2e-3}, "meanpool")
    print(json.dumps(figures, indent=1))
    teran_fig, glob_fig, pool_fig = figures["teran-tiny"], figures["teran-tiny-global"], figures["meanpool"]
    assert teran_fig["t2i_r1"] > 50 and teran_fig["i2t_r1"] > 60  # chance: 0.5
    assert teran_fig["twin_t2i"] > 0.85
    assert glob_fig["twin_t2i"] < 0.65 and pool_fig["twin_t2i"] < 0.65  # global pooling cannot bind attributes
    assert teran_fig["t2i_r1"] > pool_fig["t2i_r1"] + 20


@pytest.mark.gpu
def test_training_on_cuda_with_amp_produces_a_cpu_loadable_checkpoint(dataset, tmp_path):
    store, captions = dataset
    report = training.train(tiny_cfg(), store, captions, tmp_path / "gpu", epochs=2, seed=0, device="cuda", amp=True)
    assert all(np.isfinite(e.loss) for e in report.epochs) and report.epochs[-1].val is not None
    model = load_model(report.checkpoint)  # CPU
    assert next(model.parameters()).device.type == "cpu"
    metrics = training.evaluate(report.checkpoint, store, captions, split="val", device="cuda")
    cpu_metrics = training.evaluate(model, store, captions, split="val")
    assert metrics["t2i"]["r1"] == pytest.approx(cpu_metrics["t2i"]["r1"], abs=100 / 6 + 1e-6)  # at most one rank flip


def test_evaluate_protocol_regroups_captions_five_per_image(tmp_path):
    """f30k1k on 1000 images whose captions arrive shuffled (6 for some images): only the first 5 count."""
    scan = pytest.importorskip("regionrank.encoders.scan_model")
    from regionrank.encoders import evaluation
    from regionrank.encoders.vocab import build_vocab

    rng = np.random.default_rng(0)
    words = [f"w{k}" for k in range(30)]
    store = RegionStore(tmp_path / "regions")
    captions = []
    with store.writer(detector="synthetic", config_hash="c", weights_hash="w", feature_dim=4, rows_per_shard=2000) as w:
        for i in range(1000):
            image_id = f"{i:064x}"
            w.write(RegionRecord(image_id=image_id, uri="", width=10, height=10, boxes=np.ones((2, 4), np.float32) * [0, 0, 5, 5],
                                 features=rng.normal(size=(2, 4)).astype(np.float16)))
            for k in range(6 if i % 7 == 0 else 5):
                text = " ".join(rng.choice(words, size=3))
                captions.append(Caption(image_id=image_id, caption_id=f"{i}-{k}", text=text, split="test"))
    order = rng.permutation(len(captions))
    shuffled = [captions[i] for i in order]
    vocab = build_vocab([c.text for c in captions], threshold=1)
    torch.manual_seed(0)
    model = scan.MeanPoolBaseline(len(vocab), img_dim=4, embed_size=8, word_dim=4)
    model.vocab = vocab
    got = training.evaluate(model, store, shuffled, split="test", protocol="f30k1k", image_block=300, caption_block=2000)
    # Independent: first 5 captions per image in the shuffled input order, layout 5i + k, cosine of means.
    firsts = {}
    for c in shuffled:
        firsts.setdefault(c.image_id, []).append(c)
    image_ids = list(dict.fromkeys(c.image_id for c in shuffled))
    texts = [c.text for i in image_ids for c in firsts[i][:5]]
    with torch.no_grad():
        feats = torch.tensor(np.stack([r.features.astype(np.float32) for r in store.get(image_ids)]))
        img = model.embed_regions(feats).mean(1)
        ids, lens = vocab.encode_batch(texts)
        cap = model.embed_words(ids, lens).sum(1) / lens[:, None]
    sims = (torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(cap, dim=-1).T).numpy()
    ref = evaluation.evaluate(sims)
    for d in ("i2t", "t2i"):
        for k in ("r1", "r5", "r10", "medr"):
            assert got[d][k] == pytest.approx(ref[d][k], abs=1e-9), (d, k)


# ALGORITHMS.md §3.5, the SCAN README commands (all with --max_violation --bi_gru):
# direction, aggregation, lambda_softmax, lambda_lse (None: unused), lr, lr decay step, epochs
SCAN_COMMANDS = {
    "scan-f30k-t2i-lse": ("t2i", "LogSumExp", 9.0, 6.0, 2e-4, 15, 30),
    "scan-f30k-t2i-avg": ("t2i", "Mean", 9.0, None, 2e-4, 15, 30),
    "scan-f30k-i2t-lse": ("i2t", "LogSumExp", 4.0, 5.0, 2e-4, 15, 30),
    "scan-f30k-i2t-avg": ("i2t", "Mean", 4.0, None, 2e-4, 15, 30),
    "scan-coco-t2i-lse": ("t2i", "LogSumExp", 9.0, 6.0, 5e-4, 10, 20),
    "scan-coco-t2i-avg": ("t2i", "Mean", 9.0, None, 5e-4, 10, 20),
    "scan-coco-i2t-lse": ("i2t", "LogSumExp", 4.0, 20.0, 5e-4, 10, 20),
    "scan-coco-i2t-avg": ("i2t", "Mean", 4.0, None, 5e-4, 10, 20),
}


@pytest.mark.parametrize("name", sorted(SCAN_COMMANDS))
def test_shipped_scan_configs_are_the_reference_commands(name):
    from regionrank.encoders.scan_model import ScanModel
    from regionrank.encoders.registry import list_models

    assert name in list_models()
    direction, agg, lam_sm, lam_lse, lr, step, epochs = SCAN_COMMANDS[name]
    texts = ["a dog on a red car ."] * 4 + ["a cat ."] * 3  # 'cat' is seen 3 times: below the threshold of 4
    model, plan = training._build(name, texts, None)
    assert type(model) is ScanModel and "dog" in model.vocab and "cat" not in model.vocab
    c = model.cfg
    assert (c.direction, c.agg_func, c.lambda_softmax, c.raw_feature_norm) == (direction, agg, lam_sm, "clipped_l2norm")
    assert lam_lse is None or c.lambda_lse == lam_lse
    assert (c.img_dim, c.embed_size, c.word_dim, c.num_layers, c.bi_gru) == (2048, 1024, 300, 1, True)
    assert (plan.lr, plan.lr_step_epochs, plan.lr_gamma, plan.epochs, plan.batch_size) == (lr, step, 0.1, epochs, 128)
    assert (plan.margin, plan.max_violation, plan.grad_clip) == (0.2, True, 2.0)
