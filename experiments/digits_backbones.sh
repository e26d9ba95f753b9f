#!/usr/bin/env bash
# Steps (1)-(3) of the recipe on digits-det: FP32 ResNet-18 classifier on digit crops
# ("backbone_full"), its W2A2 LSQ QAT copy ("backbone_low"), both renamed to detectron2 names.
# Skips a step whose output exists. Outputs: experiments/digits/backbones/<name>/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=experiments/digits/backbones
if [ ! -f $OUT/backbone_full/model_final.pth ]; then
  $PY tools/train_classifier.py --out $OUT/backbone_full --threads 1  # as recorded in its metrics.json
fi
if [ ! -f $OUT/backbone_low_w2a2_lsq/model_final.pth ]; then
  $PY tools/train_classifier.py --out $OUT/backbone_low_w2a2_lsq --threads 1 \
      --init $OUT/backbone_full/model_final.pth \
      --weight-method lsq --weight-bits 2 --act-method lsq --act-bits 2
fi
for name in backbone_full backbone_low_w2a2_lsq; do
  [ -f $OUT/$name/detectron2.pth ] || $PY tools/rename_checkpoint.py $OUT/$name/model_final.pth \
      $OUT/$name/detectron2.pth --rules torchvision-resnet --prefix backbone.bottom_up. \
      > $OUT/$name/rename_report.txt
done
