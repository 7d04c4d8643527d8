"""Transparent huge pages for XLA's CPU buffers, through glibc's `glibc.malloc.hugetlb=1` tunable.

XLA on a CPU allocates its large temporary buffers anew on every call, and every fresh 4 KiB
page costs a page fault when first touched: about 100,000 faults per size1m DreamerV3 update on
the reference machine. With the tunable set, glibc asks the kernel to back large allocations
with 2 MiB pages; the faults drop to about 1-3,000, and in paired runs the update was up to
20% faster (the gain varied with the machine's load; see the README's throughput section).
glibc reads the tunable only when a process starts, so `reexec_with_hugepages()` restarts the
current command once with it set. The CLI, the benchmarks and the experiments call it first;
`make` exports the tunable itself. WMJAX_HUGEPAGES=0 opts out.
"""
from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"


def tunables_with_hugepages(current: str) -> str:
    """GLIBC_TUNABLES with `glibc.malloc.hugetlb=1` added (other tunables kept)."""
    entries = [e for e in current.split(":") if e and not e.startswith(TUNABLE + "=")]
    return ":".join(entries + [f"{TUNABLE}=1"])


def wanted() -> bool:
    """True when this process runs without the tunable and could use it: Linux with glibc,
    the tunable not already set either way, and WMJAX_HUGEPAGES not 0."""
    return (
        os.environ.get("WMJAX_HUGEPAGES", "1") != "0"
        and sys.platform == "linux"
        and platform.libc_ver()[0] == "glibc"
        and TUNABLE not in os.environ.get("GLIBC_TUNABLES", "")
    )


def reexec_with_hugepages() -> None:
    """Restart this command (same interpreter and arguments) with the tunable set, if wanted.
    Call it first thing in a `__main__`: it replaces the process and does not return."""
    if not wanted():
        return
    os.environ["GLIBC_TUNABLES"] = tunables_with_hugepages(os.environ.get("GLIBC_TUNABLES", ""))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
