"""Generated from proto/deeplens/v1 by proto/generate.py. Do not edit."""
