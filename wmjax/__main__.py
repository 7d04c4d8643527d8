import sys

from wmjax.startup import start_command

start_command()  # huge pages (restarts once) and the compile cache, before any work

from wmjax.cli import main  # noqa: E402

sys.exit(main())
