"""Applications of sample information: dataset summarization, detection of bad samples, data sources.

Each module imports JAX and the scorers only inside its functions, so the CLI's ``--help`` stays fast.
"""
