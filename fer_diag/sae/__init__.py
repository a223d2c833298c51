"""sae-lens SAEs for fer-diag.

:mod:`.loading` loads and matches SAEs to hooks (and finds the shipped defaults),
:mod:`.recipe` holds the training recipe's config, :mod:`.training` runs it.
"""
