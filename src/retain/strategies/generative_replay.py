"""Generative replay: a generator of past inputs, labelled by the old model, instead of a buffer.

The one departure from "strategies never call backward": the generator (a small VAE) is this
strategy's own auxiliary model, with its own objective (the ELBO), optimizer (Adam) and short
loop in ``after_task``. It is not the model being trained: folding it into the learner's
optimizer would tie its learning rate, gradient clipping and schedule to the learner's, and make
the learner's loss carry a term that has nothing to do with its task. The learner's training
still goes only through the loop.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from retain.data.loader import to_device
from retain.errors import Unsupported
from retain.models.vae import VAE
from retain.objectives import distillation_loss
from retain.strategies import register
from retain.strategies.base import Strategy
from retain.utils.seed import derive_seed

if TYPE_CHECKING:
    from torch import nn

    from retain.data.stream import Stream
    from retain.strategies.context import TaskContext


@register("generative_replay", reference_url="https://arxiv.org/abs/1705.08690")
@dataclass(repr=False)  # keep Strategy.__repr__: only non-default fields
class GenerativeReplay(Strategy):
    """Generative replay: train a generator of past inputs and rehearse on its samples.

    No data is stored. After each task a small variational autoencoder (VAE) is trained on that
    task's inputs together with samples from its previous self, so it learns to produce inputs
    like those of every task so far. While later tasks train, each batch is extended with
    generated inputs, labelled by a frozen copy of the model as it was before the task (the
    "previous solver"), so the model keeps answering old inputs as it used to. The generated
    rows are marked ``batch["replayed"]``. It works for classification on inputs in [0, 1]
    (images scaled to [0, 1]); how well depends on how well the VAE can generate the data,
    which gets hard beyond MNIST-like images (van de Ven: scaling it to natural images "turns
    out not to be straight-forward"). The generator costs compute, not memory: it is trained
    after every task but the last, on ``k + 1`` times the task's data after the ``k``-th.

    Args:
        latent_dim: Size of the VAE's random code. Larger codes can describe more varied inputs
            but need more data to train (8 suits small grey images such as digits and MNIST).
        hidden: Width of the VAE's two hidden layers (encoder and decoder alike).
        vae_epochs: Passes over each task's data when training the VAE after that task (batches
            of ``vae_batch_size`` real inputs, each joined by generated ones for every earlier
            task, so all tasks so far weigh the same).
        vae_batch_size: Real inputs per VAE batch. The VAE's own, not ``train.batch_size``:
            at Seq-MNIST's batch of 10 the VAE would take 98 % of the run's time (140x finetune).
        vae_lr: Learning rate of the VAE's own Adam optimizer.
        ratio: Fraction of each training batch that is generated, in [0, 1) (as ``replay``'s
            ratio): 0.5 adds as many generated samples as the batch has; 0 turns replay off.
        soft_labels: Train on the previous model's full output distribution for generated
            inputs (a distillation loss at ``temperature``) instead of only its top class (False,
            as in Shin et al.). Soft labels also carry how unsure the old model was; on split
            digits with short training they forgot about half as much as hard labels.
        temperature: Softmax temperature of the distillation loss when ``soft_labels`` is on;
            higher values weigh the non-top classes more.

    Reference:
        Shin, Lee, Kim and Kim, "Continual Learning with Deep Generative Replay" (NeurIPS 2017);
        soft labels as in van de Ven et al., "Brain-inspired replay" (2020).
    """

    rehearsal: ClassVar[bool] = True

    latent_dim: int = field(default=8, metadata={"ge": 1})
    hidden: int = field(default=256, metadata={"ge": 1})
    vae_epochs: int = field(default=20, metadata={"ge": 0})
    vae_batch_size: int = field(default=128, metadata={"ge": 1})
    vae_lr: float = field(default=1e-3, metadata={"gt": 0})
    ratio: float = field(default=0.5, metadata={"ge": 0, "lt": 1})
    soft_labels: bool = True
    temperature: float = field(default=2.0, metadata={"gt": 0})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.vae_: dict[str, torch.Tensor] = {}  # the generator's weights (learned state)
        self._vae: VAE | None = None
        self._teacher: nn.Module | None = None
        self._soft: tuple[int, torch.Tensor] | None = None
        self._seen = self._task_of = torch.zeros(0)

    def check(self, stream: Stream) -> None:
        super().check(stream)
        if stream.objective != "classification" or "x" not in stream.tasks[0].train:
            raise Unsupported(
                "strategy 'generative_replay' supports classification streams with input "
                f"features only (this one is {stream.objective}); use replay, which stores real "
                "samples"
            )
        for t in stream.tasks:
            x = t.train.x
            if not x.is_floating_point() or x.min() < 0 or x.max() > 1:
                raise Unsupported(
                    "strategy 'generative_replay' needs inputs in [0, 1] (its VAE models each "
                    f"value as a probability); task '{t.name}' has values in "
                    f"[{float(x.min()):g}, {float(x.max()):g}]: rescale the inputs, or use replay"
                )

    def setup(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        stream = ctx.stream
        self.check(stream)
        with torch.random.fork_rng(devices=[]):  # the VAE's init depends on the run seed only
            torch.manual_seed(derive_seed(ctx.seed, 23))
            self._vae = VAE(stream.input_shape, self.latent_dim, self.hidden)
        if self.vae_:  # resume
            self._vae.load_state_dict(self.vae_)
        self._vae.to(ctx.device).eval()
        return model

    def before_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        self._teacher = None
        if ctx.task_index > 0:
            self._teacher = copy.deepcopy(ctx.unwrap(model)).eval()
            self._teacher.requires_grad_(False)
            earlier = ctx.stream.tasks[: ctx.task_index]
            n_out = ctx.stream.n_outputs
            # Only classes of earlier tasks may be replayed; each label's task is the first
            # earlier task that has it (the previous task where tasks share classes).
            self._seen = torch.zeros(n_out, dtype=torch.bool)
            self._task_of = torch.full((n_out,), ctx.task_index - 1, dtype=torch.long)
            if all(t.classes is not None for t in earlier):
                for j in reversed(range(len(earlier))):
                    self._seen[list(earlier[j].classes)] = True
                    self._task_of[list(earlier[j].classes)] = j
            else:
                self._seen[:] = True
            self._seen, self._task_of = self._seen.to(ctx.device), self._task_of.to(ctx.device)
        return model

    def batch(self, batch: dict[str, torch.Tensor], ctx: TaskContext) -> dict[str, torch.Tensor]:
        self._soft = None
        if self._teacher is None or self.ratio == 0:
            return batch
        n = len(batch["y"])
        m = max(1, round(n * self.ratio / (1 - self.ratio)))
        # Every process draws the codes of the whole global batch from the run's generator (the
        # same on every rank, so it stays so) and decodes its own share: the ranks rehearse
        # different samples, as one process given the global batch would.
        world = ctx.world_size
        z = torch.randn(m * world, self._vae.latent_dim, generator=ctx.generator)[ctx.rank :: world]
        x = self._vae.decode(to_device(z, batch["x"].device)).to(batch["x"].dtype)
        with torch.no_grad():
            logits = ctx.objective.forward(self._teacher, {"x": x}, task_known=False)
            logits = ctx.logits(logits).masked_fill(~self._seen, float("-inf"))
        y = logits.argmax(-1)
        new = {
            "x": x,
            "y": y,
            "task": self._task_of[y],
            "replayed": torch.ones(m, dtype=torch.bool),  # on the CPU, as replay's
        }
        was = batch.get("replayed")
        out = {}
        if was is not None and was.device.type != "cpu":  # another library's mark
            was = was.cpu()
        for k, v in {**batch, "replayed": was}.items():
            if v is None:
                v = torch.zeros(n, dtype=torch.bool)
            extra = new[k] if k in new else v.new_zeros((m, *v.shape[1:]))  # other fields: zeros
            out[k] = torch.cat([v, extra.to(v.dtype)])
        if self.soft_labels:
            self._soft = (n, logits)
        return out

    def loss(
        self, loss: torch.Tensor, out: Any, batch: dict[str, torch.Tensor], ctx: TaskContext
    ) -> torch.Tensor:
        if self._soft is None:
            return loss
        start, teacher = self._soft
        logits = ctx.logits(out)
        m, total = len(teacher), len(logits)
        student = logits[start : start + m]
        rows = {k: v[start : start + m] for k, v in batch.items()}
        # The objective's mean loss already holds the generated rows' cross-entropy on hard
        # labels; swap it for the distillation loss (same weight m / total per row).
        hard = ctx.task_loss(student, rows)
        # Over all outputs: the teacher gives zero probability to classes no earlier task has,
        # so the student is also taught to keep the newest classes off the old inputs.
        kd = distillation_loss(student, teacher, self.temperature)
        return loss + (m / total) * (kd - hard)

    def after_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        self._teacher = self._soft = None
        vae, k = self._vae, ctx.task_index
        if k == len(ctx.stream) - 1:  # no later task will sample from it: skip the cost
            return model
        previous = copy.deepcopy(vae).eval() if k > 0 else None
        optimizer = torch.optim.Adam(vae.parameters(), lr=self.vae_lr)
        vae.train()
        # shard=False: every process trains the same VAE on all the data.
        loader = ctx.make_loader(
            ctx.task.train, batch_size=self.vae_batch_size, shuffle=True, shard=False
        )
        for _ in range(self.vae_epochs):
            for b in loader:
                x = b["x"].float()
                if previous is not None:
                    x = torch.cat([x, previous.sample(len(x) * k).to(x.dtype)])
                loss = vae.loss(x)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        vae.eval()
        self.vae_ = {n: v.detach().clone() for n, v in vae.state_dict().items()}
        return model

    def stats(self) -> dict[str, Any]:
        if self._vae is None:
            return {}
        params = list(self._vae.parameters())
        return {
            "generator_params": sum(p.numel() for p in params),
            "generator_bytes": sum(p.numel() * p.element_size() for p in params),
        }
