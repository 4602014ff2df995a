"""Bridges to other APIs: Beam RunInference model handler, weights into native models."""
