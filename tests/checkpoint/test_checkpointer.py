"""QuantDetCheckpointer: resume skips WEIGHT_EXTRA, atomic saves, clear errors on bad files."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from quant_det.checkpoint import QuantDetCheckpointer
from quant_det.checkpoint import checkpointer as checkpointer_module


def model_filled(value):
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(value)
        model.bias.fill_(value)
    return model


def test_resume_loads_last_checkpoint_and_skips_extra(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    QuantDetCheckpointer(model_filled(5.0), str(out)).save("model_0000009", iteration=9)
    model = model_filled(0.0)
    ck = QuantDetCheckpointer(model, str(out), weight_extra=str(tmp_path / "absent_extra.pth"))
    assert ck.resume_or_load("", resume=True) == {"iteration": 9}
    assert model.weight.unique().tolist() == [5.0] and ck.double_init_report is None
    with pytest.raises(FileNotFoundError, match="absent_extra.pth"):  # not resuming: extra is read
        ck.resume_or_load("", resume=False)


def test_no_checkpoint_double_initializes(tmp_path):
    extra, weights = tmp_path / "extra.pth", tmp_path / "w.pth"
    torch.save({"model": {"weight": torch.full((2, 2), 1.0), "bias": torch.full((2,), 1.0)}}, extra)
    torch.save({"model": {"weight": torch.full((2, 2), 2.0)}}, weights)
    model = model_filled(0.0)
    ck = QuantDetCheckpointer(model, str(tmp_path / "empty_out"), weight_extra=str(extra))
    assert ck.resume_or_load(str(weights), resume=True) == {}
    assert model.weight.unique().tolist() == [2.0] and model.bias.unique().tolist() == [1.0]
    assert ck.double_init_report.source == {"weight": str(weights), "bias": str(extra)}


def test_save_is_atomic_and_tags_a_complete_file(tmp_path):
    ck = QuantDetCheckpointer(model_filled(1.0), str(tmp_path))
    ck.save("model_0000001")
    ck.save("model_0000002")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth", "model_0000002.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    model = model_filled(0.0)
    QuantDetCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert model.weight.unique().tolist() == [1.0]


def test_failed_save_leaves_previous_state(tmp_path, monkeypatch):
    ck = QuantDetCheckpointer(model_filled(1.0), str(tmp_path))
    ck.save("model_0000001")

    def half_write_then_fail(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpointer_module.torch, "save", half_write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        ck.save("model_0000002")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def test_sigkill_mid_save_never_exposes_a_truncated_checkpoint(tmp_path):
    child = textwrap.dedent(f"""
        import os, signal, torch
        from torch import nn
        from quant_det.checkpoint import QuantDetCheckpointer
        ck = QuantDetCheckpointer(nn.Linear(2, 2), {str(tmp_path)!r})
        ck.save("model_0000001")
        def write_half_then_die(obj, f):
            f.write(b"PK\\x03\\x04 partial"); f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = write_half_then_die
        ck.save("model_0000002")
    """)
    proc = subprocess.run([sys.executable, "-c", child], env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -9
    names = sorted(os.listdir(tmp_path))
    leftovers = [n for n in names if n.startswith(".")]
    assert [n for n in names if n not in leftovers] == ["last_checkpoint", "model_0000001.pth"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".model_0000002.pth.") and leftovers[0].endswith(".tmp")
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    ck = QuantDetCheckpointer(nn.Linear(2, 2), str(tmp_path))
    assert ck.get_all_checkpoint_files() == [str(tmp_path / "model_0000001.pth")]
    ck.resume_or_load("", resume=True)


@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "list", "strings"])
def test_bad_file_raises_error_naming_it(tmp_path, kind):
    good = tmp_path / "good.pth"
    torch.save({"model": nn.Linear(2, 2).state_dict()}, good)
    bad = tmp_path / f"{kind}.pth"
    if kind == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "text":
        bad.write_text("not a checkpoint\n")
    elif kind == "list":
        torch.save([1, 2, 3], bad)
    else:
        torch.save({"weight": "a string"}, bad)
    ck = QuantDetCheckpointer(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=f"{kind}.pth"):
        ck.load(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        ck.load(str(tmp_path / "missing.pth"))


def _quant_state(layers, params=("step", "signed", "initialized")):
    state = {}
    for layer in layers:
        state[f"{layer}.weight"] = torch.zeros(2, 2, 1, 1)
        for role in ("weight_quantizer", "input_quantizer"):
            state.update({f"{layer}.{role}.{p}": torch.zeros(()) for p in params})
    return state


def test_low_bit_backbone_may_initialize_a_model_quantizing_more_layers():
    """Quantize-All double init: WEIGHTS holds only the backbone's quantizers."""
    model = _quant_state(["backbone.bottom_up.res2.0.conv1", "backbone.fpn_output3", "head.cls_score"])
    backbone = _quant_state(["backbone.bottom_up.res2.0.conv1"])
    checkpointer_module.check_compatible(model, backbone, "low.pth")


@pytest.mark.parametrize("file_state, message", [
    (_quant_state(["backbone.bottom_up.res2.0.conv1"], params=("alpha",)),
     r"in the file only: .*conv1\.input_quantizer\.alpha.*in the model only: .*conv1\.input_quantizer\.initialized"),
    (_quant_state(["backbone.bottom_up.res2.0.conv1", "head.bbox_pred"]),
     r"in the file only: .*head\.bbox_pred\.input_quantizer\.initialized"),
])
def test_quantizer_state_must_match_layer_by_layer(file_state, message):
    model = _quant_state(["backbone.bottom_up.res2.0.conv1", "head.cls_score"])
    with pytest.raises(ValueError, match=message):
        checkpointer_module.check_compatible(model, file_state, "other.pth")
