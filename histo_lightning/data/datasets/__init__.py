"""One module per dataset: its reader (the on-disk layout, checked) and its data module."""
