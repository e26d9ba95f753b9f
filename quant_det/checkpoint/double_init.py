"""MODEL.WEIGHT_EXTRA: what a double initialization loaded, and from which file.

Typical use: WEIGHT_EXTRA is the full-precision detector, WEIGHTS a renamed low-bit backbone;
the detector's head/FPN come from the first file and the backbone (with its quantizer
parameters) from the second. The loading itself is `QuantDetCheckpointer.double_initialize`:
two loads through the checkpointer's own path, so WEIGHT_EXTRA gets every check and log line
MODEL.WEIGHTS gets (see checkpointer.py). This file holds the report of the two loads.

Example:
    report = load_double_init(model, "backbone_w2a2.pth", "fcos_fp32.pth")
    report.source["backbone.bottom_up.res2.0.conv1.weight"]  # -> "backbone_w2a2.pth"
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Tuple

from tabulate import tabulate

logger = logging.getLogger(__name__)


@dataclass
class DoubleInitReport:
    """What a double initialization did; `source` maps each loaded model key to the file it came from."""

    weights: str
    weight_extra: str
    source: Dict[str, str] = field(default_factory=dict)
    overridden: List[str] = field(default_factory=list)  # in both files: taken from `weights`
    missing: List[str] = field(default_factory=list)  # model keys neither file had
    unexpected: Dict[str, List[str]] = field(default_factory=dict)  # file -> keys not in model
    dropped: List[Tuple[str, str, tuple, tuple]] = field(default_factory=list)  # file, key, shapes

    def record(self, path: str, loaded: Iterable[str], incompatible) -> None:
        """Add one load: `loaded` model keys, and fvcore's `_IncompatibleKeys` of that load."""
        for key in loaded:
            if key in self.source and path == self.weights:
                self.overridden.append(key)
            self.source[key] = path
        if incompatible.unexpected_keys:
            self.unexpected[path] = list(incompatible.unexpected_keys)
        self.dropped += [(path, key, tuple(got), tuple(want))
                         for key, got, want in incompatible.incorrect_shapes]

    def finish(self, model_keys: Iterable[str]) -> "DoubleInitReport":
        """Set `missing` (model keys neither file loaded) and log the table; returns self."""
        self.missing = [k for k in model_keys if k not in self.source]
        logger.info("Double initialization:\n%s", self.table())
        return self

    def table(self) -> str:
        """One table, a row per module: its keys and where they came from (or why not)."""
        rows: Dict[Tuple[str, str], List[str]] = {}

        def add(key, where):
            module, _, leaf = key.rpartition(".")
            rows.setdefault((module, where), []).append(leaf)

        for key, path in self.source.items():
            add(key, "WEIGHTS" if path == self.weights else "WEIGHT_EXTRA")
        for key in self.missing:
            add(key, "missing (neither file)")
        for path, keys in self.unexpected.items():
            for key in keys:
                add(key, f"unused from {'WEIGHTS' if path == self.weights else 'WEIGHT_EXTRA'}")
        for path, key, got, want in self.dropped:
            add(key, f"dropped: shape {tuple(got)} != model {tuple(want)}")
        body = [(m or "(root)", ", ".join(sorted(leaves)), where)
                for (m, where), leaves in sorted(rows.items())]
        title = f"WEIGHTS = {self.weights or '(none)'}\nWEIGHT_EXTRA = {self.weight_extra}\n"
        return title + tabulate(body, headers=["module", "keys", "from"], tablefmt="pipe")
