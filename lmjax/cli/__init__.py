"""The `lmjax` command: its parser (`parser`), the commands it runs (`commands`), the process
set-up every command shares (`process`: logging, warnings, exit codes) and `lmjax plot`."""

from lmjax.cli.commands import main

__all__ = ["main"]
