"""Feature-extraction benchmark: ``python -m agent.bench.features [REFERENCE_DIR]``.

Times ``encode_v7`` on the 19x19 middle-game positions (moves 40-250) of KataGo's recorded
reference games. *Cold*: nothing cached (ladder scans of the current and the two previous
boards, the Benson area, superko bans all computed). *Warm*: the previous boards' ladder scans
are cached, as in a search where a child's previous boards are its parents' boards.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from agent.game.features import encode_v7
from agent.game.position import position_from_query
from agent.game.state import GameState


def _drop_caches(st: GameState, boards: int) -> None:
    for b in st.recent[:boards]:
        b.cache = None
    st._superko = None if st.superko_active and st.rules.ko != "SIMPLE" else st._superko


def run(reference_dir: Path, repeats: int = 5) -> dict[str, float]:
    with open(reference_dir / "rawnn-g170-b6c96.jsonl") as f:
        recs = [json.loads(line) for line in f]
    mid = [r for r in recs if r["board_x_size"] == 19 and 40 <= r["move_number"] <= 250]
    states = [position_from_query(r["moves"], rules=r["rules"], komi=r["komi"]) for r in mid]
    cold: list[float] = []
    warm: list[float] = []
    for st in states:
        for _ in range(repeats):
            _drop_caches(st, 6)
            t = time.perf_counter()
            encode_v7(st)
            cold.append(time.perf_counter() - t)
            _drop_caches(st, 1)
            t = time.perf_counter()
            encode_v7(st)
            warm.append(time.perf_counter() - t)

    def p90(v: list[float]) -> float:
        return sorted(v)[int(0.9 * len(v))] * 1000

    return {
        "positions": float(len(states)),
        "cold_median_ms": statistics.median(cold) * 1000,
        "cold_p90_ms": p90(cold),
        "warm_median_ms": statistics.median(warm) * 1000,
        "warm_p90_ms": p90(warm),
    }


def main() -> int:
    ref = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).resolve().parents[3] / "shared" / "reference"
    )
    res = run(ref)
    print(" ".join(f"{k}={v:.2f}" for k, v in res.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
