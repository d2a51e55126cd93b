"""Phase-transition commands: `transition` (a measured series), `train transition`,
`evaluate transition`, `evaluate steering`."""

from __future__ import annotations

import json
from pathlib import Path

from xrd_nexus_ml.cli.common import name_list, print_json


def cmd_transition(args) -> int:
    from xrd_nexus_ml.transition_series import (  # local: start-up time
        classify_series,
        find_transitions,
        load_series,
        plot_series,
    )

    series = load_series(args.inputs, control=args.control, wavelength=args.wavelength)
    result = find_transitions(series) if args.model == "auto" else classify_series(series, args.model)
    if args.plot:
        result["plot"] = str(plot_series(series, result, args.plot))
    if args.json:
        print_json(result)
        return 0
    unit, name = result["unit"], result["control"]
    print(f"{'frame':<28} {name + ' (' + unit + ')':>18}  status")
    for f in result["frames"]:
        extra = f" (score {f['change_score']:.2f})" if f.get("status") == "changed" and "change_score" in f else ""
        reason = f": {f['reason']}" if f["status"] == "flagged" else ""
        print(f"{f['file']:<28} {f[name]:>18.4g}  {f['status']}{extra}{reason}")
    if not result["transitions"]:
        print("no transition found")
    for t in result["transitions"]:
        print(f"transition {t['from']} -> {t['to']} at {t['value']:.4g} ± {t['sigma']:.2g} {unit} (1σ, "
              f"{t['direction']} {name}{'' if t['settled'] else ', not settled'})")
    if args.plot:
        print(f"figure: {result['plot']}")
    return 0


def user_phases(cifs: list[str], eos: list[str] | None) -> list:
    """--phase CIF ... with their optional --eos V0,K0,K0p, as `materials.StructurePhase`s."""
    from xrd_nexus_ml.transitions.materials import phase_from_cif  # local: start-up time
    from xrd_nexus_ml.transitions.ramp import BirchMurnaghan3, RampError

    eos = list(eos or [])
    if eos and len(eos) != len(cifs):
        raise RampError(f"--eos needs one 'V0,K0,K0p' per --phase ({len(cifs)}), got {len(eos)}")
    phases = []
    for i, cif in enumerate(cifs):
        given = None
        if eos:
            try:
                v0, k0, k0p = (float(v) for v in eos[i].split(","))
            except ValueError:
                raise RampError(f"--eos {eos[i]!r}: expected V0,K0,K0p (Å^3 of the CIF cell or per formula "
                                "unit, GPa, dimensionless)") from None
            given = BirchMurnaghan3(v0, k0, k0p, source="--eos")
        phases.append(phase_from_cif(cif, eos=given))
    return phases


def cmd_train_transition(args) -> int:
    from training.transition import train_transition, train_transition_from_cifs  # local: start-up time

    if args.phase:
        summary = train_transition_from_cifs(
            Path(args.out), user_phases(args.phase, args.eos), transitions=args.transition,
            pressure_range=tuple(args.pressure_range) if args.pressure_range else None, energy_kev=args.energy,
            two_theta=(args.two_theta[0], args.two_theta[1], int(args.two_theta[2])), seed=args.seed, fast=args.fast)
    else:
        summary = train_transition(Path(args.out), seed=args.seed, fast=args.fast)
    if args.json:
        print_json(summary)
        return 0
    for name, info in summary["models"].items():
        print(f"{name:<16} {info['bytes'] / 1024:7.1f} KB  {info['path']}")
    print(f"trained on {summary['training_set']['n_patterns']} patterns {summary['training_set']['kinds']} "
          f"in {summary['seconds']} s; summary: {Path(summary['out']) / 'summary.json'}")
    return 0


def _round(value, digits: int = 2):
    return value if value is None else round(value, digits)


def cmd_evaluate_transition(args) -> int:
    if args.calibrate:
        from xrd_nexus_ml.evaluation.transition_materials import calibrate_detector  # local: start-up time

        print_json(calibrate_detector(n_ramps=args.n_ramps, seed=100 + args.seed))
        return 0
    if args.materials:
        from xrd_nexus_ml.evaluation.transition_materials import evaluate_materials  # local: start-up time

        models = [m.strip() for m in args.models.split(",")]
        result = evaluate_materials(name_list(args.materials), n_ramps=args.n_ramps, seed=args.seed, models=models)
        if args.json:
            print_json(result)
            return 0
        for name, entry in result["materials"].items():
            for model, m in entry["models"].items():
                err = m["transition_error_steps"]
                print(f"{name:<15} {model:<11} found {m['found']}/{m['n_transitions']}  within 1 step "
                      f"{_round(m['within_one_step'])}  |err| mean/max {_round(err['mean'])}/{_round(err['max'])} "
                      f"steps  false alarms/ramp {m['false_alarms_per_ramp']}  {m['ms_per_frame']:.2f} ms/frame")
        print(f"held out ({', '.join(result['held_out']['materials'])}): "
              f"{json.dumps(result['held_out']['models'], default=float)}")
        return 0
    from xrd_nexus_ml.evaluation.transitions import evaluate_transition  # local: start-up time

    result = evaluate_transition(n_ramps=args.n_ramps, seed=args.seed, fast=args.fast)
    if args.json:
        print_json(result)
        return 0
    print(f"{result['n_ramps']} ramps x {result['n_frames_per_ramp']} frames, trained on "
          f"{result['training']['n_patterns']} patterns {result['training']['kinds']}")
    print(f"{'model':<16} {'frame acc':>9} {'worst':>7} {'|err| steps':>11} {'max':>6} {'bias':>6} "
          f"{'settle (frames)':>15}")
    for name, m in result["models"].items():
        settle = "-" if m["frames_to_settle"] is None else f"{m['frames_to_settle']:.1f} ({m['settled_ramps']})"
        print(f"{name:<16} {m['frame_accuracy']:>9.4f} {m['frame_accuracy_worst_ramp']:>7.4f} "
              f"{m['transition_error_steps']:>11.2f} {m['transition_error_steps_max']:>6.2f} "
              f"{m['transition_bias_steps']:>6.2f} {settle:>15}")
    goal = result["goal"]
    print(f"best model: {result['best_model']}; goal {'met' if goal['met'] else 'NOT met'} ({goal['definition']}); "
          f"{result['seconds']} s")
    return 0


def cmd_evaluate_steering(args) -> int:
    from xrd_nexus_ml.evaluation.steering import evaluate_steering, evaluate_steering_materials  # local: start-up time

    if args.materials:
        result = evaluate_steering_materials(name_list(args.materials), n_ramps=args.n_ramps, seed=args.seed)
        if args.json:
            print_json(result)
            return 0
        for name, m in result["materials"].items():
            a, u = m["arms"]["adaptive"], m["arms"]["uniform"]
            print(f"{name:<15} frames adaptive {a['frames_mean']:.1f} uniform {u['frames_mean']:.1f} "
                  f"(ratio {m['frame_ratio']:.2f}); within precision {a['reached_fraction']:.2f} / "
                  f"{u['reached_fraction']:.2f}")
        return 0
    result = evaluate_steering(n_ramps=args.n_ramps, precision=args.precision, seed=args.seed, fast=args.fast,
                               coarse_step=args.coarse_step)
    if args.json:
        print_json(result)
        return 0
    print(f"{result['n_ramps']} simulated ramps, precision {result['precision']} GPa "
          f"({result['precision_definition']})")
    print(f"{'arm':<14} {'frames':>7} {'max':>4} {'beamtime s':>10} {'reached':>8} {'declared':>8} {'|err|/prec':>10}")
    for name, a in result["arms"].items():
        err = "-" if a["error_over_precision_mean"] is None else f"{a['error_over_precision_mean']:.2f}"
        print(f"{name:<14} {a['frames_mean']:>7.1f} {a['frames_max']:>4d} {a['beamtime_s_mean']:>10.0f} "
              f"{a['reached_fraction']:>8.2f} {a['declared_fraction']:>8.2f} {err:>10}")
    goal = result["goal"]
    verdict = "met" if goal["met"] else "NOT met"
    print(f"frame ratio {result['frame_ratio']:.2f} (goal >= {goal['frame_ratio']}: {verdict}), "
          f"beamtime ratio {result['beamtime_ratio']:.2f}; {result['seconds']} s")
    return 0


def add_parsers(sub, evaluate, train) -> None:
    """`transition` at the top level; `transition` under `train` and `evaluate`; `steering` under `evaluate`."""
    p = sub.add_parser("transition", help="phase transitions along a measured series (pressure, temperature, ...)")
    p.add_argument("inputs", nargs="+", metavar="FILE|DIR|FILE.nxs", help="pattern files, a folder of them, or a "
                   "NeXus file (which records its pressures)")
    p.add_argument("--control", metavar="CSV", help="'file,<name>_<unit>' header (e.g. file,pressure_GPa), one row "
                   "per frame in acquisition order (not needed for a NeXus file)")
    p.add_argument("--wavelength", default=None, help="Å or a line name (CuKa, MoKa); only for files that record none")
    p.add_argument("--model", default="auto", metavar="DIR|auto",
                   help="'auto': the training-free detector (any sample); or a bundle from `train transition`")
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")
    p.add_argument("--plot", metavar="PNG", help="draw the waterfall with the transitions marked")
    p.set_defaults(func=cmd_transition)

    t = train.add_parser("transition", help="the phase-transition models, in the seed's 4 + 40 regime")
    t.add_argument("--out", required=True, help="folder for the bundles")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--fast", action="store_true", help="fewer training epochs (smoke runs)")
    t.add_argument("--phase", action="append", metavar="CIF",
                   help="your own phases, in pressure order (repeat; default: the shipped (Mg,Fe)O B1 -> rB1)")
    t.add_argument("--eos", action="append", metavar="V0,K0,K0p",
                   help="Birch-Murnaghan EOS per --phase (Å^3 of the CIF cell or per formula unit, GPa, -); "
                        "default: K0 estimated from the volume per atom (±60 %%), K0' = 4")
    t.add_argument("--transition", type=float, nargs="+", metavar="GPa",
                   help="expected transition pressure(s) (default: evenly spaced in the range)")
    t.add_argument("--pressure-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="GPa of the ramp to simulate (default 0 to twice the highest transition, or 0-50)")
    t.add_argument("--energy", type=float, default=25.6, help="beam energy, keV (default 25.6)")
    t.add_argument("--two-theta", type=float, nargs=3, default=(10.0, 26.0, 4023), metavar=("START", "STOP", "N"),
                   help="detector range (degrees) and point count (default 10 26 4023)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_train_transition)

    e = evaluate.add_parser("transition", help="phase-transition models and change point on simulated pressure ramps")
    e.add_argument("--n-ramps", type=int, default=8, help="fresh test ramps (349 frames each; per material with "
                   "--materials)")
    e.add_argument("--materials", default=None, metavar="all|NAME,...",
                   help="simulated ramps of literature materials (transitions.materials) instead of the seed's "
                        "(Mg,Fe)O; scores per material, pooled and on the materials the detector was not tuned on")
    e.add_argument("--models", default="auto", metavar="auto,...",
                   help="with --materials: 'auto' (the training-free detector)")
    e.add_argument("--calibrate", action="store_true",
                   help="the training-free detector's systematic term, from the tuning materials only")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--fast", action="store_true", help="fewer training epochs (smoke runs)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate_transition)

    e = evaluate.add_parser("steering", help="frames and beamtime to locate a transition: adaptive "
                                             "steering vs a uniform ramp, on simulated ramps")
    e.add_argument("--ramps", "--n-ramps", dest="n_ramps", type=int, default=8, help="simulated samples")
    e.add_argument("--precision", type=float, default=0.5, help="GPa: 95 %% credible half-width to reach")
    e.add_argument("--coarse-step", type=float, default=6.0, help="GPa: adaptive step before the transition")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--fast", action="store_true", help="only the adaptive and uniform arms")
    e.add_argument("--materials", default=None, metavar="all|NAME,...",
                   help="literature materials with the training-free detector (precision 1 %% of each range)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate_steering)
