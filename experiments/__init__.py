"""Thin command-line entry points; every one parses flags and calls one jaxnorm function."""
