"""Helpers with no knowledge of models or datasets: atomic writes, image files, messages."""
