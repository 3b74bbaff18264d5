"""Conversion engines: each turns (speech audio, target melody) into sung audio."""
