"""CLI commands of the method packages: each module here has `configure(parser)` and
`execute(args) -> int`, and `cli.py` wires them in. No science here either."""
