"""The facts every script shares: labels, data file names, default paths."""
import os

# The published repo's label order; label ids in every checkpoint follow it.
LABELS = ("happy", "angry", "sad", "fear", "surprise", "neutral")
LABEL2ID = {label: i for i, label in enumerate(LABELS)}
ID2LABEL = dict(enumerate(LABELS))
# Label spellings read as the label meant: 'neural' is a typo in many copies of the release.
LABEL_SPELLINGS = {"neural": "neutral"}
# --precision of every script: autocast's dtype (weights stay fp32); auto depends on the device.
PRECISIONS = ("auto", "bf16", "fp16", "fp32")

# The six files of SMP2020-EWECT, as released; train files may drop records when cleaned.
TRAIN_FILES = ("usual_train.txt", "virus_train.txt")
EVAL_FILES = ("usual_eval_labeled.txt", "usual_test_labeled.txt",
              "virus_eval_labeled.txt", "virus_test_labeled.txt")
DATA_FILES = TRAIN_FILES + EVAL_FILES
# The same six as a public copy lays them out (UER-py's datasets/smp2020-ewect: TSV, a text_a
# column, label ids named by the labels.json beside each file); clean_data.py reads either.
PUBLIC_COPY_FILES = {
    "usual_train.txt": "usual/train.tsv", "usual_eval_labeled.txt": "usual/dev.tsv",
    "usual_test_labeled.txt": "usual/test.tsv", "virus_train.txt": "virus/train.tsv",
    "virus_eval_labeled.txt": "virus/dev.tsv", "virus_test_labeled.txt": "virus/test.tsv"}

# Default paths are inside the repo, wherever a script is started from; paths given on the
# command line are relative to the current folder, as usual.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where the raw files are: data/raw, unless EWECT_RAW_DIR points elsewhere.
RAW_DIR = os.environ.get("EWECT_RAW_DIR", os.path.join(REPO_ROOT, "data", "raw"))
CLEAN_DIR = os.path.join(REPO_ROOT, "data", "clean")
TRAIN_FILE = os.path.join(CLEAN_DIR, "usual_train.txt")
EVAL_FILE = os.path.join(CLEAN_DIR, "usual_eval_labeled.txt")
TEST_FILE = os.path.join(CLEAN_DIR, "usual_test_labeled.txt")

# --dataset: each track's default cleaned files (train, eval: picks the best epoch, test: each
# reported on its own) and output folder under workspace/. "both" trains one model on the two
# tracks together (+1.6 usual, +1.1 virus eval macro-F1 in a competition team's log).
DATASETS = {
    "usual": {"train": ("usual_train.txt",), "eval": ("usual_eval_labeled.txt",),
              "test": ("usual_test_labeled.txt",), "output_dir": "wb"},
    "virus": {"train": ("virus_train.txt",), "eval": ("virus_eval_labeled.txt",),
              "test": ("virus_test_labeled.txt",), "output_dir": "wb_virus"},
    "both": {"train": ("usual_train.txt", "virus_train.txt"),
             "eval": ("usual_eval_labeled.txt", "virus_eval_labeled.txt"),
             "test": ("usual_test_labeled.txt", "virus_test_labeled.txt"), "output_dir": "wb_both"},
}


def dataset_files(dataset, split):
    """The cleaned files of a --dataset's split ('train', 'eval' or 'test'), as a list."""
    return [os.path.join(CLEAN_DIR, name) for name in DATASETS[dataset][split]]


def dataset_output_dir(dataset):
    """train.py's default --output_dir for a --dataset; test.py reads its best/."""
    return os.path.join(REPO_ROOT, "workspace", DATASETS[dataset]["output_dir"])


# pretrain.py's default corpus: the train and eval text of both tracks, never the test files.
PRETRAIN_CORPUS = tuple(os.path.join(CLEAN_DIR, name) for name in (
    "usual_train.txt", "virus_train.txt", "usual_eval_labeled.txt", "virus_eval_labeled.txt"))

WORKSPACE = os.path.join(REPO_ROOT, "workspace", "wb")
BEST_DIR = os.path.join(WORKSPACE, "best")

MAX_LENGTH = 140  # tokens; the published recipe's limit. Longer posts are truncated.
