"""Every MODEL.QUANTIZATION.SKIP and POLICY entry must match at least one layer in SCOPE.

Why: an entry whose regex matches nothing used to be ignored, so a typo silently quantized a layer
it was meant to keep (e.g. an 8-bit first layer became 4-bit). `convert.quantize_model` calls
`check_entries_match` before swapping any layer.
"""
import difflib
import re
from typing import Sequence

KEY = "MODEL.QUANTIZATION"


def check_entries_match(spec, candidates: Sequence[str]) -> None:
    """Raise KeyError naming the first SKIP/POLICY entry of `spec` (a QuantizationSpec) whose regex
    fullmatches none of `candidates` (the names of the Conv2d/Linear layers in SCOPE), with the
    three layer names nearest to it.

    Example: SKIP ["backbone.bottom_up.stem.conv"] ->
        KeyError: "MODEL.QUANTIZATION.SKIP[0]='backbone.bottom_up.stem.conv' matches no Conv2d/Linear
        layer in SCOPE ['backbone', 'head']; nearest layer names: backbone.bottom_up.stem.conv1, ..."
    """
    entries = [(f"{KEY}.SKIP[{i}]", p) for i, p in enumerate(spec.skip)]
    entries += [(f"{KEY}.POLICY[{i}]", e[0]) for i, e in enumerate(spec.policy)]
    for key, pattern in entries:
        if any(re.fullmatch(pattern, name) for name in candidates):
            continue
        near = difflib.get_close_matches(pattern, candidates, n=3, cutoff=0.0)
        where = f"nearest layer names: {', '.join(near)}" if near else "SCOPE holds no Conv2d/Linear layer"
        raise KeyError(f"{key}={pattern!r} matches no Conv2d/Linear layer in SCOPE "
                       f"{list(spec.scope)} (regexes are re.fullmatch'ed on module names); {where}")
