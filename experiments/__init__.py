"""Command-line experiments: ``python -m experiments.<name> --flag=value``."""
