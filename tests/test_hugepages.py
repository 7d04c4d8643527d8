import os
import subprocess
import sys

from wmjax.hugepages import tunables_with_hugepages


def test_tunable_is_added_to_existing_ones():
    assert tunables_with_hugepages("") == "glibc.malloc.hugetlb=1"
    assert tunables_with_hugepages("glibc.malloc.arena_max=2") == \
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert tunables_with_hugepages("glibc.malloc.hugetlb=0:a.b=1") == "a.b=1:glibc.malloc.hugetlb=1"


def test_cli_restarts_itself_with_the_tunable_once(tmp_path):
    """`python -m wmjax` re-executes with GLIBC_TUNABLES set (glibc reads it at start-up only),
    keeps its arguments, and does not loop; WMJAX_HUGEPAGES=0 opts out."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "WMJAX_HUGEPAGES")}
    probe = ("import os, sys; from wmjax.hugepages import reexec_with_hugepages; "
             "reexec_with_hugepages(); print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")
    out = subprocess.run([sys.executable, "-c", probe, "x", "--y"], env=env, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    if sys.platform == "linux" and __import__("platform").libc_ver()[0] == "glibc":
        assert out[0] == "glibc.malloc.hugetlb=1 ['x', '--y']"
    off = subprocess.run([sys.executable, "-c", probe], env={**env, "WMJAX_HUGEPAGES": "0"},
                         capture_output=True, text=True, check=True).stdout
    assert off.startswith("None")
