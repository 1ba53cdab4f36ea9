"""The operations of issue 6, one module each; every one adds rows (and details) to the results."""
