"""Alpaca: the wire protocol (sans-I/O, :mod:`tickvault.alpaca.protocol`), and the I/O shells around it."""
