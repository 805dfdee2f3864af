"""Resources, one module per external system, each chosen from the environment in definitions.py."""
