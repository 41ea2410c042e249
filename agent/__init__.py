"""The gamsa agent: config, state, spool, stores, shipper and the command line."""

__version__ = "0.1.0"
