"""From a config to one stored record: plan the runs (:mod:`.plan`: every method x dataset x seed resolved into its
identity and run id), execute one (:mod:`.runner`), assemble its record (:mod:`.record`), count a method's
parameters (:mod:`.params`), and show progress (:mod:`.progress`). A whole suite or a search composes these:
:mod:`bench.workflows.suite`, :mod:`bench.workflows.tune`.
"""
