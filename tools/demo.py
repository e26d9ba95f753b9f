#!/usr/bin/env python
"""The main job (`make demo`): the low-bit recipe in miniature on digits-det -> dashboard.

    python tools/demo.py                         # runs into output/demo/
    python tools/demo.py --root experiments/demo # the committed reference run
"""
import argparse

from quant_det.experiments.demo import DEMO_ROOT, DEMO_SET, main

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--run-set", default=DEMO_SET, help="run-set yaml (default: %(default)s)")
    p.add_argument("--root", default=DEMO_ROOT, help="where the rows' directories go (default: %(default)s)")
    args = p.parse_args()
    main(args.run_set, args.root)
