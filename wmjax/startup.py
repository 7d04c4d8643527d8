"""What every wmjax command does first: `python -m wmjax`, the benchmarks and the experiments.

    from wmjax.startup import start_command
    if __name__ == "__main__":
        start_command()
        main()

It restarts the process once with huge pages for XLA's buffers (wmjax.hugepages; glibc reads
the setting only at start-up, so this must come before any work) and turns on the persistent
compilation cache (wmjax.compile_cache). Code that imports wmjax as a library is not touched.
"""
from __future__ import annotations

from wmjax import compile_cache
from wmjax.hugepages import reexec_with_hugepages


def start_command(cache: bool = True) -> None:
    """Huge pages (may restart this process; does not return then), then the compile cache."""
    reexec_with_hugepages()
    if cache:
        compile_cache.enable()
