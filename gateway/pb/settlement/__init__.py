"""Generated from proto/; regenerate with python proto/generate.py."""
