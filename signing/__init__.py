"""Sealing and verification of gamsa evidence, usable alone (stdlib + cryptography).

A regulator verifies bundles with this package and nothing else: canonical JSON
(RFC 8785), the RFC 9162 Merkle tree, Ed25519 keys, DSSE envelopes carrying in-toto
statements, the bundle format and the verifier.
"""
