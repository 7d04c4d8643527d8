"""benchmarks/data_parallel.py: the four ways of one update run and are timed; bad input is refused."""
import json
import os

import pytest

from benchmarks.data_parallel import main


def test_four_variants_are_timed(tmp_path):
    out = tmp_path / "dp.json"
    result = main(["--preset", "tiny", "--rounds", "1", "--out", str(out)])
    saved = json.load(open(out))
    names = [r["variant"] for r in saved["rows"]]
    assert saved["machine"]["cores"] == os.cpu_count()
    assert names == ["one device", "half batch", "two devices, GSPMD", "two half updates at once"]
    assert all(r["median_s"] > 0 and r["speedup"] > 0 for r in result["rows"])


def test_odd_batch_and_bad_rounds_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--preset", "tiny", "--set", "batch_size=3"])
    assert "batch_size=3 cannot be split over 2 devices" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--preset", "tiny", "--rounds", "0"])
    assert "--rounds 0" in capsys.readouterr().err
