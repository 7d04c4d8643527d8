import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seeds_experiment_runs_two_seeds_in_one_program(tmp_path):
    out = _load("seeds").main(["--env", "Pendulum-v1", "--seeds", "2", "--preset", "tiny",
                               "--steps", "1200", "--envs", "4", "--chunk-steps", "400",
                               "--logdir", str(tmp_path)])
    rows = [json.loads(line) for line in open(os.path.join(out["logdir"], "metrics.jsonl"))]
    assert sorted({r["seed"] for r in rows}) == [0, 1]
    assert max(r["env_step"] for r in rows) == 1200
    # Pendulum episodes are 200 steps: by 1200 steps every seed has finished episodes.
    assert all(v is not None and -2000 < v < 0 for v in out["finals"])
