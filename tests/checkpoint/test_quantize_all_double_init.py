"""A low-bit backbone file initializing a Quantize-All detector, with WEIGHT_EXTRA = the FP32
detector (double init, the COCO w{4,3,2}a Full-BN configs) or alone as MODEL.WEIGHTS. Its
quantizer state loads into the backbone; FPN and head quantizers start uninitialized (from data)."""
import torch
from detectron2.utils.events import EventStorage
from conftest import load_cfg, make_batch

from quant_det.checkpoint import QuantDetCheckpointer
from quant_det.engine.trainer import Trainer

QUANT = "configs/digits/quant/fcos_R_18_FPN_FullBN_w2a2_lsq.yaml"
BACKBONE_STEP = "backbone.bottom_up.res3.0.conv1.input_quantizer.step"
HEAD_INITIALIZED = "head.cls_subnet.0.input_quantizer.initialized"


def test_low_bit_backbone_initializes_a_quantize_all_detector(tmp_path):
    torch.manual_seed(0)
    fp32 = Trainer.build_model(load_cfg("configs/digits/fcos_R_18_FPN_FullBN.yaml"))
    torch.save({"model": fp32.state_dict()}, tmp_path / "fp32.pth")
    qbackbone = Trainer.build_model(load_cfg(QUANT, "MODEL.QUANTIZATION.SCOPE", "['backbone.bottom_up']"))
    qbackbone.train()
    with EventStorage():
        qbackbone(make_batch(num_images=2, size=64))  # initializes the backbone quantizers from data
    low = {k: v for k, v in qbackbone.state_dict().items() if k.startswith("backbone.bottom_up.")}
    assert low[BACKBONE_STEP].item() > 0
    torch.save(low, tmp_path / "low.pth")

    model = Trainer.build_model(load_cfg(QUANT))
    assert model.state_dict()[HEAD_INITIALIZED].item() == 0
    ck = QuantDetCheckpointer(model, str(tmp_path / "out"), weight_extra=str(tmp_path / "fp32.pth"))
    ck.resume_or_load(str(tmp_path / "low.pth"), resume=False)
    state = model.state_dict()
    assert state[BACKBONE_STEP].item() == low[BACKBONE_STEP].item()
    assert state[HEAD_INITIALIZED].item() == 0
    torch.testing.assert_close(state["head.cls_score.weight"], fp32.state_dict()["head.cls_score.weight"])
    assert ck.double_init_report.source[BACKBONE_STEP] == str(tmp_path / "low.pth")


def test_low_bit_backbone_alone_initializes_a_quantize_all_detector(tmp_path):
    """MODEL.WEIGHTS = the low-bit backbone, no WEIGHT_EXTRA: QuantDetCheckpointer's quantizer
    check compares the file's quantized layers only, so the extra FPN/head quantizers are fine."""
    torch.manual_seed(0)
    qbackbone = Trainer.build_model(load_cfg(QUANT, "MODEL.QUANTIZATION.SCOPE", "['backbone.bottom_up']"))
    low = {k: v for k, v in qbackbone.state_dict().items() if k.startswith("backbone.bottom_up.")}
    torch.save({"model": low}, tmp_path / "low.pth")
    model = Trainer.build_model(load_cfg(QUANT))
    QuantDetCheckpointer(model, str(tmp_path / "out")).resume_or_load(str(tmp_path / "low.pth"), resume=False)
    torch.testing.assert_close(model.state_dict()[BACKBONE_STEP], low[BACKBONE_STEP])
