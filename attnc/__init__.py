"""attnc: an attention compiler."""
