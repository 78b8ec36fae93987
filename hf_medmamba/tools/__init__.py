"""The tooling around the models: checkpoint conversion, verification, Hub publishing, model cards, the prediction
command line, medical file I/O (MONAI, pydicom), deployment export and evaluation metrics.

Nothing here is remote code. The remote-code files (the flat modules of ``hf_medmamba/``, which ``save_pretrained``
copies into every saved folder) never import this package; it imports them.
"""
