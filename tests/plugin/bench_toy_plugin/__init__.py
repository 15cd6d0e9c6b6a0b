"""A lab's own package that adds a method and a dataset to bench through entry points (see its dist-info)."""
