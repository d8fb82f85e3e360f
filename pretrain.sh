#!/bin/sh
# Masked-LM pretraining (pretrain.py), cleaning the data first if needed; on all visible GPUs
# through torchrun when there are several, as train.sh does.
#
#   sh pretrain.sh --from_scratch --num_layers 4 --hidden_size 256   # a small BERT from scratch,
#                                                 # on a vocabulary built from the corpus
#   sh pretrain.sh --model_name bert-base-chinese --whole_word_mask   # continued pretraining
#   sh pretrain.sh --resume                       # continue an interrupted run
#   NGPU=2 sh pretrain.sh ...                     # GPUs to use (default: all visible ones)
#   sh train.sh --model_name workspace/mlm/best   # then fine-tune the result
#
# Relative paths in the arguments are relative to the folder you run it from.
set -e
REPO=$(cd "$(dirname "$0")" && pwd)
EWECT_TRAINING_SCRIPT=pretrain.py exec sh "$REPO/train.sh" "$@"
