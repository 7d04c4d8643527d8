"""benchmarks/seeds_ab.py: the loop's seed-after-seed program and the vmapped one both train,
are timed round-robin and agree; bad input is refused."""
import json

import pytest

from benchmarks.seeds_ab import main


def test_both_ways_are_timed_and_agree(tmp_path):
    out = tmp_path / "seeds.json"
    result = main(["--preset", "tiny", "--seeds", "2", "--envs", "4", "--chunk-steps", "64",
                   "--warmup-chunks", "2", "--rounds", "1", "--out", str(out)])
    saved = json.load(open(out))
    assert [r["way"] for r in saved["rows"]] == ["seed after seed", "vmap"]
    assert saved["seeds"] == 2 and len(saved["ratios"]) == 1 and saved["ratio"] > 0
    assert result["updates"] > 0  # the timed chunks trained
    assert result["param_drift"] < 1e-3  # the same training, up to rounding


def test_bad_counts_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--preset", "tiny", "--seeds", "0"])
    assert "--seeds 0 --rounds 8; allowed: both >= 1" in capsys.readouterr().err
