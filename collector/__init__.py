"""Evidence collectors: one module per evidence kind, the `Record` type and a registry."""
