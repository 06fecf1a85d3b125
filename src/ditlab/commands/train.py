"""``ditlab train``: train (or resume) a DiT; presets, YAML overrides and ``--key value`` flags."""
from __future__ import annotations

import argparse
import json
import sys

NAME = "train"
ACCEPTS_OVERRIDES = True  # unknown --key value flags become config overrides
HELP = "train a DiT (rerun the same command to resume); --dry-run prints the resolved config"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ditlab.config import PRESETS

    parser.add_argument("--preset", default="mnist", help=f"named recipe: {', '.join(PRESETS)} (default mnist)")
    parser.add_argument("--config", metavar="YAML", help="YAML file of key: value overrides")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = config_fields_help()


def config_fields_help() -> str:
    """Every training config field as a flag, with type, default and description (from the dataclass)."""
    import dataclasses

    from ditlab.config import FLAG_INTS, TrainConfig, _field_type

    lines = ["config fields (any of them is a flag: --key value, e.g. --steps 500 --lr 2e-4; a preset sets",
             "some, a YAML file or flags override them; [resumable]: may change when a run resumes):"]
    for f in dataclasses.fields(TrainConfig):
        tp, optional = _field_type(f.name)
        kind = (tp.__name__ + (" or none" if optional else "")).upper()
        kind = f"[{kind}]" if f.name in FLAG_INTS else kind  # the bare flag means FLAG_INTS[name]
        note = " [resumable]" if f.metadata.get("resumable") else ""
        lines.append(f"  --{f.name} {kind} (default {f.default!r}){note}")
        lines.append(f"      {f.metadata.get('help', '')}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ditlab.config import parse_overrides, resolve_config

    overrides = parse_overrides(args.overrides)
    config = resolve_config(args.preset, args.config, overrides)
    if args.dry_run:
        print(json.dumps(config.to_dict(), indent=2, sort_keys=True))
        return 0
    from ditlab.training.loop import train

    result = train(config)
    if result.stopped_early:
        return 0
    if config.eval_num > 0 and _is_main():
        from ditlab.runlock import lock_folder
        from ditlab.training.final_eval import evaluate_run, format_metrics

        what = f"{config.eval_num} samples"
        from ditlab.data import CAPTIONED_BUILTINS

        if config.data in CAPTIONED_BUILTINS:  # the text demo's three prompt sets
            what = f"1,000 held-out + 1,000 seen-combination prompts + {config.eval_num} test captions"
        print(f"evaluating: {what} from the EMA model "
              f"({config.sampler or 'default'} sampler, {config.sample_steps} steps, cfg {config.cfg_scale}) ...",
              flush=True)
        from ditlab.devices import pick_device

        with lock_folder(config.run_dir, flag="--run_dir", what="run directory"):  # it writes the run again
            metrics = evaluate_run(config.run_dir, num=config.eval_num, batch_size=config.eval_batch_size,
                                   device=pick_device(config.device))  # sampled and scored where it trained
        print(format_metrics(metrics))
        print(f"metrics: {config.run_dir}/metrics.json", file=sys.stdout)
    return 0


def _is_main() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0
