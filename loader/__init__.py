"""The loader: turns national coding platform exports into the data versions the gateway serves."""
