"""finetty against Unsloth per device session, from bench/results.jsonl.

    python bench/ratios.py [--results bench/results.jsonl] [--variant no-compile] [--json]

Rows are compared only within one session (one lent machine). Each side is the median of its
rows for that session, shape, mode and batch x seq (sessions that ran several rounds, such as
devP, have several), counting only one-GPU runs on the anchors' fixed-length batches, without errors.
finetty's rows are its default path unless ``--variant`` names an A/B variant instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results.jsonl"


@dataclass(frozen=True)
class Ratio:
    session: str
    shape: str
    mode: str
    batch: int | None
    seq: int | None
    finetty_tokens_per_s: float
    finetty_rows: int
    unsloth_tokens_per_s: float
    unsloth_rows: int
    ratio: float
    finetty_peak_alloc_gib: float | None
    unsloth_peak_alloc_gib: float | None


def _side(row: dict, variant: str | None) -> str | None:
    """Which side of the comparison a row is on (None: neither)."""
    if row.get("error") or row.get("tokens_per_s") is None:
        return None
    if (row.get("gpus") or 1) != 1 or row.get("batching") not in (None, "fixed"):
        return None
    if row.get("stack") == "unsloth":
        return "unsloth"
    if row.get("stack") == "finetty" and row.get("variant") == variant:
        return "finetty"
    return None


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def session_ratios(rows: list[dict], variant: str | None = None) -> list[Ratio]:
    """One Ratio per session, shape, mode and batch x seq that has rows of both stacks, in file
    order."""
    groups: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: {"finetty": [], "unsloth": []})
    for row in rows:
        side = _side(row, variant)
        if side is not None and row.get("session"):
            key = (row["session"], row["shape"], row["mode"], row.get("batch"), row.get("seq"))
            groups[key][side].append(row)
    ratios = []
    for (session, shape, mode, batch, seq), sides in groups.items():
        ours, theirs = sides["finetty"], sides["unsloth"]
        if not ours or not theirs:
            continue
        our_speed = statistics.median(r["tokens_per_s"] for r in ours)
        their_speed = statistics.median(r["tokens_per_s"] for r in theirs)
        ratios.append(
            Ratio(
                session,
                shape,
                mode,
                batch,
                seq,
                round(our_speed, 1),
                len(ours),
                round(their_speed, 1),
                len(theirs),
                round(our_speed / their_speed, 3),
                _median([r.get("peak_alloc_gib") for r in ours]),
                _median([r.get("peak_alloc_gib") for r in theirs]),
            )
        )
    return ratios


def read_rows(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise SystemExit(f"{path}:{number}: not a JSON object ({exc.msg})") from None
    return rows


def table(ratios: list[Ratio]) -> str:
    lines = [
        "| session | shape | mode | batch x seq | finetty tokens/s (rows) | Unsloth tokens/s (rows) "
        "| ratio | peak alloc GiB (finetty vs Unsloth) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in ratios:
        lines.append(
            f"| {r.session} | {r.shape} | {r.mode} | {r.batch}x{r.seq} | {r.finetty_tokens_per_s:,.0f} "
            f"({r.finetty_rows}) | {r.unsloth_tokens_per_s:,.0f} ({r.unsloth_rows}) "
            f"| {r.ratio:.2f}x | {r.finetty_peak_alloc_gib} vs {r.unsloth_peak_alloc_gib} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--variant", help="compare this A/B variant of finetty's rows instead")
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    args = parser.parse_args()
    if not args.results.is_file():
        raise SystemExit(f"{args.results}: no such file")
    ratios = session_ratios(read_rows(args.results), args.variant)
    if args.json:
        for ratio in ratios:
            print(json.dumps(asdict(ratio)))
    else:
        print(table(ratios))
    if not ratios:
        print("no session has rows of both finetty and Unsloth", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
