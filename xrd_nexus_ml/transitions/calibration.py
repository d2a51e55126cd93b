"""How far off is a classifier's change point beyond its statistical error? Measured on ramps.

The change point's posterior standard deviation says how well the frames pin down where the
classifier's probability crosses 50 %; it does not know where that crossing lies relative to
the true transition. A classifier trained on a handful of coexistence mixtures puts it a little
off (its fraction is not linear in the true one, the coexistence width and noise vary), and
`evaluate transition` found the real error 3-5 times the statistical sigma.

At training time each model therefore runs the online change point on `n_ramps` simulated
calibration ramps (drawn like the evaluation ramps, from seeds the evaluation never uses) and
keeps two numbers: the bias (mean error: the end-to-end network puts its 50 % point a
little above the true transition) and the systematic spread, sys² = max(0, var(error) -
mean(sigma_stat²)) + var(error) / n (the last term: the bias is itself measured from n ramps).
The tracker subtracts the bias and adds sys in quadrature to the statistical sigma it reports
(`OnlineChangePoint`'s `systematic_bias` and `systematic_sigma`), so "31.0 ± 0.2 GPa" covers
where the transition really is.
"""

from __future__ import annotations

import math

import numpy as np

from xrd_nexus_ml.transitions.changepoint import TransitionTracker
from xrd_nexus_ml.transitions.ramp import evaluation_ramp_configs, seed_pressures, simulate_ramp

#: Added to the seed of `ramp.evaluation_ramp_configs`: calibration ramps never coincide with evaluation ramps.
CALIBRATION_SEED_OFFSET = 7_000


def changepoint_calibration(model, n_ramps: int = 6, seed: int = 0, ramp_factory=None) -> dict:
    """{"n_ramps", "errors_gpa", "bias_gpa", "sigma_statistical_gpa", "systematic_sigma_gpa"} of `model`.

    ramp_factory(k, seed): the k-th calibration ramp (a `ramp.Ramp`) for phases that are not the
    seed's (a model trained from a user's CIFs); default: (Mg,Fe)O ramps like the evaluation's."""
    errors, sigmas = [], []
    for k, config in enumerate(evaluation_ramp_configs(n_ramps, CALIBRATION_SEED_OFFSET + seed)):
        if ramp_factory is not None:
            ramp = ramp_factory(k, CALIBRATION_SEED_OFFSET + seed + k)
        else:
            transition = config["transition_pressure"]
            if model.n_phases > 2:  # consecutive boundaries 16 GPa apart, as the evaluation does
                transition = [transition - 8.0 * (model.n_phases - 2) + 16.0 * k for k in range(model.n_phases - 1)]
            ramp = simulate_ramp(seed_pressures(), transition, config["coexistence_width"], noise=config["noise"],
                                 seed=config["seed"], phases=model.phase_names, background=config["background"])
        tracker = TransitionTracker(model, two_theta=ramp.two_theta, wavelength=ramp.wavelength,
                                    systematic_sigma=0.0, systematic_bias=0.0)
        final = tracker.run(list(ramp.intensity), ramp.pressures)[-1].boundaries
        for estimate, truth in zip(final, ramp.transition_pressures):
            if math.isfinite(estimate.pressure):
                errors.append(estimate.pressure - truth)
                sigmas.append(estimate.sigma_statistical)
    if not errors:
        return {"n_ramps": n_ramps, "errors_gpa": [], "bias_gpa": 0.0, "sigma_statistical_gpa": None,
                "systematic_sigma_gpa": 0.0}
    err, sig = np.asarray(errors), np.asarray(sigmas)
    n = len(err)
    bias = float(err.mean())
    spread = float(np.sum((err - bias) ** 2) / max(n - 1, 1))
    # what the statistical sigma does not explain, plus the uncertainty of the bias itself
    systematic = math.sqrt(max(0.0, spread - float(np.mean(sig ** 2))) + spread / n)
    return {"n_ramps": n_ramps, "errors_gpa": [round(float(e), 4) for e in err], "bias_gpa": round(bias, 4),
            "sigma_statistical_gpa": round(float(np.sqrt(np.mean(sig ** 2))), 4),
            "systematic_sigma_gpa": round(systematic, 4)}
