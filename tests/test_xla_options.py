"""benchmarks/xla_options.py: each option set compiles, runs and is timed; bad input is refused."""
import json

import pytest

from benchmarks.xla_options import OPTION_SETS, main


def test_option_sets_are_timed(tmp_path):
    out = tmp_path / "xla.json"
    result = main(["--preset", "tiny", "--rounds", "1", "--only", "default", "no_xnnpack",
                   "--out", str(out)])
    saved = json.load(open(out))
    assert [r["options"] for r in saved["rows"]] == ["default", "no_xnnpack"]
    assert saved["rows"][1]["compiler_options"] == OPTION_SETS["no_xnnpack"]
    assert saved["rows"][0]["ratio"] == 1.0
    assert all(r["median_s"] > 0 and r["loss"] == r["loss"] for r in result["rows"])  # not NaN
    assert saved["seeds"] == 1  # over one seed, as the fused loop runs the update
    plain = main(["--preset", "tiny", "--rounds", "1", "--only", "default", "--seeds", "0",
                  "--out", str(out)])
    assert plain["seeds"] == 0 and plain["rows"][0]["loss"] == plain["rows"][0]["loss"]


def test_unknown_set_and_bad_rounds_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--preset", "tiny", "--only", "fast"])
    assert "unknown option set(s) fast" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--preset", "tiny", "--rounds", "0"])
    assert "--rounds 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--preset", "tiny", "--seeds", "-2"])
    assert "--seeds -2; allowed: >= 0" in capsys.readouterr().err
