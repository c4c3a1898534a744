"""Where a test run's time goes: worker seconds per group of tests, from a ``pytest --durations=0`` log.

Under ``pytest -n 2`` (``make test``) the two workers share the work, so a group's share of the wall time is about
its share of the worker seconds times the run's wall time. Each ``--group NAME=REGEX`` collects the tests whose node
id matches REGEX (``re.search``); a test counts in the first group it matches.

    PYTEST_ADDOPTS=--durations=0 bash .ci/run > ci.log
    python benchmarks/suite_time.py ci.log --group "issue 32=attribution|saliency|faithfulness|map_checks|scoreboard"
"""
from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

_DURATION = re.compile(r"^([0-9.]+)s (call|setup|teardown)\s+(\S+)")
_WALL = re.compile(r" in ([0-9.]+)s(?: \(|$)")


def read(log: str) -> tuple[dict[str, float], float | None]:
    """Seconds per node id (setup, call and teardown together) and pytest's own wall time, from a log's text."""
    seconds: dict[str, float] = defaultdict(float)
    wall = None
    for line in log.splitlines():
        if m := _DURATION.match(line):
            seconds[m[3]] += float(m[1])
        elif line.startswith("=") and (w := _WALL.search(line)) and ("passed" in line or "failed" in line):
            wall = float(w[1])
    return dict(seconds), wall


def shares(seconds: dict[str, float], groups: list[tuple[str, str]]) -> dict[str, float]:
    """Worker seconds per group, the rest under "other"."""
    total: dict[str, float] = {name: 0.0 for name, _ in groups}
    total["other"] = 0.0
    for node, s in seconds.items():
        name = next((n for n, regex in groups if re.search(regex, node)), "other")
        total[name] += s
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="output of a pytest run with --durations=0")
    parser.add_argument("--group", action="append", default=[], metavar="NAME=REGEX")
    args = parser.parse_args(argv)
    groups = []
    for spec in args.group:
        name, sep, regex = spec.partition("=")
        if not sep or not name or not regex:
            parser.error(f"--group takes NAME=REGEX, got {spec!r}")
        groups.append((name, regex))
    seconds, wall = read(args.log.read_text(errors="replace"))
    if not seconds:
        parser.error(f"{args.log} holds no test durations: run pytest with --durations=0")
    all_seconds = sum(seconds.values())
    print(f"{len(seconds)} tests, {all_seconds:.0f} worker seconds" + (f", pytest's wall time {wall:.0f} s" if wall else ""))
    for name, s in shares(seconds, groups).items():
        share = s / all_seconds
        wall_part = f", about {share * wall:.0f} s of the wall time" if wall else ""
        print(f"  {name}: {s:.0f} worker seconds ({100 * share:.1f}%){wall_part}")


if __name__ == "__main__":
    main()
