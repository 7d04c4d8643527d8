"""benchmarks/throughput.py's command line: agent overrides are checked before any timing."""
import pytest

from benchmarks.throughput import main
from wmjax.machine import cpu_fingerprint


def test_unknown_override_is_refused_by_name(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--presets", "tiny", "--set", "imag_start=256"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown agent field 'imag_start'" in err and "imag_starts" in err


def test_timed_chunks_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--presets", "tiny", "--timed-chunks", "0"])
    assert exc.value.code == 2
    assert "--timed-chunks 0" in capsys.readouterr().err


def test_unknown_env_and_host_loop_on_another_env_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--presets", "tiny", "--env", "Breakout"])
    assert "unknown env 'Breakout'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--presets", "tiny", "--env", "Breakout-MinAtar", "--loops", "fused", "host"])
    assert "CartPole only" in capsys.readouterr().err


def test_throughput_on_an_image_env(tmp_path):
    """A tiny row on Breakout-MinAtar: the fixed batch holds uint8 frames, the loop trains, and
    the overhead comes from each timed chunk paired with as many bare updates."""
    import json
    import statistics

    out = tmp_path / "t.json"
    main(["--env", "Breakout-MinAtar", "--presets", "tiny", "--seeds", "1", "--ratios", "8",
          "--min-updates", "1", "--timed-chunks", "2", "--out", str(out)])
    saved = json.load(open(out))
    (row,) = saved["rows"]
    assert saved["machine"]["cpu_features"] == cpu_fingerprint()  # speed depends on the CPU
    assert row["env"] == "Breakout-MinAtar" and row["updates_per_seed"] >= 1
    assert row["env_steps_per_s"] > 0 and row["bare_update_s"] > 0 and row["gflop_per_update"] > 0
    assert len(row["chunk_s_each"]) == len(row["bare_s_each"]) == 2
    assert row["loop_overhead_each"] == pytest.approx(
        [c / b - 1 for c, b in zip(row["chunk_s_each"], row["bare_s_each"])])
    assert row["loop_overhead"] == statistics.median(row["loop_overhead_each"])
    assert row["bare_update_s"] == pytest.approx(
        statistics.median(row["bare_s_each"]) / row["updates_per_seed"])
