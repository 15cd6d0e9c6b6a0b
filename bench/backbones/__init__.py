"""CLIP backbones: specs, loading and weight identities (:mod:`.loader`), the open_clip glue (:mod:`.openclip`)
and the project's tiny CLIP (:mod:`.tiny_clip`). Imports nothing of the harness but its base modules (errors, io).
"""
