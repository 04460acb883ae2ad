"""Example task data written by the project (see answer_format.py); shipped as package data."""
