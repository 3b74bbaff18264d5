"""What conversion does not need: datasets, the prepared feature cache, the synthetic corpus, the training loop,
metrics, evaluation against sung references, and the real-speech scorecard with its judges (listeners.py).
Conversion (convert, batch, extract-f0) never imports this package; the scorecard calls conversion through
the API, exactly as a user's `alignsts convert` runs."""
