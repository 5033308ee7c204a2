"""Measurements turned into numbers the health rules compare: Figure-5 statistics, talkativeness."""
