"""Benchmarks of the gateway's stages and of the whole, with their load."""


def best_of(seconds: list[float]) -> str:
    """The best run in seconds, with every run: on a shared machine the best is the
    least disturbed."""
    return f"{min(seconds):.3f} s (runs: {', '.join(f'{s:.3f}' for s in seconds)})"
