"""Rename rules for checkpoint keys: built-in rule sets, `--rule` regexes and `--mf/--mt` files.

A rule is an anchored regex (`re.fullmatch` on the whole key) plus a replacement template
(`\\1`, `\\g<name>`) or None, meaning "drop this key on purpose". Rules are tried in order and
the first full match wins, so a key is never renamed twice and `conv1` can never match inside
`layer1.0.conv1`.

Built-in rule sets (`RULE_SETS`), all producing detectron2 ResNet backbone names
(`stem.conv1`, `res2.0.conv1.norm`, `res3.0.shortcut`, ...):

- "torchvision-resnet": torchvision ResNet-18/34/50/101/152 (`conv1`, `bn1`, `layerN.i.convK`,
  `layerN.i.bnK`, `layerN.0.downsample.{0,1}`). BN running statistics are kept (both detectron2's
  BatchNorm2d and FrozenBatchNorm2d have them); `num_batches_tracked` is dropped, because
  FrozenBatchNorm2d has no such buffer and BatchNorm2d fills a missing one itself. `fc.*` has no
  detectron2 counterpart and stays unconverted. A torchvision ResNet converted by our
  `quantize_model` (e.g. quant_det/experiments/classifier.py) also has quantizer state under each
  conv, `<conv>.weight_quantizer.<p>` and `<conv>.input_quantizer.<p>` (LSQ `step`, `signed`,
  `initialized`, ...): it moves with its conv, names unchanged, because it is our own state.
- "model-quantization-resnet": classification checkpoints of the original model-quantization
  project's torchvision-style ResNet (`models/resnet.py`): the names above plus each
  `custom_conv`'s quantizer tensors, moved under our submodule names with their own leaf name:
  `<conv>.quant_weight.<p>` -> `<conv>.weight_quantizer.<p>`, `<conv>.quant_activation.<p>` ->
  `<conv>.input_quantizer.<p>`. Their bookkeeping (`iteration`, `level_num`) is dropped;
  `quant_output.*` (we have no output quantizer) stays unconverted. Renaming alone cannot make
  their values ours (their `clip_val` is a clipping range, not a step; their signed LSQ grid has
  no zero level for even level counts; shapes [G,1,1,1] vs [C]; their LQ-Net basis is [bits, G]
  vs our [C, bits]), so the moved tensors keep their leaf names. With `--convert-quantizers`
  (rename_checkpoint's `quantizer_sources`, see convert_quantizers.py and quantizer_values.py)
  each quantizer whose levels our target method can hold exactly is replaced by our state
  (`step`/`signed`, `alpha` or `basis`, and `initialized` = 1 so no data-driven init overwrites
  it), checked against the stored `level_num`; the others (all of them without
  `--convert-quantizers`) are dropped and reported with the reason, so the output always loads
  into our quantized model (QuantDetCheckpointer refuses quantizer keys the model lacks) and
  those quantizers estimate their range from data.
"""
import itertools
import re
from typing import List, NamedTuple, Optional, Sequence

BN_STATS = r"(weight|bias|running_mean|running_var)"

# State of our own quantizers (quant_det.layers.QuantConv2d): kept verbatim under the renamed conv.
OUR_QUANTIZER_STATE = r"(weight_quantizer|input_quantizer)\.(\w+)"

# Their per-quantizer bookkeeping, recomputed from our config: dropped.
MQ_BOOKKEEPING = ("iteration", "level_num")


class RenameRule(NamedTuple):
    """`pattern` must fullmatch a key; `replacement` is a template, or None to drop the key."""

    pattern: "re.Pattern"
    replacement: Optional[str]
    origin: str  # where the rule came from, for messages: "torchvision-resnet", "--rule #2", ...

    def rename(self, key: str) -> Optional[str]:
        """New name for `key` (which must fullmatch `pattern`), or None if the rule drops it."""
        if self.replacement is None:
            return None
        try:
            return self.pattern.fullmatch(key).expand(self.replacement)
        except (re.error, IndexError) as e:
            raise ValueError(
                f"rule {self.origin} ({self.pattern.pattern!r} => {self.replacement!r}) "
                f"cannot rename {key!r}: {e}"
            ) from e


def _rule(pattern: str, replacement: Optional[str], origin: str) -> RenameRule:
    return RenameRule(re.compile(pattern), replacement, origin)


def _modules_torchvision_resnet():
    """(source module regex, detectron2 module template, kind) for a torchvision ResNet."""
    mods = [(r"conv1", "stem.conv1", "conv"), (r"bn1", "stem.conv1.norm", "bn")]
    for n in range(1, 5):
        res = f"res{n + 1}"
        mods += [
            (rf"layer{n}\.(\d+)\.conv([1-3])", rf"{res}.\1.conv\2", "conv"),
            (rf"layer{n}\.(\d+)\.bn([1-3])", rf"{res}.\1.conv\2.norm", "bn"),
            (rf"layer{n}\.(\d+)\.downsample\.0", rf"{res}.\1.shortcut", "conv"),
            (rf"layer{n}\.(\d+)\.downsample\.1", rf"{res}.\1.shortcut.norm", "bn"),
        ]
    return mods


def _leaf_rules(mod_re: str, mod_tpl: str, leaves, origin: str) -> List[RenameRule]:
    """One rule per (leaf regex, leaf template); leaf groups are renumbered after the module's."""
    offset = re.compile(mod_re).groups
    rules = []
    for leaf_re, leaf_tpl in leaves:
        n_leaf = re.compile(leaf_re).groups
        tpl = leaf_tpl
        for g in range(n_leaf, 0, -1):  # renumber \g in the leaf template: \1 -> \(offset+1)
            tpl = None if tpl is None else tpl.replace(f"\\{g}", f"\\g<{g + offset}>")
        full_tpl = None if tpl is None else f"{mod_tpl}.{tpl}"
        rules.append(_rule(rf"{mod_re}\.{leaf_re}", full_tpl, origin))
    return rules


def torchvision_resnet_rules(origin: str = "torchvision-resnet") -> List[RenameRule]:
    """Rules mapping a torchvision ResNet state dict onto detectron2's ResNet backbone names."""
    rules = []
    for mod_re, mod_tpl, kind in _modules_torchvision_resnet():
        if kind == "conv":
            leaves = [(r"weight", "weight"), (OUR_QUANTIZER_STATE, r"\1.\2")]
        else:
            leaves = [(BN_STATS, r"\1"), (r"num_batches_tracked", None)]
        rules += _leaf_rules(mod_re, mod_tpl, leaves, origin)
    return rules


def model_quantization_resnet_rules(origin: str = "model-quantization-resnet") -> List[RenameRule]:
    """torchvision-resnet rules plus the quantizer tensors of model-quantization's custom_conv."""
    rules = torchvision_resnet_rules(origin)
    theirs_to_ours = {"quant_weight": "weight_quantizer", "quant_activation": "input_quantizer"}
    for mod_re, mod_tpl, kind in _modules_torchvision_resnet():
        if kind != "conv":
            continue
        leaves = []
        for theirs, ours in theirs_to_ours.items():
            leaves += [(rf"{theirs}\.{p}", None) for p in MQ_BOOKKEEPING]
            leaves.append((rf"{theirs}\.(\w+)", rf"{ours}.\1"))
        rules += _leaf_rules(mod_re, mod_tpl, leaves, origin)
    return rules


RULE_SETS = {
    "torchvision-resnet": torchvision_resnet_rules,
    "model-quantization-resnet": model_quantization_resnet_rules,
}


def builtin_rules(name: str) -> List[RenameRule]:
    """Return the built-in rule set `name` (one of RULE_SETS)."""
    if name not in RULE_SETS:
        raise KeyError(f"unknown rule set {name!r}; choose one of {sorted(RULE_SETS)}")
    return RULE_SETS[name]()


def parse_regex_rule(text: str, origin: str = "--rule") -> RenameRule:
    """Parse 'REGEX=>REPLACEMENT' (REPLACEMENT empty = drop the key), e.g. r'head\\.(.*)=>fcos.\\1'."""
    if "=>" not in text:
        raise ValueError(f"{origin}: {text!r} is not of the form 'REGEX=>REPLACEMENT'")
    pattern, replacement = text.split("=>", 1)
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{origin}: invalid regex {pattern!r}: {e}") from e
    return RenameRule(compiled, replacement or None, origin)


_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")


def _brace_options(body: str) -> List[str]:
    m = _RANGE.fullmatch(body)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        step = 1 if hi >= lo else -1
        return [str(i) for i in range(lo, hi + step, step)]
    if "," in body:
        return body.split(",")
    raise ValueError(f"brace group {{{body}}} is neither a list 'a,b' nor a range 'M..N'")


def expand_braces(text: str) -> List[str]:
    """Expand every `{a,b}` list and `{M..N}` range, leftmost varying slowest (like bash).

    >>> expand_braces("layer{1,2}.{0..1}.conv1")
    ['layer1.0.conv1', 'layer1.1.conv1', 'layer2.0.conv1', 'layer2.1.conv1']
    """
    pieces = _BRACE.split(text)  # literal, body, literal, body, ..., literal
    literals, bodies = pieces[0::2], pieces[1::2]
    if any(c in lit for lit in literals for c in "{}"):
        raise ValueError(f"unbalanced or nested braces in {text!r}")
    choices = [_brace_options(b) for b in bodies]
    out = []
    for combo in itertools.product(*choices):
        parts = [literals[0]]
        for value, lit in zip(combo, literals[1:]):
            parts += [value, lit]
        out.append("".join(parts))
    return out


def read_key_file(path: str):
    """Return [(line number, [expanded keys])] for a mapping file; '#' starts a comment."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                entries.append((lineno, expand_braces(text)))
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: {e}") from e
    return entries


def _count_error(from_path, from_entries, to_path, to_entries) -> ValueError:
    n_from = sum(len(keys) for _, keys in from_entries)
    n_to = sum(len(keys) for _, keys in to_entries)
    msg = f"mapping files disagree: {from_path} has {n_from} keys, {to_path} has {n_to}"
    if len(from_entries) == len(to_entries):
        for (lf, kf), (lt, kt) in zip(from_entries, to_entries):
            if len(kf) != len(kt):
                return ValueError(
                    f"{msg}; first difference: {from_path}:{lf} expands to {len(kf)} keys, "
                    f"{to_path}:{lt} to {len(kt)}"
                )
    lines_f = [ln for ln, keys in from_entries for _ in keys]
    lines_t = [ln for ln, keys in to_entries for _ in keys]
    n = min(n_from, n_to)
    longer, lines = (from_path, lines_f) if n_from > n_to else (to_path, lines_t)
    return ValueError(f"{msg}; first unpaired key at {longer}:{lines[n]}")


def read_mapping_files(from_path: str, to_path: str) -> List[RenameRule]:
    """Pair the i-th key of `from_path` with the i-th key of `to_path` as exact-name rules.

    Both files list one key per line (brace expansion allowed, '#' comments, blank lines
    ignored) and must expand to the same number of keys.
    """
    from_entries, to_entries = read_key_file(from_path), read_key_file(to_path)
    olds = [(ln, k) for ln, keys in from_entries for k in keys]
    news = [k for _, keys in to_entries for k in keys]
    if len(olds) != len(news):
        raise _count_error(from_path, from_entries, to_path, to_entries)
    seen = {}
    rules = []
    for (ln, old), new in zip(olds, news):
        if old in seen:
            raise ValueError(f"{from_path}:{ln}: key {old!r} already mapped at line {seen[old]}")
        seen[old] = ln
        rules.append(RenameRule(re.compile(re.escape(old)), new.replace("\\", "\\\\"),
                                f"{from_path}:{ln}"))
    return rules


def collect_rules(rule_set: Optional[str] = None, mapping_files: Sequence = (),
                  regex_rules: Sequence[str] = ()) -> List[RenameRule]:
    """User rules first (mapping files, then regexes, in order), then the built-in set."""
    rules = []
    for from_path, to_path in mapping_files:
        rules += read_mapping_files(from_path, to_path)
    for i, text in enumerate(regex_rules, start=1):
        rules.append(parse_regex_rule(text, origin=f"--rule #{i}"))
    if rule_set:
        rules += builtin_rules(rule_set)
    return rules
