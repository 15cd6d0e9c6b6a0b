"""Commands that compose the pipeline: ``bench doctor``, ``bench reproduce``, ``bench leaderboard`` and
``bench crosscheck``.
"""
