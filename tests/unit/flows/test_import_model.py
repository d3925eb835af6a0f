"""`regionrank import-model` + `evaluate --save-sims` reproduce the SCAN and TERAN reference evaluations.

The reference's own layouts go in: SCAN's checkpoint, vocabulary and precomp folder ({split}_ims.npy,
{split}_caps.txt), TERAN's checkpoint; out come the reference evaluation's R@K and similarity matrix.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from regionrank.flows.cli import app

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "reference"
TOL = 1e-5
runner = CliRunner()


def _recalls_printed(output: str) -> dict[str, list[float]]:
    rows = {}
    for d in ("i2t", "t2i"):
        m = re.search(rf"{d}\s*│\s*([\d.]+)\s*│\s*([\d.]+)\s*│\s*([\d.]+)", output)
        assert m, output
        rows[d] = [float(x) for x in m.groups()]
    return rows


def _invoke(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res.output


def _scan_precomp(tmp_path: Path) -> tuple[Path, list[str]]:
    precomp = tmp_path / "coco_precomp"
    precomp.mkdir()
    np.save(precomp / "test_ims.npy", np.load(FIX / "inputs.npz")["features"])
    captions = json.loads((FIX / "captions.json").read_text())
    (precomp / "test_caps.txt").write_text("\n".join(captions) + "\n")
    return precomp, captions


def _check_scan(sims: np.ndarray, captions: list[str]) -> None:
    ref = np.load(FIX / "scan_t2i_outputs.npz")
    assert sims.shape == ref["sims"].shape == (8, 40)
    # regionrank tokenises with a regex stand-in for NLTK: two captions ending in ".." tokenise differently
    same = [j for j, c in enumerate(captions) if not c.endswith("..")]
    assert len(same) == 38
    np.testing.assert_allclose(sims[:, same], ref["sims"][:, same], atol=TOL, rtol=0)


def _teran_store(tmp_path: Path) -> tuple[Path, Path]:
    from regionrank.storage import Caption, RegionRecord, RegionStore, external_image_id, write_caption_table

    inp = np.load(FIX / "inputs.npz")
    ids = [external_image_id("coco", str(c)) for c in inp["cocoids"]]
    regions = tmp_path / "ws" / "regions"
    with RegionStore(regions).writer(detector="fixture", config_hash="-", weights_hash="-", feature_dim=16) as w:
        for i, image_id in enumerate(ids):
            w.write(RegionRecord(image_id=image_id, uri=f"coco/{inp['cocoids'][i]}", width=int(inp["sizes"][i, 0]),
                                 height=int(inp["sizes"][i, 1]), boxes=inp["boxes"][i], features=inp["features"][i, :, :16]))
    captions = json.loads((FIX / "captions.json").read_text())
    table = write_caption_table(tmp_path / "captions.parquet", [
        Caption(image_id=ids[j // 5], caption_id=str(j), text=t, split="test") for j, t in enumerate(captions)])
    return regions, table


def test_scan_precomp_folder_evaluates_like_the_reference_in_the_library(tmp_path: Path) -> None:
    from regionrank.encoders.training import evaluate
    from regionrank.flows.commands import caption_table
    from regionrank.flows.config import Workspace
    from regionrank.flows.import_model import import_model
    from regionrank.storage import import_scan_precomp

    precomp, captions = _scan_precomp(tmp_path)
    ws = Workspace(root=tmp_path / "ws")
    ckpt = import_model("scan", FIX / "scan_t2i.pth.tar", tmp_path / "ckpt", vocab=FIX / "scan_vocab.json")["checkpoint"]
    import_scan_precomp(precomp, "test", ws.regions, namespace="coco")
    table = caption_table(precomp, ws, split="test", namespace="coco")
    res = evaluate(ckpt, ws.regions, table, split="test", save_sims=tmp_path / "sims.npy")
    ref = np.load(FIX / "scan_t2i_outputs.npz")
    assert [res["i2t"][k] for k in ("r1", "r5", "r10")] == ref["i2t"][:3].tolist()
    assert [res["t2i"][k] for k in ("r1", "r5", "r10")] == ref["t2i"][:3].tolist()
    _check_scan(np.load(tmp_path / "sims.npy"), captions)


def test_teran_checkpoint_evaluates_like_the_reference_in_the_library(tmp_path: Path) -> None:
    from regionrank.encoders.training import evaluate
    from regionrank.flows.import_model import import_model

    regions, table = _teran_store(tmp_path)
    ckpt = import_model("teran", FIX / "teran.pth.tar", tmp_path / "ckpt", bert_config=FIX / "teran_bert_config.json")
    res = evaluate(ckpt["checkpoint"], regions, table, split="test", save_sims=tmp_path / "sims.npy")
    ref = np.load(FIX / "teran_outputs.npz")
    assert [res[d][k] for d in ("i2t", "t2i") for k in ("r1", "r5", "r10", "medr", "meanr")] == pytest.approx(
        ref["i2t"].tolist() + ref["t2i"].tolist())
    np.testing.assert_allclose(np.load(tmp_path / "sims.npy"), ref["sims"], atol=TOL, rtol=0)


@pytest.mark.slow
def test_scan_checkpoint_and_precomp_folder_evaluate_like_the_reference(tmp_path: Path) -> None:
    ws, ckpt, sims_file = tmp_path / "ws", tmp_path / "scan-ckpt", tmp_path / "sims.npy"
    precomp, captions = _scan_precomp(tmp_path)

    out = _invoke(["import-model", "scan", str(FIX / "scan_t2i.pth.tar"), "--vocab", str(FIX / "scan_vocab.pkl"),
                   "--out", str(ckpt)])
    assert "0 unexpected" in out
    _invoke(["import-features", "scan-precomp", str(precomp), "--split", "test", "-w", str(ws)])
    out = _invoke(["evaluate", str(ckpt), str(precomp), "--split", "test", "--save-sims", str(sims_file),
                   "--device", "cpu", "-w", str(ws)])

    ref = np.load(FIX / "scan_t2i_outputs.npz")
    assert _recalls_printed(out) == {"i2t": ref["i2t"][:3].tolist(), "t2i": ref["t2i"][:3].tolist()}
    _check_scan(np.load(sims_file), captions)


@pytest.mark.slow
def test_teran_checkpoint_evaluates_like_the_reference(tmp_path: Path) -> None:
    ws, ckpt, sims_file = tmp_path / "ws", tmp_path / "teran-ckpt", tmp_path / "sims.npy"
    _, table = _teran_store(tmp_path)

    out = _invoke(["import-model", "teran", str(FIX / "teran.pth.tar"), "--bert-config",
                   str(FIX / "teran_bert_config.json"), "--out", str(ckpt)])
    assert "0 unexpected" in out
    out = _invoke(["evaluate", str(ckpt), str(table), "--save-sims", str(sims_file), "--device", "cpu", "-w", str(ws)])

    ref = np.load(FIX / "teran_outputs.npz")
    assert _recalls_printed(out) == {"i2t": ref["i2t"][:3].tolist(), "t2i": ref["t2i"][:3].tolist()}
    np.testing.assert_allclose(np.load(sims_file), ref["sims"], atol=TOL, rtol=0)


def test_imported_checkpoint_reloads_with_identical_weights(tmp_path: Path) -> None:
    from regionrank.encoders import load_model
    from regionrank.encoders.scan_import import import_scan_checkpoint
    from regionrank.flows.import_model import import_model

    res = import_model("scan", FIX / "scan_i2t.pth.tar", tmp_path / "ckpt", vocab=FIX / "scan_vocab.json")
    loaded = load_model(res["checkpoint"])
    direct, _ = import_scan_checkpoint(FIX / "scan_i2t.pth.tar", FIX / "scan_vocab.json")
    assert loaded.cfg == direct.cfg and loaded.vocab == direct.vocab
    for k, v in direct.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


@pytest.mark.parametrize(("args", "message"), [
    (["scan", "scan_t2i.pth.tar"], "needs its vocabulary"),
    (["caffe", "scan_t2i.pth.tar"], "unknown model format"),
    (["scan", "missing.pth.tar", "--vocab", "scan_vocab.json"], "does not exist"),
])
def test_import_model_errors_are_clear(tmp_path: Path, args: list[str], message: str) -> None:
    argv = ["import-model", args[0], str(FIX / args[1]), *[str(FIX / a) if a.endswith(".json") else a for a in args[2:]]]
    res = runner.invoke(app, [*argv, "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    assert message in " ".join(res.output.split())  # rich wraps long lines at the terminal width


def test_training_starts_from_an_imported_checkpoint(tmp_path: Path) -> None:
    from regionrank.encoders import load_model
    from regionrank.encoders.training import train
    from regionrank.flows.commands import caption_table
    from regionrank.flows.config import Workspace
    from regionrank.flows.import_model import import_model
    from regionrank.storage import import_scan_precomp

    precomp, _ = _scan_precomp(tmp_path)
    ws = Workspace(root=tmp_path / "ws")
    ckpt = import_model("scan", FIX / "scan_t2i.pth.tar", tmp_path / "ckpt", vocab=FIX / "scan_vocab.json")["checkpoint"]
    import_scan_precomp(precomp, "test", ws.regions, namespace="coco")
    report = train(ckpt, ws.regions, caption_table(precomp, ws, split="test"), tmp_path / "out", epochs=1, batch_size=8,
                   train_split=None, val_split=None)
    start, tuned = load_model(ckpt), load_model(report.checkpoint)
    assert tuned.cfg == start.cfg and tuned.vocab == start.vocab  # same architecture, options and vocabulary
    assert not torch.equal(tuned.state_dict()["image_encoder.fc.weight"], start.state_dict()["image_encoder.fc.weight"])


def test_an_imported_teran_checkpoint_serves_as_the_query_encoder(tmp_path: Path) -> None:
    from regionrank.encoders import TeranQueryEncoder, load_model
    from regionrank.flows.import_model import import_model

    ckpt = import_model("teran", FIX / "teran.pth.tar", tmp_path / "ckpt", bert_config=FIX / "teran_bert_config.json")
    query = TeranQueryEncoder(load_model(ckpt["checkpoint"])).encode_query("a dog and a cat")
    assert query.tokens == ["a", "dog", "and", "a", "cat"] and query.word_embeddings.shape == (5, 16)
    np.testing.assert_allclose(np.linalg.norm(query.word_embeddings, axis=1), 1.0, atol=1e-5)
