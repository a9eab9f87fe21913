"""aotwatch on a Ray cluster: per-node collectors, the head, the push path, attach modes.

Ray is imported only under this package (``paths`` and ``spool``, shared by workers and
collectors, need none of it).
"""
