"""Dataset preparation: ChestX-ray14 relabelling (:mod:`.nih`), class folders (:mod:`.folder`),
leak-free splitting (:mod:`.splits`) and near-duplicate detection (:mod:`.phash`).

Nothing is imported here so that ``import cxrtool.prep.splits`` stays light.
"""
