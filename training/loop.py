"""Pieces every training recipe here shares: the learning-rate schedule, the replay buffer, one step.

The recipes (identification, space group, the scaling study) draw fresh simulated patterns on
every step; where simulation is the bottleneck (a CPU) each fresh batch is trained on together
with as many patterns replayed from the last `capacity` ones.
"""

from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first 5 % of `steps`, then a cosine decay to zero at `steps`."""
    warmup = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))


def warmup_cosine_by(optimizer: torch.optim.Optimizer, progress) -> torch.optim.lr_scheduler.LambdaLR:
    """`warmup_cosine` over a progress `progress()` in [0, 1] instead of a step count: a run
    with a time budget passes the share of its budget spent, so its rate decays to zero when
    the time is up, however many steps that turned out to be."""
    def factor(_step: int) -> float:
        done = min(1.0, max(0.0, float(progress())))
        return min(1.0, max(done, 1e-3) / 0.05) * 0.5 * (1 + math.cos(math.pi * done))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class ReplayBuffer:
    """The last `capacity` training rows (inputs and integer labels), sampled uniformly."""

    def __init__(self, capacity: int, x_shape, generator: torch.Generator, y_shape=()):
        self.capacity, self.size, self.head, self.generator = capacity, 0, 0, generator
        self.x = torch.zeros((capacity, *x_shape)) if capacity else None
        self.y = torch.zeros((capacity, *y_shape), dtype=torch.long)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if not self.capacity:
            return
        idx = (self.head + torch.arange(x.shape[0])) % self.capacity
        self.x[idx], self.y[idx] = x, y
        self.head = int((self.head + x.shape[0]) % self.capacity)
        self.size = min(self.capacity, self.size + x.shape[0])

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """n rows drawn with replacement; None until the buffer holds n."""
        if self.size < n:
            return None
        idx = torch.randint(self.size, (n,), generator=self.generator)
        return self.x[idx], self.y[idx]


def gradient_step(loss: torch.Tensor, network: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  schedule, max_norm: float = 5.0) -> None:
    """Backward, clip the gradient norm, step the optimizer and the schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(network.parameters(), max_norm)
    optimizer.step()
    schedule.step()
