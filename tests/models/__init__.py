"""Model zoo tests: shapes, published parameter counts, zero-init identities, conditioning, training."""
