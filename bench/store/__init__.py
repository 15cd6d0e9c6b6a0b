"""The result store and what reads it: run folders and their records (:mod:`.store`), the record's schema,
locks, provenance, and the results collection every report starts from (:mod:`.collection`). Imports nothing from
planning, training or the CLI.
"""
