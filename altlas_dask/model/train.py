"""Train the character-level GRU on the shipped corpus: ``python -m altlas_dask.model.train``.

Bounded in time (``--minutes``, default 3) and deterministic in its data order (``--seed``); on CPU.
Keeps the weights with the best validation loss and writes them, float16, to ``weights.pt``
beside the model code (a few MB), ready to ship.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time
from pathlib import Path

import torch
from torch import nn

from altlas_dask.model.char_gru import CORPUS_PATH, WEIGHTS_PATH, CharGRU, encode, load_model, predict, save_model


def batches(data: torch.Tensor, seq: int, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=generator)
    x = torch.stack([data[s : s + seq] for s in starts])
    y = torch.stack([data[s + 1 : s + seq + 1] for s in starts])
    return x, y


@torch.no_grad()
def evaluate(model: CharGRU, data: torch.Tensor, seq: int) -> float:
    model.eval()
    n = (len(data) - 1) // seq
    x = data[: n * seq].view(n, seq)
    y = data[1 : n * seq + 1].view(n, seq)
    logits, _ = model(x)
    model.train()
    return float(nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)))


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    text = Path(args.corpus).read_text(encoding="utf-8")
    data = torch.tensor(encode(text), dtype=torch.long)
    split = int(len(data) * 0.95)
    train_data, val_data = data[:split], data[split:]
    model = CharGRU(embed=args.embed, hidden=args.hidden, layers=args.layers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(args.seed)
    params = sum(p.numel() for p in model.parameters())
    print(f"corpus {args.corpus}: {len(text):,} chars; model {model.config}, {params:,} parameters")
    deadline = time.monotonic() + args.minutes * 60
    started = time.monotonic()
    best, best_state, step, loss_avg = math.inf, None, 0, None
    while step < args.max_steps and time.monotonic() < deadline:
        lr = args.lr * min(1.0, (step + 1) / 50)  # short warm-up
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = batches(train_data, args.seq, args.batch, generator)
        logits, _ = model(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        value = float(loss.detach())
        loss_avg = value if loss_avg is None else 0.95 * loss_avg + 0.05 * value
        if step % args.eval_every == 0:
            val = evaluate(model, val_data, args.seq)
            if val < best:
                best, best_state = val, {k: v.detach().clone() for k, v in model.state_dict().items()}
            print(f"step {step:5d}  {time.monotonic() - started:6.1f}s  train {loss_avg:.3f}  val {val:.3f}")
    val = evaluate(model, val_data, args.seq)
    if val < best or best_state is None:
        best, best_state = val, model.state_dict()
    model.load_state_dict(best_state)
    meta = {
        "steps": step,
        "seconds": round(time.monotonic() - started, 1),
        "train_loss": round(loss_avg or math.nan, 4),
        "val_loss": round(best, 4),
        "corpus": Path(args.corpus).name,
        "corpus_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "seed": args.seed,
        "seq": args.seq,
        "batch": args.batch,
        "torch": str(torch.__version__),
    }
    save_model(model, args.out, meta)
    size = Path(args.out).stat().st_size
    print(f"saved {args.out} ({size / 1e6:.2f} MB): {meta}")
    sample = predict("To be, or not", 200, 0.6, 0, model=load_model("cpu", args.out))
    print("sample:", "To be, or not" + sample["text"])
    return meta


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=str(CORPUS_PATH), help="plain-text file to train on")
    p.add_argument("--out", default=str(WEIGHTS_PATH), help="where to write the weights")
    p.add_argument("--minutes", type=float, default=3.0, help="training time bound (wall clock)")
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--seq", type=int, default=64, help="characters per training sequence")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
