"""The `tusd-py` command's first stop: `tusd-py thumbnail` goes straight to the thumbnailer
(imports nothing of the server, so it starts as fast as `python -m thumbnailer`); every
other command goes to tusd_py/cli.py."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["thumbnail"]:
        from thumbnailer.cli import main as thumbnail_main

        return thumbnail_main(args[1:], prog="tusd-py thumbnail")
    from .cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
