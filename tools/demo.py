#!/usr/bin/env python
"""The main job (`make demo`): digits-det -> FP32 detector -> W4A4 QAT -> AP table."""
import sys

from quant_det.experiments.demo import main

if __name__ == "__main__":
    main(*sys.argv[1:2])
