"""quant_det.porting.compat: original-fork yamls (tests/fixtures/original_configs) translate, merge, build."""
import os

import pytest
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import quant_det.modeling  # noqa: F401  (registers FCOS and the FPN-BN backbone)
from conftest import load_train_net
from quant_det.config import add_quant_det_config
from quant_det.convert import convert_to_quantization
from quant_det.modeling.fpn_relu import TopDownReLUFPN
from quant_det.porting.compat import is_original_config, merge_original_config, translate_original_config

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.join(TESTS, "fixtures", "original_configs")
FCOS_DIR = os.path.join(ROOT, "AdelaiDet", "configs", "FCOS-Detection")
RETINA_DIR = os.path.join(ROOT, "detectron2", "configs", "COCO-Detection")
BACKBONE_SCOPE = ["backbone.bottom_up.res2", "backbone.bottom_up.res3", "backbone.bottom_up.res4",
                  "backbone.bottom_up.res5", "backbone.fpn_lateral3", "backbone.fpn_output3",
                  "backbone.fpn_lateral4", "backbone.fpn_output4", "backbone.fpn_lateral5",
                  "backbone.fpn_output5", "backbone.top_block"]
CASES = {  # fixture -> (META_ARCHITECTURE, bits, SCOPE, SKIP, POLICY, FCOS.NORM)
    "R_18_1x-Full-SyncBN-lsq-2bit.yaml": (  # the only fixture with USE_RELU, all others "SyncBN-ReLU"
        "FCOS", 2, BACKBONE_SCOPE + ["head.cls_subnet", "head.bbox_subnet"], [], [], "SyncBN"),
    "R_18_1x-Full-SyncBN-FixFPN-FixPoint-lsq-M2F8L8.yaml": (
        "FCOS", 2, ["backbone", "head"], [r"head\.cls_score"],
        [[r"backbone\.bottom_up\.stem\.conv1", 8, 32], [r"head\.bbox_pred", 8, 8], [r"head\.ctrness", 8, 8]],
        "SyncBN"),
    "R_50_1x-Full-SyncBN-FixFPN-Shared-lsq-2bit.yaml": (
        "FCOS", 2, BACKBONE_SCOPE + ["head.cls_subnet", "head.bbox_subnet"], [], [], "SyncBN-shared"),
    "retinanet_R_18_FPN_1x-Full-SyncBN-FixFPN-FixPoint-lsq-M2F8L8.yaml": (
        "RetinaNet", 2, ["backbone", "head"],
        [r"backbone\.bottom_up\.stem\.conv1", r"head\.cls_score", r"head\.bbox_pred"], [], None),
    "retinanet_R_18_FPN_1x-Full-SyncBN-FixFPN-lsq-4bit.yaml": (
        "RetinaNet", 4, ["backbone", "head"],
        [r"backbone\.bottom_up\.stem\.conv1", r"head\.cls_score", r"head\.bbox_pred"], [], None),
}


def fixture(name):
    return os.path.join(FCOS_DIR if name.startswith("R_") else RETINA_DIR, name)


def fresh_cfg():
    return add_quant_det_config(get_cfg())


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_translates_merges_and_builds(name):
    meta, bits, scope, skip, policy, fcos_norm = CASES[name]
    path = fixture(name)
    assert is_original_config(path)
    cfg = fresh_cfg()
    notes = merge_original_config(cfg, path)
    q = cfg.MODEL.QUANTIZATION
    assert cfg.MODEL.META_ARCHITECTURE == meta
    assert cfg.MODEL.BACKBONE.NAME == "build_quant_det_resnet_fpn_backbone"
    assert cfg.MODEL.FPN.TOP_BLOCK_IN_FEATURE == ("p5" if meta == "FCOS" else "res5")
    placement = "fork" if name == "R_18_1x-Full-SyncBN-lsq-2bit.yaml" else "all_convs"
    assert (cfg.MODEL.FPN.NORM, cfg.MODEL.FPN.USE_RELU, cfg.MODEL.FPN.RELU_PLACEMENT) == (
        "SyncBN", True, placement)
    assert (q.WEIGHT.METHOD, q.WEIGHT.BITS, q.WEIGHT.PER_CHANNEL) == ("lsq", bits, False)  # wt_quant_group 1
    assert (q.ACT.METHOD, q.ACT.BITS, q.ACT.LEVELS) == ("lsq", bits, 0)
    assert list(q.SCOPE) == scope and list(q.SKIP) == skip and [list(p) for p in q.POLICY] == policy
    if fcos_norm:
        assert cfg.MODEL.FCOS.NORM == fcos_norm
    assert q.WEIGHT.STANDARDIZE  # wt_adaptive "var-mean"
    assert not [n for n in notes if "accepted by allow" in n]  # nothing approximated or dropped

    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    assert isinstance(model.backbone, TopDownReLUFPN) == (placement == "fork")
    rows = {r[0]: r for r in convert_to_quantization(model, cfg).quantization_table}
    stem = rows["backbone.bottom_up.stem.conv1"]
    if "M2F8L8" in name and meta == "FCOS":
        assert stem[2:4] == ("lsq/8b", "float")  # policy: first layer weights 8 bit, input image float
        assert rows["head.ctrness"][2:4] == ("lsq/8b", "lsq/8b")
        assert rows["head.cls_score"][2] == "float"
    quantized = [r for r in rows.values() if r[2] != "float"]
    assert quantized and all(r[2] in (f"lsq/{bits}b", "lsq/8b") for r in quantized)
    assert rows["backbone.bottom_up.res3.0.conv1"][2:4] == (f"lsq/{bits}b", f"lsq/{bits}b")


def test_original_default_weight_groups_are_per_channel():
    out, _ = translate_original_config({"MODEL": {"QUANTIZATION": {
        "scope": ["backbone"], "keyword": ["dorefa", "lsq"], "wt_enable": True, "fm_enable": False,
        "wt_bit": 3.0}}})
    q = out["MODEL"]["QUANTIZATION"]
    assert (q["WEIGHT"]["METHOD"], q["WEIGHT"]["BITS"], q["WEIGHT"]["PER_CHANNEL"]) == ("lsq", 3, True)
    assert q["ACT"]["METHOD"] == "none"


def test_keywords_select_methods():
    def methods(words):
        q = translate_original_config({"MODEL": {"QUANTIZATION": {
            "scope": ["head"], "keyword": words, "wt_enable": True, "fm_enable": True,
            "wt_bit": 2.0, "fm_bit": 2.0}}})[0]["MODEL"]["QUANTIZATION"]
        return q["WEIGHT"]["METHOD"], q["ACT"]["METHOD"]

    assert methods(["lq"]) == ("lqnet", "lqnet")
    assert methods(["pact", "wt_dorefa"]) == ("dorefa", "pact")
    assert methods(["dorefa", "wt_dorefa"]) == ("dorefa", "dorefa")


def test_extra_weights_and_adelaidet_fcos_names():
    out, _ = translate_original_config({"MODEL": {
        "EXTRA_WEIGHTS": "fp.pth", "FCOS": {"LOSS_ALPHA": 0.3, "NMS_TH": 0.5, "PRE_NMS_TOPK_TEST": 500,
                                            "NUM_CLS_CONVS": 2, "NUM_BOX_CONVS": 2, "POS_RADIUS": 2.0}}})
    assert out["MODEL"]["WEIGHT_EXTRA"] == "fp.pth"
    assert out["MODEL"]["FCOS"] == {"FOCAL_LOSS_ALPHA": 0.3, "NMS_THRESH_TEST": 0.5,
                                    "TOPK_CANDIDATES_TEST": 500, "NUM_CONVS": 2,
                                    "CENTER_SAMPLING_RADIUS": 2.0}


def test_unsupported_keys_raise_one_error_naming_all(tmp_path):
    base = os.path.relpath(os.path.join(FCOS_DIR, "Base-FCOS.yaml"), tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{base}"\nMODEL:\n  FCOS:\n    USE_SCALE: True\n    NOT_SHARED_HEAD: True\n'
                   '  QUANTIZATION:\n    scope: ["backbone"]\n    keyword: ["dorefa", "lsq", "gamma"]\n'
                   '    wt_enable: True\n    wt_bit: 2.0\n    wt_adaptive: "var-mean"\n')
    assert is_original_config(str(bad))
    with pytest.raises(ValueError) as err:
        translate_original_config(str(bad))
    for text in ("MODEL.FCOS.USE_SCALE: True", "MODEL.FCOS.NOT_SHARED_HEAD: True", "'gamma'"):
        assert text in str(err.value)


def test_our_configs_are_not_original():
    repo = os.path.dirname(TESTS)
    assert not is_original_config(os.path.join(repo, "configs/digits/quant/fcos_R_18_FPN_w4a4_lsq.yaml"))


def fpn_keys(fpn):
    """MODEL.FPN of the translation of an original yaml whose MODEL.FPN is `fpn`."""
    return translate_original_config({"MODEL": {"FPN": fpn}})[0]["MODEL"]["FPN"]


def test_fork_fpn_relus_translate_to_their_placement():
    assert fpn_keys({"NORM": "SyncBN", "USE_RELU": True}) == {
        "NORM": "SyncBN", "USE_RELU": True, "RELU_PLACEMENT": "fork"}
    assert fpn_keys({"NORM": "GN", "USE_RELU": True}) == {
        "NORM": "GN", "USE_RELU": True, "RELU_PLACEMENT": "fork"}
    for norm in ("BN", "SyncBN", "GN"):
        expected = {"NORM": norm, "USE_RELU": True, "RELU_PLACEMENT": "all_convs"}
        assert fpn_keys({"NORM": f"{norm}-ReLU"}) == expected
        # The fork's later versions assert against both; the earlier ones ReLU twice, which is once.
        assert fpn_keys({"NORM": f"{norm}-ReLU", "USE_RELU": True}) == expected
    assert fpn_keys({"NORM": "SyncBN", "USE_RELU": False}) == {"NORM": "SyncBN", "USE_RELU": False}
    assert fpn_keys({"NORM": "BN"}) == {"NORM": "BN"}


def test_other_fork_norm_suffixes_are_refused():
    with pytest.raises(ValueError, match=r"MODEL.FPN.NORM: 'SyncBN-PReLU' \(.*'-ReLU' only\)"):
        fpn_keys({"NORM": "SyncBN-PReLU"})


def test_train_net_setup_refuses_an_original_yaml_naming_its_unsupported_keys(tmp_path):
    train_net = load_train_net()
    base = os.path.relpath(os.path.join(FCOS_DIR, "R_18_1x-Full-SyncBN-lsq-2bit.yaml"), tmp_path)
    path = tmp_path / "prelu.yaml"
    path.write_text(f'_BASE_: "{base}"\nMODEL:\n  FPN:\n    NORM: "SyncBN-PReLU"\n    USE_RELU: False\n')
    out = tmp_path / "out"
    args = train_net.argument_parser().parse_args(["--config-file", str(path), "OUTPUT_DIR", str(out)])
    with pytest.raises(ValueError, match="MODEL.FPN.NORM"):
        train_net.setup(args)
    assert not out.exists()  # refused before anything was written
