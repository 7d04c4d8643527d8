import sys

from wmjax.hugepages import reexec_with_hugepages

reexec_with_hugepages()  # before any work: glibc reads the tunable only at start-up

from wmjax.cli import main  # noqa: E402

sys.exit(main())
