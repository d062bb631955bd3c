import os

# Keep every test's storage and caches out of the user's home and working folder.
os.environ.setdefault("PYTHONHASHSEED", "0")
