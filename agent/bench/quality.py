"""Search quality against KataGo's recorded analyses (a benchmark, not a test).

``python -m agent.bench.quality --model b10c384h6nbttflrs.bin.gz --reference analysis-b10c384.jsonl`` (or
``--reference ../shared/reference``, the folder: the file of the model's net is picked)
replays every recorded query (at its own ``maxVisits``, KataGo's analysis defaults, symmetry 0 like
the recording's ``nnRandomize = false``) and compares:

* the best move (``order`` 0). Moves that are images of KataGo's best move under a symmetry of
  the position (empty boards) count as equal, because KataGo prunes such moves as copies;
* root ``winrate`` (tolerance 0.05) and ``scoreLead``;
* the exactly reproducible root evaluation: ``policy``, ``rawWinrate``, ``rawLead``.

Search results vary from run to run, even in KataGo (reference README §6), so the figures are
a summary, printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.game.coords import parse_gtp_xy
from agent.search.symmetry import map_index


def _symmetric_moves(query: dict[str, Any], move: str) -> set[str]:
    """All images of ``move`` under the board symmetries that leave the stones unchanged."""
    x, y = query["boardXSize"], query["boardYSize"]
    if move == "pass":
        return {"pass"}
    stones: dict[tuple[int, int], str] = {}
    for color, v in [*query.get("initialStones", []), *query.get("moves", [])]:
        xy = parse_gtp_xy(v, x, y)
        if xy is not None:
            stones[xy] = color
    if query.get("moves"):
        # after captures the stone set differs; only treat stone-free histories as symmetric
        return {move}
    mxy = parse_gtp_xy(move, x, y)
    assert mxy is not None
    out = set()
    for s in range(8):
        if s & 4 and x != y:
            continue

        def f(p: tuple[int, int], s: int = s) -> tuple[int, int]:
            b, a = divmod(map_index(p[1] * x + p[0], s, x, y), x)
            return a, b

        if {f(p): c for p, c in stones.items()} == stones:
            a, b = f(mxy)
            out.add(("ABCDEFGHJKLMNOPQRSTUVWXYZ"[a]) + str(y - b))
    return out


def reference_file(reference: str, model: str) -> Path:
    """``reference`` itself, or in a folder (``../shared/reference``) the ``analysis-<net>.jsonl``
    whose ``<net>`` is part of the model's file name."""
    path = Path(reference)
    if not path.is_dir():
        return path
    found = [
        f
        for f in sorted(path.glob("analysis-*.jsonl"))
        if f.stem.removeprefix("analysis-") in Path(model).name
    ]
    if len(found) != 1:
        have = ", ".join(f.name for f in sorted(path.glob("analysis-*.jsonl"))) or "none"
        raise ValueError(f"{path}: no single analysis-<net>.jsonl for {Path(model).name} (have: {have})")
    return found[0]


def run(
    model: str, reference: str, runtime: str, visits: int | None, threads: int, seed: int = 11
) -> dict[str, Any]:
    from agent.app.startup import EngineRecipe, assemble_engine
    from agent.models.serving import RuntimeEntry
    from agent.protocol.service import AnalysisService
    from agent.search.params import SearchParams

    text = reference_file(reference, model).read_text()
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    recipe = EngineRecipe(
        runtimes=(RuntimeEntry(runtime),),
        params=SearchParams(num_threads=threads),
        randomize=False,
        seed=seed,
    )
    engine, _ = assemble_engine(Path(model), recipe)
    service = AnalysisService(engine)
    finals: dict[str, dict[str, Any]] = {}

    def emit(r: dict[str, Any]) -> None:
        if r.get("isDuringSearch") is False:
            finals[r["id"]] = r

    t0 = time.monotonic()
    for rec in records:
        q = dict(rec["query_obj"])
        if visits is not None:
            q["maxVisits"] = visits
        service.handle_line(json.dumps(q), emit)
    service.close(timeout=1e9)
    elapsed = time.monotonic() - t0
    rows = []
    for rec in records:
        ref, got = rec["response"], finals[rec["id"]]
        best = got["moveInfos"][0]["move"] if got["moveInfos"] else None
        ref_best = ref["moveInfos"][0]["move"]
        same = best in _symmetric_moves(rec["query_obj"], ref_best)
        rows.append(
            {
                "id": rec["id"],
                "best": best,
                "katago_best": ref_best,
                "best_agrees": same,
                "winrate": round(got["rootInfo"]["winrate"], 4),
                "katago_winrate": round(ref["rootInfo"]["winrate"], 4),
                "winrate_diff": round(abs(got["rootInfo"]["winrate"] - ref["rootInfo"]["winrate"]), 4),
                "lead_diff": round(abs(got["rootInfo"]["scoreLead"] - ref["rootInfo"]["scoreLead"]), 3),
                "policy_max_diff": float(np.abs(np.array(got["policy"]) - np.array(ref["policy"])).max()),
                "raw_winrate_diff": abs(got["rootInfo"]["rawWinrate"] - ref["rootInfo"]["rawWinrate"]),
                "raw_lead_diff": abs(got["rootInfo"]["rawLead"] - ref["rootInfo"]["rawLead"]),
                "visits": got["rootInfo"]["visits"],
            }
        )
    n = len(rows)
    return {
        "model": Path(model).name,
        "runtime": runtime,
        "queries": n,
        "best_move_agreement": round(sum(r["best_agrees"] for r in rows) / n, 4),
        "winrate_within_0.05": round(sum(r["winrate_diff"] <= 0.05 for r in rows) / n, 4),
        "max_winrate_diff": max(r["winrate_diff"] for r in rows),
        "mean_winrate_diff": round(sum(r["winrate_diff"] for r in rows) / n, 4),
        "max_policy_diff": max(r["policy_max_diff"] for r in rows),
        "max_raw_winrate_diff": max(r["raw_winrate_diff"] for r in rows),
        "max_raw_lead_diff": max(r["raw_lead_diff"] for r in rows),
        "seed": seed,
        "seconds": round(elapsed, 1),
        "engine": engine.stats(),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--reference", required=True, help="KataGo's analysis .jsonl, or the folder holding it")
    ap.add_argument("--runtime", default="onnx")
    ap.add_argument("--visits", type=int, help="override the recorded maxVisits")
    ap.add_argument("--threads", type=int, default=1, help="search threads")
    ap.add_argument("--seed", type=int, default=11, help="search random seed (wide root noise)")
    args = ap.parse_args(argv)
    try:
        result = run(args.model, args.reference, args.runtime, args.visits, args.threads, args.seed)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
