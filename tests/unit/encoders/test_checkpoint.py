"""Tests for encoders.checkpoint: round trips without the source folders, hashes, atomic replace."""

from __future__ import annotations

import json

import pytest
import torch

from regionrank.encoders import checkpoint
from regionrank.encoders.registry import create_encoder
from regionrank.encoders.teran import TeranCfg, TeranModel
from regionrank.encoders.text import build_random_text_model

TINY_BERT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=32)


@pytest.fixture(scope="module")
def model():
    cfg = TeranCfg(name="teran-ckpt", embed_dim=8, feature_dim=6, visual_layers=1, visual_heads=2, visual_ff=8,
                   top_layers=1, top_heads=2, top_ff=8, dropout=0.0, text_model="random", text_dim=16,
                   text_bert_config=TINY_BERT)
    torch.manual_seed(0)
    tokenizer, bert = build_random_text_model(TINY_BERT, seed=1)
    return TeranModel(cfg, bert, tokenizer).eval()


def test_round_trip_is_bit_exact_and_self_contained(model, tmp_path):
    folder = checkpoint.save_checkpoint(tmp_path / "ck", model, trainer_state={"epoch": 3, "rng": torch.get_rng_state()})
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "model_config.json", "text_model",
                                                        "trainer_state.pt"]
    meta = json.loads((folder / "model_config.json").read_text())
    assert meta["kind"] == "teran" and meta["config"]["name"] == "teran-ckpt"
    assert meta["encoder_hash"] == checkpoint.model_hash(model)
    loaded = checkpoint.load_model(folder)
    assert isinstance(loaded, TeranModel) and not loaded.training and loaded.cfg == model.cfg
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    assert checkpoint.model_hash(loaded) == checkpoint.model_hash(model)
    tokens = loaded.tokenize(["a cat on a mat"])
    assert tokens.input_ids.tolist() == model.tokenize(["a cat on a mat"]).input_ids.tolist()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(tokens)[0], model.encode_text(tokens)[0], rtol=0, atol=0)
    state = checkpoint.load_trainer_state(folder)
    assert state["epoch"] == 3 and isinstance(state["rng"], torch.Tensor)
    # the registry entry point accepts the folder and a bare safetensors file
    assert checkpoint.model_hash(create_encoder("unused", weights=folder)) == checkpoint.model_hash(model)
    from_file = create_encoder(model.cfg, weights=folder / "model.safetensors")
    assert checkpoint.model_hash(from_file) == checkpoint.model_hash(model)


def test_trainer_state_is_plain_data_loadable_with_weights_only(model, tmp_path):
    folder = checkpoint.save_checkpoint(tmp_path / "ck", model, trainer_state={"epoch": 1})
    raw = torch.load(folder / "trainer_state.pt", weights_only=True)
    assert raw == {"epoch": 1}
    assert checkpoint.load_trainer_state(checkpoint.save_checkpoint(tmp_path / "no", model)) is None


def test_hash_changes_with_any_weight(model):
    other = TeranModel(model.cfg, model.text_backbone, model.tokenizer)
    other.load_state_dict(model.state_dict())
    assert checkpoint.model_hash(other) == checkpoint.model_hash(model)
    with torch.no_grad():
        other.text_proj.bias[0] += 1e-3
    assert checkpoint.model_hash(other) != checkpoint.model_hash(model)


def test_save_replaces_atomically_and_latest_picks_highest_epoch(model, tmp_path):
    assert checkpoint.latest_checkpoint(tmp_path) is None
    for epoch in (1, 2, 10):
        checkpoint.save_checkpoint(checkpoint.checkpoint_dir(tmp_path, epoch), model)
    (tmp_path / "epoch-0011.tmp").mkdir()  # an interrupted save is never picked
    (tmp_path / "epoch-0012").mkdir()  # nor an incomplete folder
    assert checkpoint.latest_checkpoint(tmp_path).name == "epoch-0010"
    checkpoint.save_checkpoint(tmp_path / "epoch-0010", model, trainer_state={"epoch": 10})
    assert checkpoint.load_trainer_state(tmp_path / "epoch-0010") == {"epoch": 10}
    assert not (tmp_path / "epoch-0010.old").exists()
    assert isinstance(checkpoint.load_model(tmp_path), TeranModel)  # an output folder resolves to its latest


def test_load_errors_name_the_problem(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        checkpoint.load_model(tmp_path / "nothing")
    folder = checkpoint.save_checkpoint(tmp_path / "ck", model)
    meta = json.loads((folder / "model_config.json").read_text())
    meta["config"]["embed_dim"] = 4
    (folder / "model_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="do not match its teran config"):
        checkpoint.load_model(folder)
    meta["kind"] = "clip"
    (folder / "model_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="known kinds"):
        checkpoint.load_model(folder)
    with pytest.raises(TypeError, match="cannot checkpoint"):
        checkpoint.save_checkpoint(tmp_path / "bad", torch.nn.Linear(2, 2))


def test_scan_round_trip_keeps_vocabulary(tmp_path):
    scan = pytest.importorskip("regionrank.encoders.scan_model")
    from regionrank.encoders.vocab import build_vocab

    vocab = build_vocab(["a cat", "a dog", "a cat"], threshold=1)
    m = scan.ScanModel(len(vocab), img_dim=6, embed_size=8, word_dim=4)
    with pytest.raises(ValueError, match="vocabulary"):
        checkpoint.save_checkpoint(tmp_path / "s0", m)
    m.vocab = vocab
    loaded = checkpoint.load_model(checkpoint.save_checkpoint(tmp_path / "s", m))
    assert type(loaded) is scan.ScanModel and loaded.vocab == vocab and loaded.cfg == m.cfg
    assert checkpoint.model_hash(loaded) == checkpoint.model_hash(m)
    base = scan.MeanPoolBaseline(len(vocab), img_dim=6, embed_size=8, word_dim=4)
    base.vocab = vocab
    assert type(checkpoint.load_model(checkpoint.save_checkpoint(tmp_path / "b", base))) is scan.MeanPoolBaseline


@pytest.mark.slow
def test_minilm_backed_model_round_trips_without_the_package_folder(tmp_path):
    from regionrank.encoders.registry import load_teran_cfg

    cfg = load_teran_cfg("teran-coco").replace(feature_dim=16, visual_layers=1, visual_ff=32, embed_dim=32,
                                               top_layers=1, top_ff=32)
    model = create_encoder(cfg).eval()
    folder = checkpoint.save_checkpoint(tmp_path / "ck", model)
    assert (folder / "text_model" / "config.json").is_file() and (folder / "text_model" / "tokenizer.json").is_file()
    loaded = checkpoint.load_model(folder)
    assert checkpoint.model_hash(loaded) == checkpoint.model_hash(model)
    tokens = model.tokenize(["a man riding a horse on the beach"])
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(tokens)[0], model.encode_text(tokens)[0], rtol=0, atol=0)
