"""What only training needs: datasets, the prepared feature cache, the synthetic corpus, the training loop,
metrics and evaluation. Conversion (convert, batch, extract-f0) never imports this package."""
