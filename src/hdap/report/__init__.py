"""Reports a person would rather look at than read: plots as PNG, embedded in one HTML page."""
