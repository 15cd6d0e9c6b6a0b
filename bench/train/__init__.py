"""Training one method on one dataset: the shared engine (:mod:`.engine`), its checkpoints, batches and devices.
"""
