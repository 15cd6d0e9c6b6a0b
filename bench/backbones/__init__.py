"""CLIP backbones: specs and loading (:mod:`.loader`), the open_clip glue, the project's tiny CLIP, pretrained
weights (status and fetch) and parameter counts of methods built on a backbone.
"""
