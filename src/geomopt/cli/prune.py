"""``geomopt prune RUN_DIR``: prune a trained run by a loss-model criterion, then fine-tune it with the mask."""

from __future__ import annotations

import argparse

from geomopt.cli.common import add_trust_flag


def cmd_prune(args: argparse.Namespace) -> int:
    from geomopt.runs import prune_run
    record = prune_run(args.run_dir, criterion=args.criterion, target_sparsity=args.sparsity, steps=args.steps,
                       finetune_epochs=args.finetune_epochs, n_examples=args.examples, locality=args.locality,
                       lr=args.lr, out=args.out, compensate=args.compensate, progress=not args.no_progress)
    line = (f"{args.criterion}: sparsity {record['achieved_sparsity']:.4f} in {args.steps} step(s); test acc "
            f"{record['dense_test_acc']:.4f} dense -> {record['pruned_test_acc']:.4f} pruned")
    if "finetuned_test_acc" in record:
        line += f" -> {record['finetuned_test_acc']:.4f} after {args.finetune_epochs} fine-tuning epoch(s)"
    print(line)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``geomopt prune`` to the top-level parser."""
    p = sub.add_parser("prune", help="prune a trained run by a loss-model criterion, then fine-tune with the mask")
    p.add_argument("run_dir", help="a `geomopt train` output directory (config.json, checkpoint.pt)")
    p.add_argument("--criterion", default="qm", choices=["mp", "lm", "qm", "obd", "kobs"],
                   help="kobs: Optimal Brain Surgeon with K-FAC factors (Linear layers)")
    p.add_argument("--sparsity", type=float, required=True, help="fraction of Linear/Conv weights to remove")
    p.add_argument("--steps", type=int, default=1, help="pruning steps (scores recomputed on the masked net)")
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="epochs of training with the pruning mask after pruning (default: 0, none)")
    p.add_argument("--examples", type=int, default=1000, help="examples to estimate gradient and curvature on")
    p.add_argument("--locality", type=float, default=0.0, help="lambda of the 0.5 lambda theta^2 penalty")
    p.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: the run's)")
    p.add_argument("--compensate", action="store_true",
                   help="kobs: apply the OBS compensating update (sum of single-weight updates) after each step")
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR/prune-CRITERION-SPARSITY-STEPS)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_trust_flag(p, "RUN_DIR's config.json")
    p.set_defaults(func=cmd_prune)
