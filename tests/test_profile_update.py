"""benchmarks/profile_update.py: the update's compiled ops are timed and named by the model code
that made them, with how often each ran per update; bad input is refused."""
import json

import pytest

from benchmarks.profile_update import main, op_names
from wmjax.config import DreamerConfig


def test_ops_are_timed_and_named(tmp_path):
    out = tmp_path / "profile.json"
    result = main(["--preset", "tiny", "--seeds", "1", "--rounds", "2", "--top", "5",
                   "--out", str(out)])
    rows = json.load(open(out))["rows"]
    assert rows and rows == result["rows"]
    assert [r["ms"] for r in rows] == sorted((r["ms"] for r in rows), reverse=True)
    assert all(r["ms"] >= 0 and r["runs"] > 0 for r in rows)
    assert result["wall_s"] > 0 and result["ops_ms"] > 0 and result["page_faults"] >= 0
    # The GRU's ops in the imagination scan's body ran once per imagined step.
    horizon = DreamerConfig.preset("tiny").imag_horizon
    gru = [r for r in rows if r["code"].startswith("jvp(RSSM.imagine)/while/body/")
           and "RSSM._core" in r["code"] and r["code"].count("/while/") == 1]
    assert gru and {r["runs"] for r in gru} == {horizon}
    assert not any(r["code"].startswith("jit(update)") for r in rows)  # the prefix is dropped


def test_op_names_read_hlo_metadata():
    text = ('  %fusion.3 = f32[4]{0} fusion(%p), kind=kLoop, metadata={op_name="jit(update)/jvp(MLP)/add"}\n'
            '  ROOT %dot.1 = f32[2]{0} dot(%a, %b), metadata={op_name="jit(f)/dot_general" stack_frame_id=2}\n'
            '  %p = f32[4]{0} parameter(0)\n')
    assert op_names(text) == {"fusion.3": "jvp(MLP)/add", "dot.1": "dot_general"}


def test_bad_top_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--preset", "tiny", "--top", "0"])
    assert "--top 0; allowed: >= 1" in capsys.readouterr().err
