"""Training curves of a run folder as a PNG: loss, top-1, learning rate and img/s over epochs,
from its log.jsonl (and steps.jsonl, written with --logging.steps=N).

    python -m ffcv_cram.plot_training runs/rn20_cram                 (-> runs/rn20_cram/curves.png)
    python -m ffcv_cram.plot_training runs/rn20_cram --out rn20.png
"""
from __future__ import annotations

import argparse
import os
import sys

from .atomic import AtomicWriteError
from .config import UsageError, fail


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="the run folder (the trainer's --logging.folder)")
    parser.add_argument("--out", help="the PNG to write (default: <run>/curves.png)")
    args = parser.parse_args(argv)
    out = args.out or os.path.join(args.run, "curves.png")
    folder = os.path.dirname(os.path.abspath(out))
    try:
        if not os.path.isdir(args.run):
            raise UsageError(f"{args.run}: no such folder; give the --logging.folder of a "
                             "training run")
        if not os.path.isdir(folder):
            raise UsageError(f"--out={out}: the folder {folder} does not exist; create it or "
                             "choose another --out")
        from .training_curves import plot  # matplotlib: only once the arguments are valid
        series = plot(args.run, out)
    except (UsageError, AtomicWriteError) as err:
        fail(str(err))
    print(f"wrote {out}: " + ", ".join(s.label for s in series))
    return 0


if __name__ == "__main__":
    sys.exit(main())
