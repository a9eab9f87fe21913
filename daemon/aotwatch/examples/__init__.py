"""Small training scripts that exercise what aotwatch captures."""
