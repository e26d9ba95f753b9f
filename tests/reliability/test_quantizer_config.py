"""A checkpoint of another quantization config does not load silently.

Every quantizer records its method, role, bits, levels, signedness and per-channel in its state
(`<layer>.weight_quantizer._extra_state`). Resuming a W4A4 run with BITS 2, or giving a W4A4
checkpoint as MODEL.WEIGHTS of a W2A2 model, is an error naming the layers and both configs and
leaves OUTPUT_DIR byte-identical; MODEL.QUANTIZATION.REINIT_MISMATCHED True re-initializes those
quantizers from data instead (one log line each). A float checkpoint still initializes a
quantized model.
"""
import logging

import pytest
import torch

from conftest import load_cfg, load_train_net
from quant_det.checkpoint import QuantDetCheckpointer
from quant_det.engine.trainer import Trainer
from quant_det.quantizers import Quantizer, build_quantizer
from reliability.digits_runs import CONFIG, SMALL, make_small_digits, md5s, run_args

train_net = load_train_net()

Q = "MODEL.QUANTIZATION."
W2A2 = [Q + "WEIGHT.BITS", 2, Q + "ACT.BITS", 2]
RES2 = "backbone.bottom_up.res2.0.conv1"
STEM = "backbone.bottom_up.stem.conv1"  # POLICY 8/8 in both configs: the same quantizers


def build(*opts):
    return Trainer.build_model(load_cfg(CONFIG, *SMALL, *map(str, opts)))


@pytest.fixture(scope="module")
def files(module_tmp):
    """A W4A4 checkpoint whose res2 and stem quantizers hold initialized steps, and a float one."""
    root = module_tmp("quantizer_config")
    w4 = build()
    with torch.no_grad():
        for name, value in ((RES2, 0.5), (STEM, 0.125)):
            quantizer = w4.get_submodule(name).weight_quantizer
            quantizer.step.fill_(value)
            quantizer.initialized.fill_(1)
    torch.save({"model": w4.state_dict(), "iteration": 9}, root / "w4a4.pth")
    torch.save({"model": build(Q + "SCOPE", "[]").state_dict()}, root / "float.pth")
    return {"root": root, "w4a4": root / "w4a4.pth", "float": root / "float.pth",
            "datasets": make_small_digits(root / "datasets")}


@pytest.fixture
def datasets(files, monkeypatch):
    monkeypatch.setenv("QUANT_DET_DATASETS", files["datasets"])


WEIGHT_PAIR = ("file lsq weight 4-bit 16-level signed per-tensor vs config lsq weight 2-bit 4-level "
               f"signed per-tensor: {RES2}.weight_quantizer")
ACT_PAIR = ("file lsq act 4-bit 16-level sign from data per-tensor vs config lsq act 2-bit 4-level "
            f"sign from data per-tensor: {RES2}.input_quantizer")


def test_resume_with_other_bits_is_an_error_naming_layers_and_both_configs(files, datasets, tmp_path):
    out = tmp_path / "w4a4_run"
    out.mkdir()
    (out / "model_0000009.pth").write_bytes(files["w4a4"].read_bytes())
    (out / "last_checkpoint").write_text("model_0000009.pth")
    (out / "metrics.json").write_text('{"iteration": 9, "total_loss": 1.0}\n')
    before = md5s(out)
    with pytest.raises(ValueError) as info:
        train_net.main(run_args(out, *W2A2, flags=["--resume"]))
    message = str(info.value)
    for part in ["model_0000009.pth", "another quantization config", WEIGHT_PAIR, ACT_PAIR,
                 "--resume continues a run with its own config"]:
        assert part in message, message
    assert STEM not in message  # its POLICY keeps it 8-bit in both configs
    assert md5s(out) == before


def test_weights_of_another_quantization_config_are_an_error_naming_the_reinit_key(files, datasets, tmp_path):
    out = tmp_path / "w2a2"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file\n")
    before = md5s(out)
    with pytest.raises(ValueError) as info:
        train_net.main(run_args(out, "MODEL.WEIGHTS", files["w4a4"], *W2A2))
    message = str(info.value)
    for part in ["w4a4.pth", WEIGHT_PAIR, ACT_PAIR, Q + "REINIT_MISMATCHED True"]:
        assert part in message, message
    assert md5s(out) == before


def test_reinit_mismatched_initializes_those_quantizers_from_data_with_a_log_line_each(files, caplog):
    model = build(*W2A2)
    file_state = torch.load(files["w4a4"], weights_only=True)["model"]
    checkpointer = QuantDetCheckpointer(model, reinit_mismatched=True)
    with caplog.at_level(logging.INFO, logger="quant_det.checkpoint"):
        checkpointer.resume_or_load(str(files["w4a4"]), resume=False)
    quantized = [n for n, m in model.named_modules() if isinstance(m, Quantizer) and n.endswith("_quantizer")]
    lines = [r.getMessage() for r in caplog.records if "re-initialized from data" in r.getMessage()]
    assert len(lines) == len(quantized) - 2  # all but the stem's two
    assert any(line.startswith(f"{Q}REINIT_MISMATCHED: {RES2}.weight_quantizer re-initialized from data "
                               "(checkpoint ") and "lsq weight 4-bit" in line and "config: lsq weight 2-bit" in line
               for line in lines)
    state = model.state_dict()
    torch.testing.assert_close(state[f"{RES2}.weight"], file_state[f"{RES2}.weight"])  # weights load
    assert state[f"{RES2}.weight_quantizer.initialized"].item() == 0  # from data at the first step
    assert state[f"{RES2}.weight_quantizer.step"].item() == 1.0
    assert state[f"{STEM}.weight_quantizer.step"].item() == 0.125  # same config: loaded


def test_reinit_mismatched_also_applies_to_double_initialization(files):
    with pytest.raises(ValueError, match=r"w4a4\.pth.*another quantization config.*REINIT_MISMATCHED"):
        QuantDetCheckpointer(build(*W2A2), weight_extra=str(files["float"])).resume_or_load(
            str(files["w4a4"]), resume=False)
    model = build(*W2A2)
    QuantDetCheckpointer(model, weight_extra=str(files["float"]), reinit_mismatched=True).resume_or_load(
        str(files["w4a4"]), resume=False)
    assert model.state_dict()[f"{RES2}.weight_quantizer.initialized"].item() == 0
    assert model.state_dict()[f"{STEM}.weight_quantizer.step"].item() == 0.125


def test_float_checkpoint_still_initializes_a_quantized_model(files):
    model = build(*W2A2)
    QuantDetCheckpointer(model).resume_or_load(str(files["float"]), resume=False)
    file_state = torch.load(files["float"], weights_only=True)["model"]
    torch.testing.assert_close(model.state_dict()[f"{RES2}.weight"], file_state[f"{RES2}.weight"])
    assert model.state_dict()[f"{RES2}.input_quantizer.initialized"].item() == 0


def test_quantizer_state_of_another_config_is_refused_by_load_state_dict_too():
    saved = build_quantizer("lsq", "weight", 4, per_channel=True, num_channels=8).state_dict()
    with pytest.raises(ValueError) as info:
        build_quantizer("lsq", "weight", 4, num_channels=8).load_state_dict(saved)
    assert ("saved as lsq weight 4-bit 16-level signed per-channel cannot load into a lsq weight "
            "4-bit 16-level signed per-tensor quantizer") in str(info.value)
