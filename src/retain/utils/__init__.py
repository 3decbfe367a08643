"""Seeding, state serialisation, checkpoints, progress display, Hugging Face helpers."""
