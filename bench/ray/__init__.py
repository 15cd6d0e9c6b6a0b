"""Ray Tune: the trial executor (:mod:`.executor`) and the Optuna + ASHA search (:mod:`.search`). The only
modules that import ``ray`` or ``optuna``.
"""
