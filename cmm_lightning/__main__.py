"""Command line: ``python -m cmm_lightning SUBCOMMAND [--config FILE ...] [key=value ...]``.

A thin entry point: parse, load the config, hand over to :mod:`cmm_lightning.pipeline`.
Bad input (CMMInputError) prints one line on stderr and exits with status 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys

SUBCOMMANDS = {
    "prepare": "load + validate the LOB data, cut windows/targets/regimes/splits, write data_summary.json",
    "cache-teacher": "run the teacher LLM over the windows and cache its per-layer features (hit or miss)",
    "probe": "normalized fluorescent probe: R², fluorescence F, selectivity, raw-input control, plan",
    "fit": "the whole pipeline: prepare → cache-teacher → probe → students → Hájek-MoE → test/backtest",
    "backtest": "market-making backtest of every policy on the test split; results table + equity plot",
    "test": "evaluate the trained students and MoE on the test split (report.json)",
    "evaluate": "fit over many datasets (evaluate.*: synthetic seeds, LOBSTER days, tables, walk-forward) "
                "and pool them with CIs (evaluation.json)",
}

EPILOG = """\
main config keys (see README for all; any key of the structured config can be overridden):
  run.dir=PATH            where this run writes (default runs/<timestamp>)
  data.source=synthetic|lobster|csv|parquet|hftbacktest   data.path=FILE|DIR   data.tick_size=0.01
  data.levels=5 (unset: 5, or the file's depth when it has fewer)   data.split=[0.7,0.15,0.15] (sums to 1)
  data.window=32 data.horizon=10 data.stride=5
  teacher.model=smollm2-135m-instruct|PATH|HUB_ID (cached, or teacher.allow_download=true)   teacher.pooling=mean|last
  students.encoder=tcn|gru|mixer   moe.mode=uniform|gate|hajek|hajek_gate
  trainer.accelerator=auto trainer.devices=1 trainer.strategy=auto trainer.num_nodes=1 (DDP: docs/scaling.md)
  trainer.enable_progress_bar=true   logger.kind=csv|wandb|none logger.project=NAME logger.tags=[a,b]
examples:
  python -m cmm_lightning fit
  python -m cmm_lightning fit --config conf/smoke.yaml run.dir=runs/smoke
  python -m cmm_lightning prepare data.source=lobster data.path=../shared/data/lobster
  python -m cmm_lightning evaluate --config conf/evaluate.yaml
"""


def build_parser() -> argparse.ArgumentParser:
    from .registry import choices_text

    epilog = f"{EPILOG}choices made by name (registry.py; run.plugins=[your.module] adds your own):\n{choices_text()}\n"
    parser = argparse.ArgumentParser(
        prog="python -m cmm_lightning",
        description="Cooperative Market Making: distill an LLM's LOB features into tiny students.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=epilog,
    )
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    for name, text in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=text, description=text, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", action="append", default=[], metavar="FILE",
                       help="YAML preset layered over the defaults (repeatable, later wins)")
        p.add_argument("--print-config", action="store_true",
                       help="print the resolved config and exit")
        p.add_argument("--verify", action="store_true",
                       help="also check the checksums of the teacher feature cache (a full read; sizes and "
                            "small files are always checked); a damaged artefact is reported and recomputed")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def quiet_libraries() -> None:
    """The CLI prints its own stage summaries and progress: mute Lightning's per-Trainer chatter
    (device lines, tips), transformers' weight-loading bar and known-harmless warnings. Library
    users who drive these packages themselves are unaffected."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    hf_logging.disable_progress_bar()
    for pattern in (".*LeafSpec.*", ".*infer the batch indices.*", ".*exists and is not empty.*",
                    ".*does not have many workers.*"):
        warnings.filterwarnings("ignore", message=pattern)


def main(argv: list[str] | None = None) -> int:
    from omegaconf import OmegaConf

    from .config import load_config
    from .errors import CMMInputError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # key=value may come before and after --config
    bad = [a for a in extra if "=" not in a or a.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    args.overrides = [*args.overrides, *extra]
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(OmegaConf.to_yaml(cfg, resolve=True), end="")
            return 0
        quiet_libraries()
        from .io import verifying

        with verifying(args.verify):  # env CMM_VERIFY=1 while the command runs (DDP workers inherit it)
            if args.command == "evaluate":
                from .evaluate import evaluate

                evaluate(cfg)
            else:
                from . import pipeline

                pipeline.run(args.command, cfg)
    except CMMInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
