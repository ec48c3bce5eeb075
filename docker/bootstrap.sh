#!/bin/sh
# The compose stack's one-shot `train` service: make sure the artifact folder holds a trained and calibrated
# model, then exit 0. Does nothing when the model is there already, so restarting the stack keeps the model;
# resumes an interrupted training from its checkpoint. Settings (environment):
#   LGM_ARTIFACT       artifact folder (default /data/model)
#   LGM_TRAIN_ARGS     arguments for `lgm train` (default: --dataset mnist5k, the embedded 5,000 MNIST digits)
#   LGM_CALIBRATE_ARGS arguments for `lgm calibrate` (default: none)
#   LGM_FORCE_TRAIN=1  train and calibrate again even when a model is there
set -eu
ARTIFACT="${LGM_ARTIFACT:-/data/model}"
TRAIN_ARGS="${LGM_TRAIN_ARGS:---dataset mnist5k}"
CALIBRATE_ARGS="${LGM_CALIBRATE_ARGS:-}"

if [ "${LGM_FORCE_TRAIN:-0}" = 1 ]; then
  rm -f "$ARTIFACT/model.json" "$ARTIFACT/detector.json"
fi
if [ -f "$ARTIFACT/model.json" ] && [ -f "$ARTIFACT/detector.json" ]; then
  echo "lgm-bootstrap: $ARTIFACT holds a trained and calibrated model; nothing to do"
  exit 0
fi
if [ ! -f "$ARTIFACT/model.json" ]; then
  echo "lgm-bootstrap: training into $ARTIFACT (lgm train $TRAIN_ARGS)"
  # shellcheck disable=SC2086  # LGM_TRAIN_ARGS is a list of arguments
  lgm train --out "$ARTIFACT" --resume $TRAIN_ARGS
fi
echo "lgm-bootstrap: calibrating $ARTIFACT (lgm calibrate${CALIBRATE_ARGS:+ $CALIBRATE_ARGS})"
# shellcheck disable=SC2086
lgm calibrate "$ARTIFACT" $CALIBRATE_ARGS
echo "lgm-bootstrap: done"
