"""``python -m agent.bench.quality --reference`` takes KataGo's recorded analysis file or the folder
that holds it (../shared/reference), picking the file of the model's network."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.bench.quality import reference_file


def test_quality__reference_folder_picks_the_models_analysis_file(tmp_path: Path) -> None:
    for name in ("analysis-b10c384.jsonl", "analysis-b6c96.jsonl", "rawnn-b10c384.jsonl"):
        (tmp_path / name).write_text("{}\n")
    assert (
        reference_file(str(tmp_path), "../models/b10c384h6nbttflrs.bin.gz")
        == tmp_path / "analysis-b10c384.jsonl"
    )
    assert reference_file(str(tmp_path), "g170-b6c96-s175395328.bin.gz") == tmp_path / "analysis-b6c96.jsonl"
    given = tmp_path / "rawnn-b10c384.jsonl"
    assert reference_file(str(given), "anything.bin.gz") == given  # a file is taken as it is
    with pytest.raises(
        ValueError,
        match=r"no single analysis-<net>.jsonl for b7c96.bin.gz \(have: analysis-b10c384.jsonl, analysis-b6c96.jsonl\)",
    ):
        reference_file(str(tmp_path), "b7c96.bin.gz")
