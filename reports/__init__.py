"""Report generators (installed as ``bench.reports``). They read result files only and never import torch."""
