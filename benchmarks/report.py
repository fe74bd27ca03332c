"""The comparison table and the throughput-against-concurrency plot (benchmarks/compare.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass(frozen=True)
class Row:
    """One figure for both servers. `better` says which direction wins ("higher" or
    "lower"); `target` is the issue's goal in words, `met` whether popbox reached it."""

    workload: str
    figure: str
    popbox: float | str
    dovecot: float | str
    better: str
    target: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> str:
        if isinstance(self.popbox, str) or isinstance(self.dovecot, str) or not self.dovecot:
            return "-"
        return f"{self.popbox / self.dovecot:.2f}"


def number(value: float | str) -> str:
    if isinstance(value, str):
        return value
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def table(rows: list[Row]) -> str:
    """A Markdown table: readable in a terminal and pasted as is into docs/."""
    header = ("workload", "figure", "popbox", "Dovecot", "popbox/Dovecot", "target", "met")
    lines = [header]
    for row in rows:
        met = "" if row.met is None else ("yes" if row.met else "NO")
        lines.append(
            (
                row.workload,
                row.figure,
                number(row.popbox),
                number(row.dovecot),
                row.ratio,
                row.target,
                met,
            )
        )
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    numeric = {2, 3, 4}

    def render(line: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(width) if index in numeric else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        return "| " + " | ".join(cells) + " |"

    rule = "|" + "|".join(
        "-" * (width + 1) + ":" if index in numeric else "-" * (width + 2)
        for index, width in enumerate(widths)
    )
    return "\n".join([render(lines[0]), rule + "|", *map(render, lines[1:])])


def plot(sweep: dict[str, dict[int, float]], path: Path, title: str) -> None:
    """Sessions/s against concurrent clients, one line per server (needs matplotlib:
    `pip install '.[bench]'`)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, points in sweep.items():
        levels = sorted(points)
        axes.plot(levels, [points[level] for level in levels], marker="o", label=name)
    axes.set_xscale("log")
    axes.set_xticks(sorted({level for points in sweep.values() for level in points}))
    axes.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes.set_xlabel("concurrent clients")
    axes.set_ylabel("sessions/s (USER, PASS, STAT, QUIT)")
    axes.set_ylim(bottom=0)
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
