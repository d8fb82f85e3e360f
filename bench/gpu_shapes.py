"""Why a GPU step is slow on short posts: prediction and training time of a bert-base-shape model
on the real posts, under each way of shaping the batches and each attention backend, every
setting in a fresh process (the kernel caches start empty, as in a user's run).

    python -m bench.gpu_shapes --vocab .device/vocab.txt --data_dir .device/raw   # GPU machine

Each line: prediction over usual_test (5,000 posts, batch 64, bf16), the first pass (every batch
shape new) and a second pass (shapes seen); then 60 training steps of train.py's step over
length-grouped usual_train batches; and with --profile the operators that took the host's time.
"""
import argparse
import json
import subprocess
import sys
import time

SETTINGS = {  # name: (batches padded to a multiple of, cuDNN's attention kernel allowed)
    "longest+cudnn": (1, True),   # this repo before the GPU check: torch's defaults
    "longest": (1, False),
    "pad8+cudnn": (8, True),
    "pad8": (8, False),           # this repo now (ewect.data.pad_multiple, resolve_device)
}


def run_setting(name, args):
    import torch

    import ewect.prediction
    from bench.common import load_posts
    from ewect.config import MAX_LENGTH
    from ewect.data import Collator, encode, length_grouped_batches
    from ewect.loss import make_loss
    from ewect.modeling import build_model
    from ewect.prediction import predict_logits
    from ewect.training import make_optimizer
    from train import train_step

    multiple, cudnn_attention = SETTINGS[name]
    torch.backends.cuda.enable_cudnn_sdp(cudnn_attention)
    ewect.prediction.pad_multiple = lambda device_type: multiple  # what predict_logits pads to
    device = torch.device(args.device)
    torch.manual_seed(0)
    model, tokenizer = build_model("bert-base-chinese", from_scratch=True, vocab=args.vocab,
                                   num_layers=args.num_layers, hidden_size=args.hidden_size)
    model.to(device)
    amp = torch.bfloat16
    test_texts, _ = load_posts(args.data_dir, "usual_test_labeled.txt", drop_empty=False)
    test_ids = encode(tokenizer, test_texts, MAX_LENGTH)
    model.eval()
    result = {"setting": name}
    for pass_name in ("predict_first_s", "predict_second_s"):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        predict_logits(model, test_ids, 64, device, amp)  # ends with .cpu(): synced
        result[pass_name] = round(time.perf_counter() - start, 2)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        new_ids = [ids[:len(ids) - 1] or ids for ids in test_ids[:640]]  # new lengths
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            predict_logits(model, new_ids, 64, device, amp)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    model.train()
    texts, labels = load_posts(args.data_dir, "usual_train.txt", drop_empty=True)
    ids = encode(tokenizer, texts, MAX_LENGTH)
    collate = Collator(ids, labels, tokenizer.pad_token_id, multiple=multiple)
    batches = length_grouped_batches([len(x) for x in ids], 64, seed=0)[:args.train_steps]
    optimizer, loss = make_optimizer(model, 1e-5, 0.01), make_loss("bf16")
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for indices in batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in collate(indices).items()}
        train_step(model, [batch], len(indices), loss, optimizer, None, 1.0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    result["train_steps"] = len(batches)
    result["train_ms_per_step"] = round((time.perf_counter() - start) * 1000 / len(batches), 1)
    print(json.dumps(result), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", required=True, help="vocab.txt of the model")
    p.add_argument("--data_dir", required=True, help="folder with the raw SMP2020-EWECT files")
    p.add_argument("--device", default="cuda", help="cuda (or cpu for a smoke test)")
    p.add_argument("--num_layers", type=int, default=12, help="BERT layers")
    p.add_argument("--hidden_size", type=int, default=768, help="BERT hidden size")
    p.add_argument("--train_steps", type=int, default=60, help="training steps timed")
    p.add_argument("--profile", action="store_true", help="also profile new-shape batches")
    p.add_argument("--setting", choices=SETTINGS, help="run one setting here (else each, apart)")
    args = p.parse_args()
    if args.setting:
        return run_setting(args.setting, args)
    for name in SETTINGS:
        extra = ["--profile"] if name == "longest+cudnn" and not args.profile else []
        subprocess.run([sys.executable, "-m", "bench.gpu_shapes", *sys.argv[1:], "--setting", name,
                        *extra], check=False)


if __name__ == "__main__":
    main()
