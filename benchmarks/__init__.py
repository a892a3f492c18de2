"""Benchmarks that are not user commands; run them from the repository root as modules:

    python -m benchmarks.bench_prepare     the prepare pipeline against raw tiktoken, and its peak memory
"""
