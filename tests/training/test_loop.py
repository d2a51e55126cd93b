"""Learning-rate schedules shared by the recipes: by steps, and by the share of a time budget."""

from __future__ import annotations

import pytest
import torch

from training.loop import warmup_cosine, warmup_cosine_by
from training.spacegroup import TrainConfig, TrainingConfigError


def _optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def test_step_schedule_warms_up_then_decays_to_zero():
    opt = _optimizer()
    schedule = warmup_cosine(opt, 100)
    rates = []
    for _ in range(100):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert rates[0] < rates[4] <= 1.0  # warm-up over the first 5 %
    assert max(rates) == pytest.approx(1.0, abs=0.01) and rates[-1] < 0.01


def test_progress_schedule_follows_the_share_of_the_budget_spent():
    spent = [0.0]
    opt = _optimizer()
    schedule = warmup_cosine_by(opt, lambda: spent[0])
    seen = {}
    for share in (0.0, 0.025, 0.05, 0.5, 0.999, 1.5):
        spent[0] = share
        opt.step()
        schedule.step()
        seen[share] = opt.param_groups[0]["lr"]
    assert seen[0.0] < seen[0.025] < seen[0.05] == pytest.approx(1.0, abs=0.01)
    assert seen[0.5] == pytest.approx(0.5, abs=0.01) and seen[0.999] < 1e-4 and seen[1.5] == 0.0


def test_a_time_budget_must_be_positive():
    assert TrainConfig(max_seconds=30).max_seconds == 30
    with pytest.raises(TrainingConfigError, match="max_seconds"):
        TrainConfig(max_seconds=0)
