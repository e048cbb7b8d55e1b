"""Core of the VDI broker: settings, domain types, database and the `vdi` CLI.

This package imports none of starlette, libvirt or ldap3.
"""
