"""Every yacs key quant_det adds to detectron2's config, each documented with its allowed values.

`add_quant_det_config(cfg)` adds them to a config returned by `detectron2.config.get_cfg()`;
nothing here touches detectron2's global defaults. With the defaults below, a model builds and
behaves exactly like the float detectron2 model (no quantization, FPN without ReLU).

Example:
    cfg = get_cfg(); add_quant_det_config(cfg); cfg.merge_from_file("configs/digits/fcos_R_18_FPN.yaml")
"""
from detectron2.config import CfgNode as CN

MODES = ("qat", "calibrate", "eval")
LSQ_INITS = ("paper", "mse")
FPN_RELU_PLACEMENTS = ("output", "fork", "all_convs")


def add_fcos_config(cfg):
    """MODEL.FCOS: the yacs form of detectron2 0.6's (LazyConfig-only) FCOS; defaults = its lazy config."""
    cfg.MODEL.FCOS = CN()
    # Number of foreground classes.
    cfg.MODEL.FCOS.NUM_CLASSES = 80
    # FPN levels the head runs on, highest resolution first.
    cfg.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Number of 3x3 convs in each of the classification and box towers.
    cfg.MODEL.FCOS.NUM_CONVS = 4
    # Head-tower normalization: "" (none), "GN" (shared over levels), "BN"/"SyncBN" (one BN per
    # FPN level, conv weights shared: "Head-BN"), "BN-shared"/"SyncBN-shared" (one BN for all levels).
    cfg.MODEL.FCOS.NORM = "GN"
    # Prior probability of the classification bias at init.
    cfg.MODEL.FCOS.PRIOR_PROB = 0.01
    # Anchor points within this many strides of a box centre are positives.
    cfg.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 1.5
    # Focal loss parameters.
    cfg.MODEL.FCOS.FOCAL_LOSS_ALPHA = 0.25
    cfg.MODEL.FCOS.FOCAL_LOSS_GAMMA = 2.0
    # Inference: minimum sqrt(cls * centerness) score, top-k per level before NMS, NMS IoU.
    cfg.MODEL.FCOS.SCORE_THRESH_TEST = 0.2
    cfg.MODEL.FCOS.TOPK_CANDIDATES_TEST = 1000
    cfg.MODEL.FCOS.NMS_THRESH_TEST = 0.6


def add_fpn_bn_config(cfg):
    """MODEL.FPN.{USE_RELU, RELU_PLACEMENT, TOP_BLOCK_IN_FEATURE}, read by quant_det's P6/P7 FPN
    backbone builder.

    The norm itself is detectron2's MODEL.FPN.NORM ("", "BN", "SyncBN", "GN", ...).
    """
    # Input of the P6/P7 top block: "res5" (RetinaNet paper, detectron2's yacs RetinaNet) or
    # "p5" (FCOS paper, detectron2's lazy FCOS).
    cfg.MODEL.FPN.TOP_BLOCK_IN_FEATURE = "res5"
    # If True, a ReLU follows the P6/P7 convs and the FPN convs RELU_PLACEMENT names (by default
    # every FPN output conv). Together with MODEL.FPN.NORM "BN"/"SyncBN"/"GN" (which quant_det
    # applies to the P6/P7 convs too, whatever USE_RELU is) this is the "FPN-BN" recipe: FPN
    # outputs become non-negative, like post-ReLU activations, which suits unsigned activation
    # quantizers in the head.
    cfg.MODEL.FPN.USE_RELU = False
    # Where the ReLUs of USE_RELU go (ignored when USE_RELU is False); one of FPN_RELU_PLACEMENTS.
    # Every placement ReLUs P6 and P7. Below, M5 = lateral5(C5), Mi = lateral_i(Ci) + up(M(i+1)).
    # "output": Pi = ReLU(output_i(Mi)) for every level; laterals and sums Mi stay linear.
    # "fork": the original fork's USE_RELU (blueardour/detectron2, branch quantization):
    #   Mi = ReLU(lateral_i(Ci) + up(M(i+1))) and Pi = ReLU(output_i(Mi)) below the top level;
    #   the top level stays linear (M5, P5), so P5 and, for FCOS, the P6 input can be negative.
    # "all_convs": the original fork's NORM "<norm>-ReLU": a ReLU after every FPN conv (norm, if
    #   any, first), laterals included, so every Mi and Pi is non-negative. (The fork's checkpoints
    #   store these norms as `norm.0.*`; ours as `norm.*`, like every other FPN norm.)
    cfg.MODEL.FPN.RELU_PLACEMENT = "output"


def add_weight_extra_config(cfg):
    """MODEL.WEIGHT_EXTRA: double initialization (extra file first, MODEL.WEIGHTS overrides)."""
    # Checkpoint loaded before MODEL.WEIGHTS (typically the full-precision detector); "" = off.
    # Skipped when resuming. A missing or unreadable file is an error.
    cfg.MODEL.WEIGHT_EXTRA = ""
    # If True, keys of MODEL.WEIGHT_EXTRA or MODEL.WEIGHTS whose shape differs from the model are
    # dropped (and reported) instead of raising an error (never when resuming).
    cfg.MODEL.WEIGHT_EXTRA_DROP_MISMATCH = False


def add_quantization_config(cfg):
    """MODEL.QUANTIZATION: which layers become low-bit and how. Defaults: off (SCOPE = [])."""
    q = cfg.MODEL.QUANTIZATION = CN()
    # Module-path prefixes whose Conv2d/Linear layers are quantized, e.g. ["backbone", "head"].
    # [] = quantization off. Every entry must name at least one module of the model.
    q.SCOPE = []
    # Regexes (re.fullmatch on the module name) of layers inside SCOPE kept full precision.
    q.SKIP = []
    # Ordered [regex, weight_bits, act_bits] overrides; the first fullmatch wins, e.g.
    # [["backbone.bottom_up.stem.conv1", 8, 8]]. Bits in 1..8, or 32 for full precision.
    q.POLICY = []
    # "qat": train with fake quantization; "calibrate": post-training range/step and BN-statistic
    # estimation over CALIB_ITERS batches, no gradients, then save and evaluate; "eval": evaluate a
    # quantized checkpoint (with --eval-only).
    q.MODE = "qat"
    # Number of training batches used by MODE "calibrate".
    q.CALIB_ITERS = 100
    # Checkpoints record each quantizer's method, bits, levels, signedness and per-channel; loading
    # MODEL.WEIGHTS / WEIGHT_EXTRA whose quantizers differ from this config is an error. If True,
    # those quantizers are not loaded but initialize from data instead (one log line per layer).
    # Never when resuming. False | True.
    q.REINIT_MISMATCHED = False
    q.WEIGHT = CN()
    # A method registered for weights in quant_det/quantizers (`methods_for("weight")`):
    # "none" | "dorefa" | "lsq" | "lqnet" | "xnor" (binary) | "ternary".
    q.WEIGHT.METHOD = "none"
    # Bit width, 1..8.
    q.WEIGHT.BITS = 4
    # Number of quantization levels; 0 = 2**BITS; 3 = ternary (needs BITS 2).
    q.WEIGHT.LEVELS = 0
    # Per-output-channel step/scale (lsq, xnor, ternary, lqnet) instead of one per tensor.
    q.WEIGHT.PER_CHANNEL = False
    # Standardize the float weight before quantizing it (the original fork's wt_adaptive
    # "var-mean"): w' = (w - mean) / std, statistics per output channel if PER_CHANNEL else over
    # the whole tensor, computed without gradient. False | True.
    q.WEIGHT.STANDARDIZE = False
    q.ACT = CN()
    # A method registered for activations in quant_det/quantizers (`methods_for("act")`):
    # "none" | "dorefa" | "pact" | "lsq" | "lqnet".
    q.ACT.METHOD = "none"
    # Bit width, 1..8.
    q.ACT.BITS = 4
    # Number of quantization levels; 0 = 2**BITS.
    q.ACT.LEVELS = 0
    # Keep the dense detectors' prediction convs (head.cls_score, head.bbox_pred and, for FCOS,
    # head.ctrness) full precision: the original project's "Quantize-All" (its converter never
    # swapped these plain nn.Conv2d layers). False = quantize them like every layer in SCOPE.
    # False | True.
    q.SKIP_PREDICTORS = False
    # Initial LSQ step from the first training batch: "paper" = 2 * mean|v| / sqrt(Qp) (Esser et
    # al. 2020), "mse" = the step minimizing the quantization error (the rule MODE "calibrate"
    # uses). One of LSQ_INITS. Other methods keep their own rule.
    q.LSQ_INIT = "paper"
    # Weight decay of the quantizers' learned ranges (LSQ step, PACT alpha); < 0 = the same as
    # SOLVER.WEIGHT_DECAY (detectron2 decays every non-norm parameter), >= 0 = this value.
    q.RANGE_WEIGHT_DECAY = -1.0
    # After QAT (and before evaluating with --eval-only / MODE "eval"): re-estimate every
    # BatchNorm's running statistics with quantization on, as a cumulative average over this many
    # training batches (no gradients, weights unchanged); model_final.pth then holds them.
    # 0 = off. An int >= 0.
    q.BN_REESTIMATE_ITERS = 0
    # Knowledge distillation from a full-precision teacher (the FP32 parent) during QAT (ignored
    # when SCOPE is [], so a QAT config with quantization off is its plain float control): an extra
    # loss "loss_distill" = WEIGHT * (BCE of the student's class logits to the teacher's sigmoid
    # scores + L1 of box deltas and centerness logits, both weighted by the teacher's top score).
    q.DISTILL = CN()
    # Loss weight; 0 = off. A float >= 0.
    q.DISTILL.WEIGHT = 0.0
    # Teacher checkpoint, built with this config and quantization off. "" = MODEL.WEIGHT_EXTRA if
    # set (double init: the FP32 detector), else MODEL.WEIGHTS.
    q.DISTILL.TEACHER = ""


def add_logging_config(cfg):
    """QUANT_DET.LOG_PERIOD: detectron2 hard-codes a 20-iteration period for its writers."""
    cfg.QUANT_DET = CN()
    # Iterations between lines of console log / metrics.json / tensorboard events.
    cfg.QUANT_DET.LOG_PERIOD = 20


def add_quant_det_config(cfg):
    """Add all quant_det keys to `cfg` (a detectron2 CfgNode) and return it."""
    add_logging_config(cfg)
    add_fcos_config(cfg)
    add_fpn_bn_config(cfg)
    add_weight_extra_config(cfg)
    add_quantization_config(cfg)
    return cfg
