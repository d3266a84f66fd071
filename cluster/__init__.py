"""cluster: running decomp on Ray (evaluators, search driver, parallel runtime) and the `decomp` CLI.

The only package that imports `ray`.
"""

__all__: list[str] = []
