"""Online EWC on P-MNIST as mammoth's released `ewc_on` describes it, in plain PyTorch: no retain
loop, no retain strategy; only retain's data loading, so the stream is the benchmark's.

It cross-checks bench/configs/pmnist_oewc.yaml: if retain's loop or EWC were at fault for the gap
to the published 75.79, this would land elsewhere. The Fisher: per-sample gradients of log p(y|x)
for the observed label, squared, weighted by p(y|x), averaged over the task's training samples;
accumulated with gamma = 1; penalty lam * sum F (theta - theta*)^2.

    python bench/oewc_plain.py --lam 0.7 --lr 0.1 --tasks 20 --seed 0
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from retain.data.builtin import load_builtin
from retain.data.scenarios import permuted


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lam", type=float, default=0.7)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    stream = permuted(load_builtin("mnist"), n_tasks=args.tasks, seed=args.seed)
    torch.manual_seed(args.seed)
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 100),
        nn.ReLU(),
        nn.Linear(100, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )
    for m in net.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr)

    def flat() -> torch.Tensor:
        return torch.cat([p.view(-1) for p in net.parameters()])

    def log_p(params, x, y):
        out = functional_call(net, params, (x.unsqueeze(0),))
        return F.log_softmax(out, -1)[0].gather(0, y.view(1))[0]  # vmap: no indexing by y

    per_sample = vmap(grad(log_p), in_dims=(None, 0, 0))

    def fisher(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        params = {k: v.detach() for k, v in net.named_parameters()}
        total = torch.zeros_like(flat())
        for s in range(0, len(x), 512):
            xb, yb = x[s : s + 512], y[s : s + 512]
            with torch.no_grad():
                w = F.softmax(net(xb), -1).gather(1, yb[:, None]).squeeze(1)
            g = per_sample(params, xb, yb)
            total += torch.cat(
                [
                    (w.view(-1, *[1] * (g[k].dim() - 1)) * g[k] ** 2).sum(0).view(-1)
                    for k, _ in net.named_parameters()
                ]
            )
        return total / len(x)

    fish, anchor = None, None
    start = time.time()
    for task in stream.tasks:
        x, y = task.train.x, task.train.y
        order = torch.randperm(len(x))
        for s in range(0, len(x), 128):
            idx = order[s : s + 128]
            opt.zero_grad()
            loss = F.cross_entropy(net(x[idx]), y[idx])
            if fish is not None:
                loss = loss + args.lam * (fish * (flat() - anchor) ** 2).sum()
            loss.backward()
            opt.step()
        f = fisher(x, y)
        fish = f if fish is None else fish + f
        anchor = flat().detach().clone()
    with torch.no_grad():
        accs = [(net(t.test.x).argmax(1) == t.test.y).float().mean().item() for t in stream.tasks]
    print(
        f"lam={args.lam} lr={args.lr} seed={args.seed}: average accuracy "
        f"{100 * sum(accs) / len(accs):.2f} ({time.time() - start:.0f} s)"
    )


if __name__ == "__main__":
    main()
