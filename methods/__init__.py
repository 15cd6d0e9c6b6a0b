"""Method implementations (installed as ``bench.methods``)."""
