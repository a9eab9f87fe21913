"""aotwatch on a Ray cluster: per-node collectors, the head, the push path, attach modes.

Everything under this package imports Ray; nothing outside it does.
"""
