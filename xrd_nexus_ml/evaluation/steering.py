"""`xrd-nexus-ml evaluate steering`: frames and beamtime to locate a transition, adaptive vs uniform.

Protocol:
1. `n_ramps` simulated (Mg0.2Fe0.8)O compressions with their own seeds, transition pressures
   (15-45 GPa), coexistence widths (0.5-3 GPa), counting noise (0.3-5 % at the strongest peak)
   and background (5-30 %). Frames are simulated on demand at whatever pressure a policy asks
   for (`transitions.simulate_ramp([p])`, a fresh noise draw per frame).
2. The same tracker for every arm: the shipped end-to-end classifier bundle + the online change
   point, configured by `SteeringPolicy.changepoint_options()`.
3. Arms, all over 5-55 GPa, all stopping by the same rule (`SteeringPolicy.precision_reached`:
   95 % credible half-width <= precision, estimate flanked by `n_confirm` frames of each phase):
   - adaptive: the default "bracketing" policy (coarse 6 GPa steps, confirm, bisection).
   - uniform (the baseline): a uniform ramp of step 2 x precision from the start, stopping as
     soon as the rule is met. 2 x precision is the coarsest uniform grid that can meet the
     rule at all (a sharp transition bracketed by a step h leaves a posterior ~uniform over h,
     95 % half-width ~0.475 h), and stopping early is generous to it: a plain uniform ramp
     would run to the end of the range (`frames_uniform_full_range`).
   - uniform_fine (unless `fast`): step = precision, to show what a finer uniform grid buys.
   - monotonic (unless `fast`): the compression-only policy (no decompression).
4. Truth is the simulated 50 % point. `error_over_precision` = |estimate - truth| / precision;
   a ramp *reaches* the precision when that is <= 1 (`reached_fraction`); `declared_fraction` is
   how often the policy itself said so. Frame counts are compared only alongside both;
   `frame_ratio` is over all ramps (a uniform ramp that never meets the rule runs to the end of
   the range, as it would at the beamline), `frame_ratio_both_declared` only over the ramps
   where both arms met the rule.

Beamtime model (parameters in the JSON): frames x exposure + moves x settle + |ΔP| travelled /
membrane rate (decompression counts like compression). Defaults: 10 s exposure (an area
detector at a DAC beamline), 60 s settle (membrane pressure change, equilibration, ruby or
gauge reading), 1 GPa/min membrane rate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from xrd_nexus_ml.bundle import resolve_bundle
from xrd_nexus_ml.steering import SteeringPolicy, SteeringResult, steer
from xrd_nexus_ml.transitions import TransitionTracker, load_model, simulate_ramp
from xrd_nexus_ml.transitions.detector import DetectorTracker
from xrd_nexus_ml.transitions.materials import MATERIALS, beamline_configs, simulate_material_ramp

GOAL_FRAME_RATIO = 3.0
DEFAULT_MODEL = "end_to_end"


@dataclass(frozen=True)
class Beamtime:
    """Seconds of beamtime a scan costs: exposure per frame, settle per move, membrane rate."""

    exposure_s: float = 10.0
    settle_s: float = 60.0
    rate_gpa_per_s: float = 1.0 / 60.0

    def seconds(self, result: SteeringResult) -> float:
        return result.n_frames * self.exposure_s + result.n_moves * self.settle_s + result.travel / self.rate_gpa_per_s

    def to_dict(self) -> dict:
        return {"exposure_s": self.exposure_s, "settle_s": self.settle_s, "rate_gpa_per_s": self.rate_gpa_per_s,
                "definition": "frames x exposure_s + moves x settle_s + |dP| travelled / rate_gpa_per_s"}


def steering_sample_configs(n_ramps: int, seed: int) -> list[dict]:
    """The simulated samples of the steering evaluation (transition 15-45 GPa, wider than `evaluate
    transition`'s, so that the coarse ramp meets it anywhere): transition pressure, coexistence width, noise,
    background, seed."""
    rng = np.random.default_rng(20_000 + seed)
    return [{
        "seed": int(seed * 1000 + 501 + i),
        "transition_pressure": round(float(rng.uniform(15.0, 45.0)), 3),
        "coexistence_width": round(float(rng.uniform(0.5, 3.0)), 3),
        "noise": round(float(math.exp(rng.uniform(math.log(0.003), math.log(0.05)))), 4),
        "background": round(float(rng.uniform(0.05, 0.3)), 3),
    } for i in range(n_ramps)]


class SimulatedSample:
    """Frames of one simulated sample at any pressure, each with its own noise draw."""

    def __init__(self, config: dict, arm_offset: int = 0):
        self.config = config
        self.seed = int(config["seed"]) * 100 + arm_offset
        self.n = 0
        first = simulate_ramp([config["transition_pressure"]], config["transition_pressure"],
                              config["coexistence_width"], noise=0.0, seed=0)
        self.two_theta, self.wavelength = first.two_theta, first.wavelength

    def __call__(self, pressure: float) -> np.ndarray:
        c = self.config
        self.n += 1
        ramp = simulate_ramp([float(pressure)], c["transition_pressure"], c["coexistence_width"], noise=c["noise"],
                             seed=self.seed * 1000 + self.n, background=c["background"])
        return ramp.intensity[0]


def run_arm(policy: SteeringPolicy, model, config: dict, arm_offset: int) -> SteeringResult:
    """One policy on one simulated sample, with a fresh tracker."""
    sample = SimulatedSample(config, arm_offset)
    tracker = TransitionTracker(model, two_theta=sample.two_theta, wavelength=sample.wavelength,
                                **policy.changepoint_options())
    return steer(policy, tracker, sample)


def _arm_row(result: SteeringResult, truth: float, precision: float, beamtime: Beamtime) -> dict:
    est = result.estimate
    err = abs(est.pressure - truth) / precision if est is not None else float("inf")
    return {"frames": result.n_frames, "estimate_gpa": None if est is None else round(est.pressure, 4),
            "half_width_gpa": None if est is None else round(est.half_width, 4),
            "sigma_gpa": None if est is None else round(est.sigma, 4),
            "error_over_precision": round(err, 4) if math.isfinite(err) else None,
            "reached": bool(err <= 1.0), "declared": result.precision_reached, "stop_reason": result.stop_reason,
            "moves": result.n_moves, "travel_gpa": round(result.travel, 3), "decompressions": result.decompressions,
            "beamtime_s": round(beamtime.seconds(result), 1),
            "pressures": [round(p, 4) for p in result.pressures]}


def _summary(rows: list[dict]) -> dict:
    errors = [r["error_over_precision"] for r in rows]
    finite = [e for e in errors if e is not None]
    return {"frames_mean": float(np.mean([r["frames"] for r in rows])),
            "frames_max": int(max(r["frames"] for r in rows)),
            "beamtime_s_mean": float(np.mean([r["beamtime_s"] for r in rows])),
            "reached_fraction": float(np.mean([r["reached"] for r in rows])),
            "declared_fraction": float(np.mean([r["declared"] for r in rows])),
            "error_over_precision_mean": float(np.mean(finite)) if finite else None,
            "error_over_precision_max": float(max(finite)) if len(finite) == len(errors) and finite else None,
            "decompressions_mean": float(np.mean([r["decompressions"] for r in rows])),
            "stop_reasons": {k: sum(r["stop_reason"] == k for r in rows) for k in
                             sorted({str(r["stop_reason"]) for r in rows})}}


def evaluate_steering(n_ramps: int = 8, precision: float = 0.5, seed: int = 0, fast: bool = False,
                      coarse_step: float = 6.0, start: float = 5.0, stop: float = 55.0,
                      model: str = DEFAULT_MODEL, beamtime: Beamtime | None = None) -> dict:
    """Adaptive vs uniform ramps on `n_ramps` simulated samples; the JSON-ready summary.

    fast: only the adaptive and the uniform (2 x precision) arms."""
    if n_ramps < 1:
        raise ValueError(f"n_ramps must be >= 1, got {n_ramps}")
    if not precision > 0:
        raise ValueError(f"precision must be > 0 GPa, got {precision}")
    started = time.perf_counter()
    beamtime = beamtime or Beamtime()
    classifier = load_model(resolve_bundle(model, task="transition"))
    policies = {
        "adaptive": SteeringPolicy(start=start, stop=stop, precision=precision, coarse_step=coarse_step),
        "uniform": SteeringPolicy.uniform(precision, start=start, stop=stop),
    }
    if not fast:
        policies["uniform_fine"] = SteeringPolicy.uniform(precision, start=start, stop=stop, step=precision)
        policies["monotonic"] = SteeringPolicy(start=start, stop=stop, precision=precision, coarse_step=coarse_step,
                                               mode="monotonic")
    configs = steering_sample_configs(n_ramps, seed)
    rows: dict[str, list[dict]] = {name: [] for name in policies}
    per_ramp = []
    for config in configs:
        truth = config["transition_pressure"]
        entry = {**config}
        for offset, (name, policy) in enumerate(policies.items()):
            row = _arm_row(run_arm(policy, classifier, config, offset), truth, precision, beamtime)
            rows[name].append(row)
            entry[name] = row
        per_ramp.append(entry)
    arms = {name: {"policy": policy.to_dict(), **_summary(rows[name])} for name, policy in policies.items()}
    uniform_step = policies["uniform"].coarse_step
    full_range = [int(math.floor((stop - start) / uniform_step + 1e-9)) + 1] * n_ramps
    frames_adaptive = arms["adaptive"]["frames_mean"]
    frames_uniform = arms["uniform"]["frames_mean"]
    ratio = frames_uniform / frames_adaptive
    reached_a, reached_u = arms["adaptive"]["reached_fraction"], arms["uniform"]["reached_fraction"]
    goal_met = ratio >= GOAL_FRAME_RATIO and reached_a >= reached_u
    both = [i for i in range(n_ramps) if rows["adaptive"][i]["declared"] and rows["uniform"][i]["declared"]]
    ratio_both = (sum(rows["uniform"][i]["frames"] for i in both) / sum(rows["adaptive"][i]["frames"] for i in both)
                  if both else None)
    return {
        "frames_adaptive": frames_adaptive,
        "frames_uniform": frames_uniform,
        "frame_ratio": ratio,
        "precision": precision,
        "n_ramps": n_ramps,
        "beamtime_adaptive_s": arms["adaptive"]["beamtime_s_mean"],
        "beamtime_uniform_s": arms["uniform"]["beamtime_s_mean"],
        "beamtime_ratio": arms["uniform"]["beamtime_s_mean"] / arms["adaptive"]["beamtime_s_mean"],
        "reached_fraction_adaptive": reached_a,
        "reached_fraction_uniform": reached_u,
        "frame_ratio_both_declared": ratio_both,
        "n_ramps_both_declared": len(both),
        "frames_uniform_full_range": float(np.mean(full_range)),
        "precision_definition": "half-width of the change point's 95 % credible interval (GPa); a ramp reaches it "
                                "when |estimate - true 50 % point| <= precision",
        "uniform_definition": f"uniform ramp of step 2 x precision = {uniform_step:g} GPa from {start:g} GPa, "
                              "stopping as soon as the same precision rule is met (the coarsest uniform grid that can "
                              "meet it; a plain ramp to the end of the range costs frames_uniform_full_range)",
        "arms": arms,
        "ramps": per_ramp,
        "pressure_range_gpa": [start, stop],
        "model": model,
        "beamtime": beamtime.to_dict(),
        "goal": {"frame_ratio": GOAL_FRAME_RATIO, "met": bool(goal_met),
                 "definition": "frames_uniform / frames_adaptive >= 3 with the adaptive arm reaching the precision "
                               "on at least as many ramps as the uniform one"},
        "seed": seed,
        "fast": fast,
        "seconds": round(time.perf_counter() - started, 2),
    }


class MaterialSample:
    """Frames of one literature material (`transitions.materials`) at any pressure, fresh noise each."""

    def __init__(self, material, config: dict, arm_offset: int = 0):
        self.material, self.config = material, config
        self.seed = int(config["seed"]) % 100_000 * 100 + arm_offset
        self.n = 0
        self._simulate = simulate_material_ramp
        first = simulate_material_ramp(material, pressures=[material.pressure_range[0]], noise=0.0,
                                       energy_kev=config["energy_kev"], two_theta=config["two_theta"])
        self.two_theta, self.wavelength = first.two_theta, first.wavelength

    def __call__(self, pressure: float) -> np.ndarray:
        c = self.config
        self.n += 1
        ramp = self._simulate(self.material, pressures=[float(pressure)], seed=self.seed * 1000 + self.n,
                              noise=c["noise"], background=c["background"], texture=c["texture"],
                              energy_kev=c["energy_kev"], two_theta=c["two_theta"])
        return ramp.intensity[0]


def evaluate_steering_materials(materials="all", n_ramps: int = 4, seed: int = 0, precision_fraction: float = 0.01,
                                beamtime: Beamtime | None = None) -> dict:
    """Adaptive against uniform steering with the training-free detector on each literature material
    with a transition (beamlines varied as in `evaluate transition --materials`): frames, beamtime,
    and how often |estimate - truth| <= precision. precision = `precision_fraction` of the
    material's pressure range, the adaptive coarse step an eighth of it, the uniform step the
    precision (the detector's systematic term is half the bracket: a coarser uniform grid cannot
    declare the precision)."""
    started = time.perf_counter()
    beamtime = beamtime or Beamtime()
    names = [n for n in (MATERIALS if materials == "all" else materials) if MATERIALS[n].transition_pressures]
    configs = beamline_configs(n_ramps, seed)
    out: dict = {"materials": {}}
    for name in names:
        material = MATERIALS[name]
        start, stop = material.pressure_range
        precision = precision_fraction * (stop - start)
        widths = tuple(float(w) for w in precision * np.array([0.25, 0.5, 1, 2, 4, 8, 16]))
        policies = {"adaptive": SteeringPolicy(start=start, stop=stop, precision=precision,
                                               coarse_step=(stop - start) / 8.0, transition_widths=widths),
                    # the detector's estimate is good to about half the bracket it lies in, so a uniform
                    # ramp needs steps of the precision to reach it
                    "uniform": SteeringPolicy.uniform(precision, start=start, stop=stop, step=precision,
                                                      transition_widths=widths)}
        rows: dict[str, list[dict]] = {arm: [] for arm in policies}
        for config in configs:
            for offset, (arm, policy) in enumerate(policies.items()):
                sample = MaterialSample(material, config, offset)
                tracker = DetectorTracker(sample.two_theta, sample.wavelength, **policy.changepoint_options())
                result = steer(policy, tracker, sample)
                rows[arm].append(_arm_row(result, material.transition_pressures[0], precision, beamtime))
        arms = {arm: _summary(rows[arm]) for arm in policies}
        out["materials"][name] = {
            "precision_gpa": precision, "pressure_range_gpa": [start, stop],
            "truth_gpa": material.transition_pressures[0],
            "frame_ratio": arms["uniform"]["frames_mean"] / arms["adaptive"]["frames_mean"],
            "beamtime_ratio": arms["uniform"]["beamtime_s_mean"] / arms["adaptive"]["beamtime_s_mean"],
            "arms": arms}
    ratios = [m["frame_ratio"] for m in out["materials"].values()]
    out["frame_ratio_min"] = float(min(ratios)) if ratios else None
    out["goal"] = {"frame_ratio": GOAL_FRAME_RATIO, "met": bool(ratios) and min(ratios) >= GOAL_FRAME_RATIO,
                   "definition": "frames_uniform / frames_adaptive >= 3 on every material"}
    out["n_ramps"] = len(names) * len(configs)
    out["model"] = "auto (training-free detector)"
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out
