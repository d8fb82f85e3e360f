"""Shared code of the SMP2020-EWECT scripts; every fact is defined once here.

config.py    the label list, file names and default paths
errors.py    UserError and the wrapper that turns it into one line and exit code 2
cleaning.py  clean_text(): the text normalisation used by cleaning, training and inference
data.py      reading/validating the JSON files and users' post files (lines, JSON, CSV),
             tokenizing once, length-grouped batches dealt to processes, padding
metrics.py   accuracy, both macro-F1s, per-class scores and the confusion matrix
modeling.py  the precision policy; building (fp32), loading and saving (atomically) models
prediction.py  load_predictor: the torch and onnx backends of test.py, inference.py and app.py,
             one checkpoint or the ensemble of several
decision.py  per-class decision offsets (decision.json): applied, tuned, and chosen by --decision
loss.py      train.py's loss, built once: cross-entropy, class weights, R-Drop, distillation;
             FGM's move of the word embeddings
distill.py   the teacher's soft labels, the distillation loss, a student cut from a deeper model
training.py  what train.py and pretrain.py share: processes, a run's setup (start_run,
             optimization), the optimizer step, running sums, the resumable state, signals,
             CUDA graphs, the shared flags
mlm.py       masked-LM pretraining parts: corpus, held-out split, (whole-word) masking, sparse loss
vocab.py     the WordPiece vocabulary a model from scratch gets, built from the training posts
"""
