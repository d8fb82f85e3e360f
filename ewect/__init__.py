"""Shared code of the SMP2020-EWECT fine-tuning scripts; every fact is defined once here.

config.py    the label list, file names and default paths
errors.py    UserError and the wrapper that turns it into one line and exit code 2
cleaning.py  clean_text(): the text normalisation used by cleaning, training and inference
data.py      reading/validating the JSON files, tokenizing once, length-grouped batching, padding
metrics.py   accuracy, macro-F1, per-class scores and the confusion matrix (same as scikit-learn)
modeling.py  building, loading, saving (atomically) and running the classifier
training.py  the optimizer, grad scaler, training step and device-side running metrics
mlm.py       masked-LM pretraining parts: corpus, held-out split, (whole-word) masking, sparse loss
"""
