"""Calibrate a trained checkpoint: fit the temperature of its probabilities on labelled eval
posts and save it, with what the corrections of emotion shares need, in MODEL_DIR/calibration.json.

    python calibrate.py                                    # workspace/wb/best on usual_eval
    python calibrate.py --dataset virus                    # workspace/wb_virus/best, virus_eval
    python calibrate.py --model_dir runs/mine/best --eval_file my_eval.csv --train_file my.csv

train.py does this itself when it finishes; this is for checkpoints trained before it did, or to
calibrate on other labelled posts (never the test posts you report on). Labels do not change:
only how sure the probabilities say the model is (ewect/calibration.py). The training files
give the training shares of the labels that `inference.py --summary`'s emq method starts from.
"""
import argparse
import os

from ewect.config import DATASETS, LABEL2ID, MAX_LENGTH, dataset_files, dataset_output_dir
from ewect.data import add_label_names_arg
from ewect.errors import UserError, positive_int, run_cli, script_help
from ewect.prediction import add_precision_arg


def parse_args(argv=None):
    p = argparse.ArgumentParser(**script_help(__doc__))
    p.add_argument("--dataset", default="usual", choices=DATASETS,
                   help="track whose eval and train files, and output folder's best/, are the "
                        "defaults")
    p.add_argument("--model_dir", help="checkpoint folder written by train.py (default: "
                                       "--dataset's best/)")
    p.add_argument("--eval_file", nargs="+",
                   help="labelled posts to fit the temperature on (default: --dataset's eval)")
    p.add_argument("--train_file", nargs="+",
                   help="the model's training files, for the training shares (default: "
                        "--dataset's)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto uses the GPU when there is one")
    add_precision_arg(p, has_int8=False)
    p.add_argument("--batch_size", type=positive_int, default=None,
                   help="posts per forward pass; None: the measured best for the device")
    p.add_argument("--max_length", type=positive_int, default=MAX_LENGTH,
                   help="tokens kept per post")
    add_label_names_arg(p)
    args = p.parse_args(argv)
    args.model_dir = args.model_dir or os.path.join(dataset_output_dir(args.dataset), "best")
    args.eval_file = args.eval_file or dataset_files(args.dataset, "eval")
    args.train_file = args.train_file or dataset_files(args.dataset, "train")
    return args


def main(argv=None):
    args = parse_args(argv)
    from ewect.calibration import CALIBRATION_FILE, calibrate, describe_calibration
    from ewect.data import clean_records, read_records
    from ewect.prediction import load_predictor

    if not os.path.isfile(os.path.join(args.model_dir, "config.json")):
        raise UserError(f"{args.model_dir}: no checkpoint here (config.json missing); pass "
                        "--model_dir")
    evaluation = [r for path in args.eval_file for r in clean_records(
        read_records(path, label_names=args.label_names), drop_empty=False)]
    training = [LABEL2ID[r.label] for path in args.train_file
                for r in read_records(path, label_names=args.label_names)]
    predictor = load_predictor(args.model_dir, device=args.device, precision=args.precision,
                               calibrated=False)
    probabilities = predictor.predict([r.content for r in evaluation], args.batch_size,
                                      args.max_length)
    record = calibrate(args.model_dir, probabilities, [LABEL2ID[r.label] for r in evaluation],
                       training, ", ".join(args.eval_file))
    print(f"{describe_calibration(record)}\nsaved in "
          f"{os.path.join(args.model_dir, CALIBRATION_FILE)}")


if __name__ == "__main__":
    run_cli(main)
