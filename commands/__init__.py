"""Command implementations behind ``hierfedlora.cli``: one module per subcommand.

Each module has ``register(commands)``, which adds its subparser and handler. Heavy
imports (torch, solvers) happen inside the handlers, so ``--help`` is fast.
"""
