"""``python -m cas.serve [--root URL] [--host 127.0.0.1] [--port 8750] [--token-file F]``."""

from cas.serve.cli import main

raise SystemExit(main())
