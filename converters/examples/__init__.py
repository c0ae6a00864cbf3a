"""Example models the converters ship: a Lightning image classifier trained on synthetic data."""
