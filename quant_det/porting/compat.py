"""Read yamls written for the original low-bit detection forks: blueardour/detectron2 and
blueardour/AdelaiDet (branch `quantization`), quantizers from aim-uofa/model-quantization.

Each original key maps to the quant_det key with the same meaning, or is accepted with a note when
it has no effect on the model (debug switches, no-ops, initialization details); every key that
changes what the network computes without a quant_det equivalent is named in ONE ValueError, unless
the caller accepts it with `allow=[key prefix, ...]` (closest equivalent or dropped, with a note).
Index-based `policy` files become SKIP/POLICY regexes by walking SCOPE of the built float model.

Example: notes = merge_original_config(cfg, "R_18_1x-Full-SyncBN-lsq-2bit.yaml", allow=["MODEL.FCOS"])
"""
import copy
import functools
import os
import re

from detectron2.config import CfgNode, get_cfg

from ..config import add_quant_det_config
from ..quantizers import check_bits

Q = "MODEL.QUANTIZATION."
_FCOS_RENAMES = {"LOSS_ALPHA": "FOCAL_LOSS_ALPHA", "LOSS_GAMMA": "FOCAL_LOSS_GAMMA",
                 "POS_RADIUS": "CENTER_SAMPLING_RADIUS", "NMS_TH": "NMS_THRESH_TEST",
                 "PRE_NMS_TOPK_TEST": "TOPK_CANDIDATES_TEST", "NUM_CLS_CONVS": "NUM_CONVS"}
_RENAMES = {"MODEL.EXTRA_WEIGHTS": "MODEL.WEIGHT_EXTRA", "SOLVER.PRINT_PERIOD": "QUANT_DET.LOG_PERIOD",
            "MODEL.FCOS.POST_NMS_TOPK_TEST": "TEST.DETECTIONS_PER_IMAGE",
            **{"MODEL.FCOS." + k: "MODEL.FCOS." + v for k, v in _FCOS_RENAMES.items()}}
# Original key -> the only values whose behaviour quant_det reproduces (the originals' defaults).
_FIXED = {
    "MODEL.FCOS.TOP_LEVELS": [2], "MODEL.FCOS.NUM_SHARE_CONVS": [0], "MODEL.FCOS.CENTER_SAMPLE": [True],
    "MODEL.FCOS.USE_RELU": [True], "MODEL.FCOS.USE_SCALE": [False], "MODEL.FCOS.THRESH_WITH_CTR": [False],
    "MODEL.FCOS.LOC_LOSS_TYPE": ["giou"], "MODEL.FCOS.USE_DEFORMABLE": [False], "MODEL.FCOS.SKIP": [False],
    "MODEL.FCOS.YIELD_PROPOSAL": [False], "MODEL.FCOS.FPN_STRIDES": [[8, 16, 32, 64, 128]],
    "MODEL.FCOS.SIZES_OF_INTEREST": [[64, 128, 256, 512]], "MODEL.fp16": [False],
    "MODEL.apex_sync_bn": [False], "MODEL.RPN.HEAD_NORM": [""], "MODEL.MOBILENET": [False],
    "MODEL.BACKBONE.ANTI_ALIAS": [False], "MODEL.RESNETS.DEFORM_INTERVAL": [1],
    "INPUT.HFLIP_TRAIN": [True], "INPUT.CROP.CROP_INSTANCE": [True],
    Q + "fm_half_range": [True], Q + "wt_half_range": [False], Q + "fm_adaptive": ["none"],
    Q + "wt_adaptive": ["none", "var-mean"], Q + "fm_grad_type": ["none"], Q + "wt_grad_type": ["none"],
    Q + "fm_quant_group": [0, 1], Q + "wt_quant_group": [0, 1], Q + "probe_list": [[]],
    Q + "progressive.enable": [False], **{Q + f"{t}_{k}": [v] for t in ("fm", "wt") for k, v in
                                          (("separator", 0.38), ("ratio", 1.0), ("scale", 0.5))},
}
# Keys with no effect on the model or only on initialization: accepted, with this note.
_PROPOSALS, _INIT = "only used when FCOS yields proposals (not for detection)", \
    "initialization only; our quantizers initialize their step/clip from the first batch"
_NOTED = {
    **{f"MODEL.FCOS.{k}_TRAIN": _PROPOSALS for k in ("INFERENCE_TH", "PRE_NMS_TOPK", "POST_NMS_TOPK")},
    "MODEL.FCOS.NUM_BOX_CONVS": "must equal NUM_CLS_CONVS (both towers have MODEL.FCOS.NUM_CONVS)",
    "MODEL.PROPOSAL_GENERATOR.NAME": "FCOS is our meta-architecture itself",
    Q + "global_buffer": "run-time buffer of the original, no configuration",
    Q + "fm_boundary": _INIT, Q + "wt_boundary": _INIT, Q + "stable": _INIT + " (no float warm-up)",
    Q + "padding_after_quant": "our activation grids hold 0: pad before/after quantizing is the same",
    **{Q + "progressive." + k: "progressive training is disabled" for k in
       ("scope", "fm_start_bit", "wt_start_bit", "fm_end_bit", "wt_end_bit")},
}
_HEAD = "proposal_generator.fcos_head"
_SCOPE_RENAMES = {"proposal_generator": "head", _HEAD: "head", **{f"{_HEAD}.{a}": f"head.{b}" for a, b in (
    ("cls_tower", "cls_subnet"), ("bbox_tower", "bbox_subnet"), ("cls_logits", "cls_score"),
    ("bbox_pred", "bbox_pred"), ("ctrness", "ctrness"))}}
_KNOWN_WORDS = {"debug", "probe", "dorefa", "pact", "lsq", "fm_lsq", "wt_lsq", "wt_dorefa", "wt_bin",
                "symmetry", "lq", "xnor"}
_QKEYS = {"keyword", "scope", "policy", "fm_enable", "wt_enable", "fm_bit", "wt_bit", "fm_level", "wt_level"}


def load_with_bases(path):
    """The yaml at `path` as a dict, its `_BASE_` chain merged relative to the file (as detectron2)."""
    return CfgNode.load_yaml_with_base(path, allow_unsafe=True)


def is_original_config(path) -> bool:
    """True if the yaml (with bases) uses the forks' layout: lowercase MODEL.QUANTIZATION keys, ..."""
    model = load_with_bases(path).get("MODEL", {})
    return (any(k != k.upper() for k in model.get("QUANTIZATION", {})) or "EXTRA_WEIGHTS" in model
            or "fp16" in model or model.get("META_ARCHITECTURE") == "OneStageDetector"
            or bool({"NMS_TH", "LOSS_ALPHA", "NUM_CLS_CONVS", "TOP_LEVELS"} & set(model.get("FCOS", {})))
            or model.get("BACKBONE", {}).get("NAME") == "build_fcos_resnet_fpn_backbone")


def _flatten(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "global_buffer":
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield prefix + k, v


def _has_key(cfg, key):
    try:
        functools.reduce(lambda node, part: node[part], key.split("."), cfg)
    except (KeyError, TypeError):
        return False
    return True


def _set(out, key, value):
    *parents, leaf = key.split(".")
    for p in parents:
        out = out.setdefault(p, {})
    out[leaf] = value


def _methods(q, bad):
    """(weight method, act method) selected by the original `keyword` list."""
    words = list(q.get("keyword", [""]))
    for w in [w for w in words if w and w not in _KNOWN_WORDS]:
        bad[Q + "keyword"] = f"{words} ({w!r}: no quant_det equivalent)"
    if "lq" in words:
        return "lqnet", "lqnet"
    if "xnor" in words:
        return "xnor", "xnor"  # xnor activations are refused by the ACT check below
    if not {"dorefa", "pact"} & set(words):
        return "none", "none"
    act = "lsq" if {"lsq", "fm_lsq"} & set(words) else "pact" if "pact" in words else "dorefa"
    weight = ("lsq" if {"lsq", "wt_lsq"} & set(words) else
              "dorefa" if {"wt_bin", "wt_dorefa"} & set(words) else "none")
    return weight, act


def _bits(q, tag, bad):
    bits, level = q.get(f"{tag}_bit", 32.0), int(q.get(f"{tag}_level", 0))
    try:
        check_bits(int(bits) if float(bits) == int(bits) else bits, name=f"{tag}_bit")
    except ValueError as e:
        bad[Q + f"{tag}_bit"] = f"{bits} ({e}; when {tag}_enable is True)"
        return 4, 0
    return int(bits), 0 if level == 2 ** int(bits) else level


def _translate_quantization(q, out, notes, bad):
    wt_on, fm_on = bool(q.get("wt_enable", False)), bool(q.get("fm_enable", False))
    weight, act = _methods(q, bad)
    weight, act = (weight if wt_on else "none"), (act if fm_on else "none")
    if fm_on and act == "xnor":
        bad[Q + "keyword"] = f"{q['keyword']} (xnor activations: no quant_det equivalent)"
    if weight == act == "none":
        notes.append("MODEL.QUANTIZATION: no side enabled with a method -> SCOPE [] (float model)")
        return
    _set(out, Q + "SCOPE", [_SCOPE_RENAMES.get(s, s) for s in q.get("scope", []) if s])
    for tag, side, method, on in (("wt", "WEIGHT", weight, wt_on), ("fm", "ACT", act, fm_on)):
        _set(out, Q + side + ".METHOD", method)
        if on:
            _set(out, Q + side + ".BITS", _bits(q, tag, bad)[0])
            _set(out, Q + side + ".LEVELS", _bits(q, tag, bad)[1])
    _set(out, Q + "WEIGHT.PER_CHANNEL", int(q.get("wt_quant_group", 0)) == 0 and weight != "none")
    if q.get("wt_adaptive", "none") == "var-mean":  # standardized over the quant group, as ours
        _set(out, Q + "WEIGHT.STANDARDIZE", True)
    if wt_on and weight == "none":
        notes.append(f"{Q}keyword {q.get('keyword')}: no weight quantizer in the fork -> WEIGHT.METHOD none")
    if weight == "lsq" and "symmetry" not in q.get("keyword", []):
        notes.append("lsq weights: ours use the paper's grid [-2^(b-1), 2^(b-1)-1]*s (fork's 'symmetry'); "
                     "the fork's default spreads 2^b levels over [-clip, clip] without 0")


def _find_policy(policy, yaml_path):
    """The policy file relative to the working directory (as the fork) or to a parent of the yaml."""
    parts = os.path.abspath(yaml_path).split(os.sep)[:-1] if yaml_path else []
    candidates = [policy] + [os.path.join(os.sep, *parts[:n], policy) for n in range(len(parts), 0, -1)]
    return next((c for c in candidates if os.path.isfile(c)), None)


def parse_policy(text):
    """[(section, {key: value})]: "on <section>:" headers, "key: value" lines, blank-line separated."""
    entries, section, cur = [], None, {}
    for raw in text.splitlines() + [""]:
        line = raw.split("#")[0].strip()
        if line.startswith("on ") and line.endswith(":"):
            section = line[3:-1].strip()
        elif ":" in line:
            key, value = (s.strip() for s in line.split(":", 1))
            cur[key] = value
            continue
        if cur:
            entries.append((section, cur))
            cur = {}
    return entries


def _policy_layers(translated):
    """Conv2d/Linear names in the fork's index order: SCOPE entries in turn, modules in registration order."""
    from detectron2.modeling import build_model
    from torch import nn
    from .. import modeling  # noqa: F401  (registers FCOS and our backbone)
    cfg = add_quant_det_config(get_cfg())
    plain = copy.deepcopy(translated)
    plain["MODEL"].pop("QUANTIZATION", None)
    cfg.merge_from_other_cfg(CfgNode(plain))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    return [f"{s}.{n}".rstrip(".") for s in translated["MODEL"]["QUANTIZATION"]["SCOPE"]
            for n, m in model.get_submodule(s).named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _translate_policy(path, translated, notes, bad):
    """Replay the policy's "on init" entries on per-layer [enabled, bits] states; write SKIP/POLICY."""
    layers, q = _policy_layers(translated), translated["MODEL"]["QUANTIZATION"]
    default = {t: [q[side]["METHOD"] != "none", q[side].get("BITS", 4)]
               for t, side in (("wt", "WEIGHT"), ("fm", "ACT"))}
    state = [{t: list(v) for t, v in default.items()} for _ in layers]
    with open(path) as f:
        entries = parse_policy(f.read())
    for section, e in entries:
        key = f"{Q}policy {os.path.basename(path)} [on {section}] {e}"
        if section != "init":  # integer-only BN/eltwise folding; without `enable: True` it is a no-op
            if e.get("enable", "False").strip("'\"") not in ("False", "false"):
                bad[key] = "integer-only norm/eltwise layers: no quant_det equivalent"
            continue
        idx = e.get("by_index", "all").replace(",", " ").split()
        idx = range(len(layers)) if idx == ["all"] else [int(i) for i in idx]
        extra = set(e) - {"by_index", "by_tag", "bit", "enable", "stable"}
        if extra or any(i >= len(layers) for i in idx):
            bad[key] = f"attributes {sorted(extra)} / indices beyond the {len(layers)} layers in SCOPE"
            continue
        for i in idx:
            for t in (t for t in ("wt", "fm") if t in e.get("by_tag", "wt fm")):
                state[i][t] = [e.get("enable", str(state[i][t][0])) not in ("False", "false"),
                               int(float(e.get("bit", state[i][t][1])))]
    bits = [tuple(s[t][1] if s[t][0] else 32 for t in ("wt", "fm")) for s in [default] + state]
    q["SKIP"] = [re.escape(n) for n, b in zip(layers, bits[1:]) if b == (32, 32)]
    q["POLICY"] = [[re.escape(n), *b] for n, b in zip(layers, bits[1:]) if b not in ((32, 32), bits[0])]
    notes.append(f"{Q}policy {path}: layer indices -> names in SCOPE order: SKIP {q['SKIP']}, "
                 f"POLICY {q['POLICY']} ('stable' warm-ups are not reproduced)")


def translate_original_config(src, allow=()):
    """Return (dict in quant_det's key layout, notes) for an original-fork yaml path or dict.
    Raises ValueError naming every original key and value quant_det cannot reproduce, except keys
    starting with an entry of `allow` (approximated or dropped, with a note)."""
    path = src if isinstance(src, str) else None
    raw = load_with_bases(src) if path else copy.deepcopy(src)
    raw.pop("_BASE_", None)
    ours = add_quant_det_config(get_cfg())
    out, notes, bad = {}, [], {}
    flat = dict(_flatten(raw))
    model = raw.get("MODEL", {})
    if model.get("META_ARCHITECTURE") == "OneStageDetector":
        if model.get("PROPOSAL_GENERATOR", {}).get("NAME") != "FCOS":
            bad["MODEL.META_ARCHITECTURE"] = "OneStageDetector (only with PROPOSAL_GENERATOR.NAME 'FCOS')"
        flat["MODEL.META_ARCHITECTURE"] = "FCOS"
        notes.append("MODEL.META_ARCHITECTURE OneStageDetector + FCOS proposal generator -> FCOS")
    backbone = flat.pop("MODEL.BACKBONE.NAME", None)
    if backbone in ("build_fcos_resnet_fpn_backbone", "build_retinanet_resnet_fpn_backbone"):
        _set(out, "MODEL.BACKBONE.NAME", "build_quant_det_resnet_fpn_backbone")
        _set(out, "MODEL.FPN.TOP_BLOCK_IN_FEATURE", "p5" if "fcos" in backbone else "res5")
    elif backbone:
        flat["MODEL.BACKBONE.NAME"] = backbone
    norm, _, act = str(flat.get("MODEL.FPN.NORM", "")).partition("-")  # fork's get_norm: "<norm>-<act>"
    if act not in ("", "ReLU"):
        bad["MODEL.FPN.NORM"] = f"'{norm}-{act}' (of the fork's norm suffixes quant_det has '-ReLU' only)"
    elif act or flat.get("MODEL.FPN.USE_RELU"):  # "-ReLU" with USE_RELU: same, ReLU(ReLU(x)) = ReLU(x)
        flat.update({"MODEL.FPN.NORM": norm, "MODEL.FPN.USE_RELU": True,
                     "MODEL.FPN.RELU_PLACEMENT": "all_convs" if act else "fork"})
    if flat.get("MODEL.FCOS.NUM_BOX_CONVS", 4) != flat.get("MODEL.FCOS.NUM_CLS_CONVS", 4):
        bad["MODEL.FCOS.NUM_BOX_CONVS"] = f"{flat['MODEL.FCOS.NUM_BOX_CONVS']} (must equal NUM_CLS_CONVS)"
    if "MODEL.FCOS.INFERENCE_TH_TEST" in flat:  # dropped if allowed; ours thresholds sqrt(cls * ctr)
        bad["MODEL.FCOS.INFERENCE_TH_TEST"] = f"{flat.pop('MODEL.FCOS.INFERENCE_TH_TEST')} (on class score)"
    qraw = model.get("QUANTIZATION", {})
    for key, value in flat.items():
        if key.startswith(Q) and key[len(Q):] in _QKEYS:
            continue
        if key in _FIXED:
            if value not in _FIXED[key]:
                bad.setdefault(key, f"{value!r} (allowed: {_FIXED[key]})")
        elif key in _NOTED:
            notes.append(f"{key}={value!r} accepted: {_NOTED[key]}")
        elif key in _RENAMES:
            _set(out, _RENAMES[key], value)
        elif _has_key(ours, key) and not key.startswith(Q):
            _set(out, key, value)
        else:
            bad.setdefault(key, f"{value!r} (no quant_det equivalent)")
    if qraw:
        _translate_quantization(qraw, out, notes, bad)
    if out.get("MODEL", {}).get("META_ARCHITECTURE") == "FCOS":
        notes.append("AdelaiDet FCOS defaults not reproduced: learnable per-level regression scale "
                     "(USE_SCALE), INFERENCE_TH_TEST 0.05 on the class score")
    policy = qraw.get("policy", "") if out.get("MODEL", {}).get("QUANTIZATION", {}).get("SCOPE") else ""
    found = _find_policy(policy, path) if policy else None
    if policy and not found:
        bad[Q + "policy"] = f"{policy!r} (not found from the working dir or the yaml's parents)"
    _raise_refused(bad, allow, path)
    if found:  # second pass: needs the (otherwise valid) model to map layer indices to names
        _translate_policy(found, out, notes, bad)
        _raise_refused(bad, allow, path)
    notes += [f"{k}: {v} -> accepted by allow (approximated or dropped)" for k, v in sorted(bad.items())]
    return out, notes


def _raise_refused(bad, allow, path):
    refused = {k: v for k, v in bad.items() if not any(k.startswith(a) for a in allow)}
    if refused:
        lines = "\n".join(f"  {k}: {v}" for k, v in sorted(refused.items()))
        raise ValueError(f"{path or 'config'}: original keys quant_det cannot reproduce:\n{lines}\n"
                         "Pass allow=[key, ...] to accept the closest equivalent (or dropping) of each.")


def merge_original_config(cfg, path, allow=()):
    """Merge an original-fork yaml into `cfg` (a CfgNode with `add_quant_det_config` applied); return
    the translation notes. Raises ValueError as `translate_original_config`."""
    translated, notes = translate_original_config(path, allow=allow)
    cfg.merge_from_other_cfg(CfgNode(translated))
    return notes
