"""benchmarks/update_ab.py: the base package imports beside the tree's, both updates are timed
and compared, and bad input is refused."""
import json
import os

import pytest

from benchmarks.update_ab import export_base, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_base_folder_is_timed_against_the_tree(tmp_path):
    out = tmp_path / "ab.json"
    result = main(["--base-dir", ROOT, "--preset", "tiny", "--rounds", "2", "--out", str(out)])
    saved = json.load(open(out))
    assert [r["version"] for r in saved["rows"]] == ["base", "tree"]
    assert len(saved["ratios"]) == 2 and saved["ratio"] > 0
    # The same code on both sides: the same arithmetic, over seeds (as the loop runs
    # the update) by default, or plain.
    assert result["metric_gap"] == 0.0 and saved["seeds"] == 1
    plain = main(["--base-dir", ROOT, "--preset", "tiny", "--rounds", "1", "--seeds", "0",
                  "--out", str(out)])
    assert plain["metric_gap"] == 0.0 and json.load(open(out))["seeds"] == 0


def test_base_set_changes_the_base_only(tmp_path):
    """--base-set gives the base its own setting on top of --set: the same code then differs
    in the metrics that setting moves; a malformed setting is refused."""
    out = tmp_path / "ab.json"
    result = main(["--base-dir", ROOT, "--preset", "tiny", "--rounds", "1", "--seeds", "0",
                   "--set", "actent=0.001", "--base-set", "actent=0.5", "--out", str(out)])
    assert result["metric_gap"] > 0 and json.load(open(out))["base_set"] == ["actent=0.5"]
    with pytest.raises(SystemExit):
        main(["--base-dir", ROOT, "--preset", "tiny", "--base-set", "actent"])

def test_loop_chunks_are_timed_against_the_tree(tmp_path):
    """--loop builds both fused training loops and times their chunks: the same code on both
    sides gives the same first chunk, and each row reports its env steps/s."""
    out = tmp_path / "loop.json"
    result = main(["--base-dir", ROOT, "--preset", "tiny", "--loop", "--rounds", "2",
                   "--envs", "2", "--train-ratio", "64", "--out", str(out)])
    saved = json.load(open(out))
    assert saved["loop"] is True and len(saved["ratios"]) == 2
    assert all(r["env_steps_per_s"] > 0 for r in saved["rows"])
    assert result["metric_gap"] == 0.0 and result["metric_gap_name"]


def test_exported_base_imports_only_itself(tmp_path):
    pkg = export_base(None, ROOT, str(tmp_path))
    for root, _, files in os.walk(pkg):
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(root, name)).read()
                assert "from wmjax." not in text and "import wmjax\n" not in text, name


def test_bad_base_and_rounds_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--base-dir", str(tmp_path), "--preset", "tiny"])
    assert "no wmjax package there" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--base-dir", ROOT, "--preset", "tiny", "--rounds", "0"])
    assert "--rounds 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--base-dir", ROOT, "--preset", "tiny", "--seeds", "-1"])
    assert "--seeds -1; allowed: >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--base-dir", ROOT, "--preset", "tiny", "--loop", "--envs", "0"])
    assert "--loop needs --seeds, --envs and --min-updates >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--preset", "tiny"])
    assert "one of the arguments --base --base-dir is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--base", "no-such-revision", "--preset", "tiny"])
    assert "--base no-such-revision" in capsys.readouterr().err
