"""Programs off the run path: the tiny CLIP's pretraining and sight probe, and the official code's reference step
(used by benchmarks/ and the exactness tests). Nothing under bench/, methods/, datasets/ or reports/ imports them."""
