"""One row per epoch of the method's statistics, from nnU-Net training logs (the per-term curves as numbers).

    python benchmarks/epoch_table.py FOLD_DIR/training_log_*.txt [--columns reliable_fraction_c1 contrast_a ...]

Reads the trainer's ``semi-supervised: key value, ...`` line (epoch means of the objective's
statistics), the pseudo Dice and the epoch time that nnU-Net logs after each ``Epoch N`` line. Give every
log of a run: a run resumed with ``--c`` writes a new log, and the logs are read in the order of their
first time stamps (nnU-Net's file names do not sort by time: ``_12_10_`` comes before ``_12_9_``). A log
that starts at epoch N replaces every epoch from N on of the logs before it (the resumed run trained
them again from its checkpoint). A column that a log lacks (a term the trainer does not compute) is
shown as ``-``.
"""
from __future__ import annotations

import argparse
import re
import sys

# entropy_threshold_a_c1: the class-balanced rule's per-class threshold; entropy_threshold_a: the global rule's
DEFAULT_COLUMNS = ("reliable_fraction_c1", "entropy_threshold_a_c1", "entropy_threshold_a", "entropy_filter_a",
                   "entropy_filter_b", "contrast_a", "prototype_present_c1", "cps_a", "mean_kl_weight", "agreement",
                   "pseudo_dice", "epoch_s")
_EPOCH = re.compile(r": Epoch (\d+)\s*$")
_STATISTICS = re.compile(r": semi-supervised: (.*)$")
_PSEUDO_DICE = re.compile(r": Pseudo dice \[(.*)\]")
_EPOCH_TIME = re.compile(r": Epoch time: ([0-9.]+) s")
_NUMBER = re.compile(r"[-+0-9.eE]+(?:nan|inf)?|nan|inf")


def _started_at(path: str) -> str:
    """The time stamp that begins the log's first line (``2026-12-04 10:02:00.680467: ...``)."""
    with open(path, encoding="utf-8") as log:
        return log.readline().split(": ", 1)[0]


def read_epochs(paths: list[str]) -> dict[int, dict[str, float]]:
    """``{epoch: {statistic: value}}`` from the logs of one run, a resumed part replacing what it trained again.

    Raises:
        ValueError: a ``semi-supervised:`` line whose items are not ``name value``.
    """
    epochs: dict[int, dict[str, float]] = {}
    for path in sorted(paths, key=_started_at):
        current = None
        with open(path, encoding="utf-8") as log:
            for line in log:
                line = line.rstrip()
                if match := _EPOCH.search(line):
                    epoch = int(match[1])
                    if current is None:  # this log's first epoch: the earlier logs' epochs from here on are void
                        epochs = {kept: values for kept, values in epochs.items() if kept < epoch}
                    current = epochs[epoch] = {}
                elif current is None:
                    continue
                elif match := _STATISTICS.search(line):
                    for item in match[1].split(","):
                        key, _, value = item.strip().rpartition(" ")
                        try:
                            current[key] = float(value)
                        except ValueError:
                            raise ValueError(f"{path}: expected 'name value' items in {line!r}") from None
                elif match := _PSEUDO_DICE.search(line):
                    # nnU-Net logs a list of np.float32(...) reprs, one per foreground class
                    values = [float(v) for v in _NUMBER.findall(re.sub(r"np\.float\d+", "", match[1]))]
                    current["pseudo_dice"] = sum(values) / len(values) if values else float("nan")
                elif match := _EPOCH_TIME.search(line):
                    current["epoch_s"] = float(match[1])
    return epochs


def format_table(epochs: dict[int, dict[str, float]], columns: list[str]) -> str:
    header = ["epoch"] + list(columns)
    widths = [max(5, len(name)) for name in header]
    rows = [" ".join(name.rjust(width) for name, width in zip(header, widths))]
    for epoch in sorted(epochs):
        cells = [str(epoch)] + [f"{epochs[epoch][name]:.4g}" if name in epochs[epoch] else "-" for name in columns]
        rows.append(" ".join(cell.rjust(width) for cell, width in zip(cells, widths)))
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", help="training_log_*.txt of one run (any order)")
    parser.add_argument("--columns", nargs="+", default=list(DEFAULT_COLUMNS),
                        help="statistics to show (keys of the 'semi-supervised:' line, pseudo_dice, epoch_s)")
    args = parser.parse_args(argv)
    try:
        epochs = read_epochs(args.logs)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        sys.exit(f"cannot read the training log: {error}")
    if not epochs:
        sys.exit(f"no 'Epoch N' line in {', '.join(args.logs)}: expected nnU-Net training logs")
    print(format_table(epochs, args.columns))


if __name__ == "__main__":
    main()
