"""Benchmark runner: ``python -m bench.run [NAME ...] [--check]``.

Discovers the modules of the ``bench`` package that define ``main() -> list[Result]`` (all of
them, or only the NAMEs given), runs them one after the other and prints one table. Every
:class:`Result` carries its own baseline, measured in the same run on the same machine, so the
ratio means something anywhere; absolute figures only describe this machine.

With ``--check`` the exit status is 1 when a result misses its target ratio.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Result:
    """One measured case next to the baseline it is judged against.

    ``ratio`` is oriented so that 1.0 means "as good as the baseline" and higher is better,
    whatever the unit: value/baseline for throughputs, baseline/value for durations.
    """

    case: str
    value: float
    baseline: float
    unit: str
    baseline_label: str
    target: float | None = None
    higher_is_better: bool = True

    @property
    def ratio(self) -> float:
        """Value relative to the baseline (higher is better)."""
        if self.higher_is_better:
            return self.value / self.baseline
        return self.baseline / self.value

    @property
    def met(self) -> bool | None:
        """Whether the target ratio is reached (``None`` when there is no target)."""
        return None if self.target is None else self.ratio >= self.target


def discover() -> dict[str, Callable[[], list[Result]]]:
    """Benchmark name -> its ``main``, for every ``bench/*.py`` module that has one."""
    found: dict[str, Callable[[], list[Result]]] = {}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name == "run" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"bench.{info.name}")
        main = getattr(module, "main", None)
        if callable(main):
            found[info.name] = main
    return found


def format_table(rows: Sequence[tuple[str, Result]]) -> str:
    """The results as an aligned plain-text table."""
    header = ("benchmark", "case", "value", "baseline", "vs", "ratio", "target")
    lines = [header]
    for name, r in rows:
        target = "" if r.target is None else f">= {r.target:.2f} {'ok' if r.met else 'MISSED'}"
        lines.append(
            (
                name,
                r.case,
                f"{r.value:,.1f} {r.unit}",
                f"{r.baseline:,.1f} {r.unit}",
                r.baseline_label,
                f"{r.ratio:.2f}",
                target,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected benchmarks and print the table; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmark modules to run (default: all)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    available = discover()
    unknown = [n for n in args.names if n not in available]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; have {', '.join(available)}")
    rows: list[tuple[str, Result]] = []
    for name in args.names or sorted(available):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows.extend((name, result) for result in available[name]())
    print(format_table(rows))
    missed = [r for _, r in rows if r.met is False]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
