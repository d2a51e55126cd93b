"""`bench train-identify`: the command runs the real stream, network and DataLoader at tiny sizes and
prints every promised figure as strict JSON (the rates themselves are measured, not asserted)."""

from __future__ import annotations

import json

from xrd_nexus_ml.cli import main


def test_bench_train_identify_prints_every_rate(capsys):
    assert main(["bench", "train-identify", "--classes", "20", "--batches", "2", "--batch-size", "16",
                 "--old-batches", "1", "--workers", "1"]) == 0
    result = json.loads(capsys.readouterr().out)  # strict JSON: json.loads refuses NaN
    rates = ("generated_patterns_per_s", "generated_patterns_per_s_workers", "old_generated_patterns_per_s",
             "trained_patterns_per_s", "together_patterns_per_s")
    for key in rates:
        assert result[key] > 0, key
    assert result["speedup_over_old"] == result["generated_patterns_per_s"] / result["old_generated_patterns_per_s"]
    assert result["classes"] == 20 and result["batch_size"] == 16 and result["batches"] == 2
    assert result["generator_workers"] == 1 and result["n_experts"] >= 1 and result["n_parameters"] > 0
    assert result["cpu"] and result["torch_threads"] >= 1 and result["cpu_count"] >= 1
    assert result["bottleneck"] in ("network", "data")
