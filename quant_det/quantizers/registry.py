"""The `Quantizer` base classes, the `QUANTIZERS` registry, `build_quantizer` and `set_calibration`.

`QUANTIZERS` maps a method name ("none", "dorefa", "pact", "lsq", "lqnet", "xnor", "ternary") to a
`Quantizer` subclass; it is the one list of methods: each class declares the roles it supports
in `ROLES`, and `methods_for(role)` (used by the config validation and the CLIs) reads them from
here. Every registered class is called as

    cls(role: str, bits: int, levels: int = 0, per_channel: bool = False, num_channels: int = 1)

and validates the arguments it cannot support with a `ValueError` naming argument, value and the
allowed choices. Bit widths and level counts are checked in one place, `check_bits` /
`resolve_levels`, which the config validation calls with the config key as the name.

Every quantizer except "none" records what it is in its state dict, under `<name>._extra_state`
(see `Quantizer.identity`), so that a checkpoint of another quantization config is recognized
on load instead of silently loading its steps (quant_det/checkpoint/quantizer_identity.py).
"""
import json

import torch
import torch.distributed as dist
from torch import nn

ROLES = ("weight", "act")
FLOAT_BITS = 32  # a bit width that means "full precision" where it is allowed (method "none")
QUANTIZERS = {}


def register_quantizer(name):
    """Class decorator: `QUANTIZERS[name] = cls` and `cls.method = name`."""

    def wrap(cls):
        cls.method = name
        QUANTIZERS[name] = cls
        return cls

    return wrap


def invalid(name, value, allowed, why=""):
    """ValueError "name=value is not allowed (why); allowed: ..." (the config layer prefixes the key)."""
    reason = f" ({why})" if why else ""
    return ValueError(f"{name}={value!r} is not allowed{reason}; allowed: {allowed}")


def methods_for(role):
    """The registered method names that support `role` ("weight" | "act"), in registration order.

    Example: `methods_for("act")` -> ("none", "dorefa", "pact", "lsq", "lqnet").
    """
    if role not in ROLES:
        raise invalid("role", role, ROLES)
    return tuple(name for name, cls in QUANTIZERS.items() if role in cls.ROLES)


def check_bits(bits, allow_float=False, name="bits"):
    """Raise ValueError "<name>=<bits> is not allowed; allowed: ..." unless `bits` is an int in
    1..8, or FLOAT_BITS (32, full precision) when `allow_float`. The one bit-range check."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not (
            1 <= bits <= 8 or (allow_float and bits == FLOAT_BITS)):
        raise invalid(name, bits, "an int in 1..8" + (" or 32 (full precision)" if allow_float else ""))


def resolve_levels(bits, levels, name="levels", bits_name="bits"):
    """Number of quantization levels: `levels`, or 2**bits when `levels` is 0.

    Raises ValueError (naming `bits_name` / `name`, e.g. a config key) unless bits is an int in
    1..8 and levels is 0 or an int in 2..2**bits.
    """
    check_bits(bits, name=bits_name)
    if isinstance(levels, bool) or not isinstance(levels, int) or not (levels == 0 or 2 <= levels <= 2**bits):
        raise invalid(name, levels, f"0 (= 2**bits) or an int in 2..{2 ** bits} for {bits_name}={bits}")
    return levels or 2**bits


def sync_mean(tensor):
    """Average `tensor` in place over all processes when torch.distributed is running; returns it.

    Data-driven initial values of Parameters must agree across DDP ranks (DDP never re-broadcasts
    parameters after construction).
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
        tensor.div_(dist.get_world_size())
    return tensor


def informative(x):
    """False when `x` is all zero on every DDP rank (so it says nothing about a range); a collective
    call under DDP, like the estimate it guards."""
    peak = x.detach().abs().amax().float() if x.numel() else x.new_zeros((), dtype=torch.float32)
    return bool(sync_mean(peak) > 0)


class Quantizer(nn.Module):
    """A fake quantizer: `forward(x)` returns x rounded to `levels` values, same shape/dtype/device.

    Attributes: `method` (registry name), `role` ("weight" | "act"), `bits`, `levels` (actual number
    of levels), `per_channel`/`num_channels` (one scale per dim-0 slice of a weight), `calibrating`
    (set by `set_calibration`). Subclasses list the roles they support in `ROLES`.
    """

    method = ""
    ROLES = ROLES

    def __init__(self, role, bits, levels=0, per_channel=False, num_channels=1):
        super().__init__()
        if role not in self.ROLES:
            raise invalid("role", role, self.ROLES, f"method {self.method!r}")
        if per_channel and role != "weight":
            raise invalid("per_channel", per_channel, [False], "only role 'weight' has per-channel scales")
        if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
            raise invalid("num_channels", num_channels, "an int >= 1")
        self.role = role
        self.bits = bits
        self.levels = resolve_levels(bits, levels)
        self.per_channel = bool(per_channel)
        self.num_channels = num_channels if per_channel else 1
        self._calibrating = False
        self._calib_batches = 0

    @property
    def calibrating(self):
        """True while post-training calibration re-estimates this quantizer's range from each batch."""
        return self._calibrating

    @calibrating.setter
    def calibrating(self, flag):
        if flag and not self._calibrating:
            self._calib_batches = 0
        self._calibrating = bool(flag)

    def identity(self):
        """What this quantizer is: {"method", "role", "bits", "levels", "signed", "per_channel"}.

        "signed" is the grid's sign as configured: "signed" (symmetric, e.g. every weight grid),
        "unsigned" (0..L-1, e.g. DoReFa/PACT activations) or "from data" (LSQ activations: set by
        the first batch). Saved with the state (get_extra_state); a checkpoint whose quantizer has
        another identity is a different quantization config.
        """
        return {"method": self.method, "role": self.role, "bits": self.bits, "levels": self.levels,
                "signed": self.signedness(), "per_channel": self.per_channel}

    def signedness(self):
        """"signed" for weights, "unsigned" for activations; overridden where it differs."""
        return "signed" if self.role == "weight" else "unsigned"

    def get_extra_state(self):
        """The identity as UTF-8 JSON bytes in a uint8 tensor: a tensor, because detectron2's and
        fvcore's checkpoint loaders accept nothing else in a state dict."""
        return encode_identity(self.identity())

    def set_extra_state(self, state):
        """Check a loaded identity against this quantizer's; ValueError naming both if they differ.

        (QuantDetCheckpointer compares all quantizers first and names every mismatched layer; this
        guards direct `load_state_dict` calls.)
        """
        saved, mine = decode_identity(state), self.identity()
        if any(saved[k] != mine[k] for k in saved.keys() & mine.keys()):
            raise ValueError(f"quantizer state saved as {describe_identity(saved)} cannot load into a "
                             f"{describe_identity(mine)} quantizer (another MODEL.QUANTIZATION)")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        key = prefix + "_extra_state"
        if key not in state_dict and key in missing_keys:
            missing_keys.remove(key)  # saved before identities were recorded, or converted: unchecked

    def extra_repr(self):
        text = f"method={self.method}, role={self.role}, bits={self.bits}, levels={self.levels}"
        return text + (f", per_channel=True, num_channels={self.num_channels}" if self.per_channel else "")

    def channel_view(self, t, x):
        """`t` of shape [O] reshaped to broadcast over dim 0 of `x` ([O, 1, ..., 1])."""
        return t.view((-1,) + (1,) * (x.dim() - 1))

    def check_channels(self, x):
        """Raise ValueError if a per-channel quantizer gets a tensor whose dim 0 is not num_channels."""
        if self.per_channel and x.shape[0] != self.num_channels:
            raise invalid("x.shape[0]", x.shape[0], [self.num_channels], "per-channel quantizer")


def encode_identity(identity):
    """`identity` (a dict of str/int/bool) as a uint8 tensor of canonical JSON bytes."""
    data = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return torch.tensor(list(data), dtype=torch.uint8)


def decode_identity(state):
    """The dict `encode_identity` encoded; ValueError if `state` is not such a tensor."""
    try:
        identity = json.loads(bytes(state.flatten().tolist()).decode("utf-8"))
    except (AttributeError, TypeError, ValueError) as e:
        raise ValueError(f"unreadable quantizer identity {state!r}: {e}") from None
    if not isinstance(identity, dict):
        raise ValueError(f"unreadable quantizer identity {identity!r}: not a mapping")
    return identity


def describe_identity(identity):
    """One line, e.g. "lsq weight 4-bit 16-level signed per-tensor"; None: "float (not quantized)"."""
    if identity is None:
        return "float (not quantized)"
    channel = {True: "per-channel", False: "per-tensor"}.get(identity.get("per_channel"), "")
    signed = {"from data": "sign from data"}.get(identity.get("signed"), identity.get("signed", ""))
    parts = [identity.get("method", "?"), identity.get("role", "?"), f"{identity.get('bits', '?')}-bit",
             f"{identity.get('levels', '?')}-level", str(signed), channel]
    return " ".join(p for p in parts if p)


class LearnedRangeQuantizer(Quantizer):
    """A quantizer whose range (step, clip or basis) is estimated from data.

    Keeps the persistent buffer `initialized` (0/1). In training mode, the first tensor seen calls
    `estimate(x, calibrate=False)` (the method's initialization rule). While `calibrating`, every
    batch calls `estimate(x, calibrate=True)` and the tensors in `range_tensors()` become the running
    mean over the calibration batches. Subclasses implement `estimate`, `range_tensors`, `quantize`.

    An all-zero tensor (on every DDP rank) carries no range: it neither initializes nor counts as a
    calibration batch; it goes through `passthrough` (0 is on every grid) and the first non-zero
    tensor initializes. (A ReLU after a layer whose first quantized outputs are all negative feeds
    such tensors; a step estimated from them is ~1e-10 and the first gradient drives it below 0.)
    """

    def __init__(self, role, bits, levels=0, per_channel=False, num_channels=1):
        super().__init__(role, bits, levels, per_channel, num_channels)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.uint8))
        self._known_initialized = False  # host-side mirror: avoids a device sync per forward

    def forward(self, x):
        if self.calibrating or (self.training and not self.is_initialized()):
            if not informative(x):
                return self.passthrough(x)
            with torch.no_grad():
                if self.calibrating:
                    self._calibrate(x.detach())
                else:
                    self._assign(self.estimate(x.detach(), calibrate=False), weight=1.0)
        return self.quantize(x)

    def passthrough(self, x):
        """The output for an all-zero `x` that must not set the range: `quantize(x)` (exactly 0, and
        the range Parameters stay in the autograd graph, as DDP expects every step)."""
        return self.quantize(x)

    def is_initialized(self):
        """True once a data-driven estimate (or a loaded checkpoint) has set the range."""
        if not self._known_initialized:
            self._known_initialized = bool(self.initialized)
        return self._known_initialized

    def _calibrate(self, x):
        if self.role == "weight" and self._calib_batches > 0:
            return  # weights do not change during calibration: one estimate is their running mean
        self._calib_batches += 1
        self._assign(self.estimate(x, calibrate=True), weight=1.0 / self._calib_batches)

    def _assign(self, estimates, weight):
        """range_tensors() <- (1 - weight) * old + weight * estimates (averaged over DDP ranks)."""
        for target, new in zip(self.range_tensors(), estimates):
            target.data.lerp_(sync_mean(new.to(target.dtype).reshape(target.shape)), weight)
        self.initialized.fill_(1)
        self._known_initialized = True

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False  # re-read the loaded buffer on the next forward

    def estimate(self, x, calibrate):
        """Return new values for `range_tensors()` computed from `x` (no gradients)."""
        raise NotImplementedError

    def range_tensors(self):
        """The Parameters/buffers that `estimate` sets, in the same order."""
        raise NotImplementedError

    def quantize(self, x):
        """Fake-quantize `x` with the current range."""
        raise NotImplementedError


def uninitialized_quantizers(module):
    """Names of the LearnedRangeQuantizers in `module` whose range no data or checkpoint has set
    (they would quantize with placeholder ranges, e.g. an LSQ step of 1)."""
    return [name for name, m in module.named_modules()
            if isinstance(m, LearnedRangeQuantizer) and not m.is_initialized()]


def require_initialized(module, weights):
    """ValueError naming `weights` and the first quantizers if any learned range is unset."""
    names = uninitialized_quantizers(module)
    if names:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise ValueError(f"MODEL.WEIGHTS={weights!r} sets no range for {len(names)} learned quantizer(s) "
                         f"({shown}): evaluating or exporting would use placeholder ranges. Pass a "
                         "checkpoint trained or calibrated with this MODEL.QUANTIZATION, or calibrate "
                         "it first (MODEL.QUANTIZATION.MODE calibrate)")


def build_quantizer(method, role, bits, levels=0, per_channel=False, num_channels=1):
    """Return the `Quantizer` for `method` and `role` ("weight" | "act").

    Example: `build_quantizer("lsq", "weight", 4, per_channel=True, num_channels=64)`.
    Raises ValueError (argument, value, allowed choices) for an unknown role or method, bits outside
    1..8 (method "none" also accepts 32), levels not 0 and not in 2..2**bits, or a method-specific
    restriction (e.g. xnor needs bits 1).
    """
    allowed = methods_for(role)
    if method not in allowed:
        raise invalid("method", method, allowed, f"role {role!r}")
    return QUANTIZERS[method](role, bits, levels, per_channel, num_channels)


def set_calibration(module, flag):
    """Set `calibrating = flag` on every Quantizer in `module.modules()`; returns how many were set.

    Turning calibration on restarts the running means. Run the calibration batches under
    torch.no_grad(); when done, call `set_calibration(module, False)`.
    """
    quantizers = [m for m in module.modules() if isinstance(m, Quantizer)]
    for q in quantizers:
        q.calibrating = flag
    return len(quantizers)
