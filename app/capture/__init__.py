"""Frame sources and the capture loop that feeds the frame ring."""
