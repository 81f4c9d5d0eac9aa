"""Subcommands of the `dcae-ext` CLI (one module each)."""
