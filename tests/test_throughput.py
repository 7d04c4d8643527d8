"""benchmarks/throughput.py's command line: agent overrides are checked before any timing."""
import pytest

from benchmarks.throughput import main


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
