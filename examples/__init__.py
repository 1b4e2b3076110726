"""Example trainables that train for real on scikit-learn's bundled digits data (no download)."""
