"""Turning raw boxes into facts per camera: filters, masks, zones, stationary objects, label checks."""
