"""What the commands do, composed from the pipeline: run a suite (:mod:`.suite`, serial or as Ray trials), search
hyperparameters (:mod:`.tune`), ``bench doctor``, ``bench reproduce``, ``bench leaderboard``, ``bench crosscheck`` and
the backbones' weights (:mod:`.weights`: status and fetch).
"""
