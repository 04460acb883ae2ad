"""Placement: where each tensor lives on a board (plan.py) and what the synthesized top declares (footprint.py)."""
