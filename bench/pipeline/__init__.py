"""From a config to stored records: plan the runs (:mod:`.plan`), execute one (:mod:`.runner`), a whole suite
(:mod:`.suite`), a hyperparameter search (:mod:`.tune`), what a record says of its run (:mod:`.record`), and the
live progress board (:mod:`.progress`).
"""
